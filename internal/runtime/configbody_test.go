package runtime

import (
	"errors"
	"strings"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// bodyAny is a runtimeoptions.v1.Options carrying body as its config_body,
// as containerd's CRI plugin (1.7 and later) and dockerd send a runtime's
// options table.
func bodyAny(t testing.TB, typeURL, path, body string) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(&runtimeoptions.Options{TypeUrl: typeURL, ConfigPath: path, ConfigBody: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: RuntimeOptionsTypeURL, Value: b}
}

// TestRegressionConfigBodyIgnored: a config_body used to be dropped without
// a word, so `BinaryName = "crun"` in a CRI runtime's options table ran runc
// and `SystemdCgroup = true` gave runc no --systemd-cgroup. The bodies here
// are what containerd's TOML encoders write for such tables.
func TestRegressionConfigBodyIgnored(t *testing.T) {
	full := Options{BinaryName: "/usr/local/bin/crun", Root: "/run/crun", SystemdCgroup: true, NoPivotRoot: true,
		NoNewKeyring: true, ShimCgroup: "/tether", IoUID: 1000, IoGID: 1001,
		CriuImagePath: "/var/lib/criu/img", CriuWorkPath: "/var/lib/criu/work"}
	tests := []struct {
		name, typeURL, body string
		want                Options
	}{
		{name: "CamelCase, as operators write runc's", body: `BinaryName = '/usr/local/bin/crun'
CriuImagePath = '/var/lib/criu/img'
CriuWorkPath = '/var/lib/criu/work'
IoGid = 1001
IoUid = 1000
NoNewKeyring = true
NoPivotRoot = true
Root = '/run/crun'
ShimCgroup = '/tether'
SystemdCgroup = true
`, want: full},
		{name: "snake_case", body: `binary_name = "/usr/local/bin/crun"
root = "/run/crun"
systemd_cgroup = true
no_pivot_root = true
no_new_keyring = true
shim_cgroup = "/tether"
io_uid = 1000
io_gid = 1001
criu_image_path = "/var/lib/criu/img"
criu_work_path = "/var/lib/criu/work"
`, want: full},
		{name: "SystemdCgroup alone", body: "SystemdCgroup = true\n", want: Options{SystemdCgroup: true}},
		{name: "TypeUrl rides along", typeURL: ConfigFileTypeURL,
			body: "BinaryName = 'crun'\nTypeUrl = 'io.containerd.tether.v2.Config'\n", want: Options{BinaryName: "crun"}},
		{name: "empty ConfigPath rides along", body: "ConfigPath = ''\nBinaryName = 'crun'\n", want: Options{BinaryName: "crun"}},
		{name: "comments only", body: "# nothing\n", want: Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOptions(bodyAny(t, tt.typeURL, "", tt.body))
			if err != nil {
				t.Fatalf("ParseOptions: %v", err)
			}
			if !equalOptions(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestConfigBodyRefusals: every key or value Tether does not understand is
// InvalidArgument, and the message names the key.
func TestConfigBodyRefusals(t *testing.T) {
	tests := []struct {
		name, path, body string
		mention          string // the error must contain this
	}{
		{name: "unknown key", body: "BinaryName = 'crun'\nBinaryNam = 'x'\n", mention: `"BinaryNam"`},
		{name: "other spelling", body: "binaryName = 'crun'\n", mention: `"binaryName"`},
		{name: "wrong type", body: "SystemdCgroup = 'true'\n", mention: `"SystemdCgroup"`},
		{name: "integer for a string", body: "BinaryName = 3\n", mention: `"BinaryName"`},
		{name: "negative id", body: "IoUid = -1\n", mention: `"IoUid"`},
		{name: "id too large", body: "IoGid = 4294967296\n", mention: `"IoGid"`},
		{name: "float id", body: "IoGid = 1.5\n", mention: `"IoGid"`},
		{name: "table", body: "[options]\nBinaryName = 'crun'\n", mention: `"options"`},
		{name: "array", body: "BinaryName = ['crun']\n", mention: "array"},
		{name: "both spellings", body: "SystemdCgroup = true\nsystemd_cgroup = false\n", mention: "set twice"},
		{name: "not TOML", body: "BinaryName = crun\n", mention: "TOML line 1"},
		{name: "duplicate key", body: "Root = '/a'\nRoot = '/b'\n", mention: "TOML"},
		{name: "relative root", body: "Root = 'run/crun'\n", mention: "run/crun"},
		{name: "unsafe binary", body: "BinaryName = '../crun'\n", mention: "../crun"},
		{name: "foreign TypeUrl in body", body: "TypeUrl = 'example.com/Other'\n", mention: "example.com/Other"},
		{name: "ConfigPath in body", body: "ConfigPath = '/etc/tether.toml'\n", mention: `"ConfigPath"`},
		{name: "path and body", path: "/etc/tether.toml", body: "BinaryName = 'crun'\n", mention: "config_body"},
		{name: "too large", body: "# " + strings.Repeat("x", maxConfigFile) + "\n", mention: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseOptions(bodyAny(t, "", tt.path, tt.body))
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseOptions = %v, want InvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

// FuzzParseConfigBody: any body decodes to options that pass Validate, or
// to an InvalidArgument error; it never panics.
func FuzzParseConfigBody(f *testing.F) {
	for _, s := range []string{
		"BinaryName = 'crun'\nSystemdCgroup = true\n",
		"binary_name = \"runc\"\nio_uid = 1000\n",
		"TypeUrl = 'io.containerd.tether.v2.Config'\nConfigPath = ''\n",
		"[a]\nb = 1\n", "x = [1, 2]", "Root = '/run/../x'", "IoUid = 0x10", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		o, err := ParseConfigBody(body)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseConfigBody(%q) = %v, not InvalidArgument", body, err)
			}
			return
		}
		if verr := o.Validate(); verr != nil {
			t.Fatalf("ParseConfigBody(%q) accepted options that Validate refuses: %v", body, verr)
		}
	})
}
