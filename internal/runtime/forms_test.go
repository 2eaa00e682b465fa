package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// TestParseLegacyOptions decodes the containerd 1.x client's
// containerd.linux.runc.CreateOptions and RuncOptions, built field by field
// as that client's generated code encodes them.
func TestParseLegacyOptions(t *testing.T) {
	var create []byte
	create = appendVarint(create, 1, 1)                             // no_pivot_root
	create = appendVarint(create, 2, 1)                             // open_tcp (ignored)
	create = appendString(create, 6, "network")                     // empty_namespaces (ignored)
	create = appendVarint(create, 8, 1)                             // no_new_keyring
	create = appendString(create, 9, "/tether")                     // shim_cgroup
	create = appendVarint(create, 10, 1000)                         // io_uid
	create = appendVarint(create, 11, 1001)                         // io_gid
	create = appendString(create, 12, "/criu/work")                 // criu_work_path
	create = appendString(create, 13, "/criu/image")                // criu_image_path
	create = protowire.AppendTag(create, 99, protowire.Fixed32Type) // unknown field
	create = protowire.AppendFixed32(create, 7)
	got, err := ParseOptions(&anypb.Any{TypeUrl: LegacyCreateOptionsTypeURL, Value: create})
	if err != nil {
		t.Fatal(err)
	}
	want := Options{NoPivotRoot: true, NoNewKeyring: true, ShimCgroup: "/tether", IoUID: 1000, IoGID: 1001,
		CriuWorkPath: "/criu/work", CriuImagePath: "/criu/image"}
	if !equalOptions(got, want) {
		t.Fatalf("CreateOptions = %+v, want %+v", got, want)
	}

	var runcOpts []byte
	runcOpts = appendString(runcOpts, 1, "crun")
	runcOpts = appendString(runcOpts, 2, "/run/crun")
	runcOpts = appendString(runcOpts, 3, "/usr/sbin/criu")
	runcOpts = appendVarint(runcOpts, 4, 1)
	got, err = ParseOptions(&anypb.Any{TypeUrl: LegacyRuncOptionsTypeURL, Value: runcOpts})
	if err != nil {
		t.Fatal(err)
	}
	want = Options{BinaryName: "crun", Root: "/run/crun", SystemdCgroup: true}
	if !equalOptions(got, want) {
		t.Fatalf("RuncOptions = %+v, want %+v", got, want)
	}

	for name, bad := range map[string]*anypb.Any{
		"truncated":     {TypeUrl: LegacyCreateOptionsTypeURL, Value: create[:len(create)-3]},
		"bad tag":       {TypeUrl: LegacyRuncOptionsTypeURL, Value: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		"unsafe root":   {TypeUrl: LegacyRuncOptionsTypeURL, Value: appendString(nil, 2, "run/../x")},
		"unsafe binary": {TypeUrl: LegacyRuncOptionsTypeURL, Value: appendString(nil, 1, "../crun")},
	} {
		if _, err := ParseOptions(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

func equalOptions(a, b Options) bool {
	return a.BinaryName == b.BinaryName && a.Root == b.Root && a.SystemdCgroup == b.SystemdCgroup &&
		a.NoPivotRoot == b.NoPivotRoot && a.NoNewKeyring == b.NoNewKeyring && a.IoUID == b.IoUID &&
		a.IoGID == b.IoGID && a.ShimCgroup == b.ShimCgroup && a.CriuImagePath == b.CriuImagePath &&
		a.CriuWorkPath == b.CriuWorkPath
}

func runtimeOptionsAny(t *testing.T, typeURL, path string) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(&runtimeoptions.Options{TypeUrl: typeURL, ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: RuntimeOptionsTypeURL, Value: b}
}

// TestParseRuntimeOptionsConfigFile reads the CRI plugin's generic options
// and the TOML file they name.
func TestParseRuntimeOptionsConfigFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "tether.toml")
	content := `# Tether runtime options
binary_name = "crun"   # the OCI runtime
root = "/run/crun#1"
systemd_cgroup = true
no_pivot_root = false
no_new_keyring = true
shim_cgroup = "/tether"
io_uid = 1000
io_gid = 1000
criu_image_path = "/var/lib/criu/img"
criu_work_path = "/var/lib/criu/work"
`
	if err := os.WriteFile(good, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ParseOptions(runtimeOptionsAny(t, "", good))
	if err != nil {
		t.Fatal(err)
	}
	want := Options{BinaryName: "crun", Root: "/run/crun#1", SystemdCgroup: true, NoNewKeyring: true,
		ShimCgroup: "/tether", IoUID: 1000, IoGID: 1000, CriuImagePath: "/var/lib/criu/img", CriuWorkPath: "/var/lib/criu/work"}
	if !equalOptions(got, want) {
		t.Fatalf("config file options = %+v, want %+v", got, want)
	}
	if _, err := ParseOptions(runtimeOptionsAny(t, ConfigFileTypeURL, good)); err != nil {
		t.Fatalf("with type_url %s: %v", ConfigFileTypeURL, err)
	}
	if got, err := ParseOptions(runtimeOptionsAny(t, "", "")); err != nil || !equalOptions(got, Options{}) {
		t.Fatalf("no config path = %+v, %v; want defaults", got, err)
	}

	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name string
		opts *anypb.Any
		want error
	}{
		{"missing file", runtimeOptionsAny(t, "", filepath.Join(dir, "nope.toml")), errdefs.ErrNotFound},
		{"relative path", runtimeOptionsAny(t, "", "tether.toml"), errdefs.ErrInvalidArgument},
		{"unknown key", runtimeOptionsAny(t, "", write("k.toml", "BinaryNam = \"crun\"\n")), errdefs.ErrInvalidArgument},
		{"body key in a file", runtimeOptionsAny(t, "", write("tu.toml", "TypeUrl = \"\"\n")), errdefs.ErrInvalidArgument},
		{"both spellings", runtimeOptionsAny(t, "", write("bs.toml", "BinaryName = \"crun\"\nbinary_name = \"runc\"\n")), errdefs.ErrInvalidArgument},
		{"table", runtimeOptionsAny(t, "", write("t.toml", "[options]\nbinary_name = \"crun\"\n")), errdefs.ErrInvalidArgument},
		{"unquoted string", runtimeOptionsAny(t, "", write("s.toml", "binary_name = crun\n")), errdefs.ErrInvalidArgument},
		{"bad bool", runtimeOptionsAny(t, "", write("b.toml", "systemd_cgroup = yes\n")), errdefs.ErrInvalidArgument},
		{"negative uid", runtimeOptionsAny(t, "", write("u.toml", "io_uid = -1\n")), errdefs.ErrInvalidArgument},
		{"twice", runtimeOptionsAny(t, "", write("d.toml", "root = \"/a\"\nroot = \"/b\"\n")), errdefs.ErrInvalidArgument},
		{"no equals", runtimeOptionsAny(t, "", write("e.toml", "binary_name\n")), errdefs.ErrInvalidArgument},
		{"unsafe binary", runtimeOptionsAny(t, "", write("x.toml", "binary_name = \"../crun\"\n")), errdefs.ErrInvalidArgument},
		{"foreign type_url", runtimeOptionsAny(t, "example.com/Other", good), errdefs.ErrInvalidArgument},
		{"garbage", &anypb.Any{TypeUrl: RuntimeOptionsTypeURL, Value: []byte{0xff}}, errdefs.ErrInvalidArgument},
		{"unknown type", &anypb.Any{TypeUrl: "io.example.Options"}, errdefs.ErrInvalidArgument},
	}
	for _, tc := range cases {
		if _, err := ParseOptions(tc.opts); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}
