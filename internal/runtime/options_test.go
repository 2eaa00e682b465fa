package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/bundle"
)

func optionsAny(t *testing.T, typeURL string, o *runcoptions.Options) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(o)
	if err != nil {
		t.Fatalf("marshal options: %v", err)
	}
	return &anypb.Any{TypeUrl: typeURL, Value: b}
}

func TestParseOptions(t *testing.T) {
	full := &runcoptions.Options{
		NoPivotRoot:   true,
		NoNewKeyring:  true,
		ShimCgroup:    "/tether/shim",
		IoUid:         1000,
		IoGid:         1001,
		BinaryName:    "/usr/bin/crun",
		Root:          "/run/tether/crun",
		SystemdCgroup: true,
		CriuImagePath: "/var/lib/criu/image",
		CriuWorkPath:  "/var/lib/criu/work",
	}
	fullWant := Options{
		BinaryName:    "/usr/bin/crun",
		Root:          "/run/tether/crun",
		SystemdCgroup: true,
		NoPivotRoot:   true,
		NoNewKeyring:  true,
		IoUID:         1000,
		IoGID:         1001,
		ShimCgroup:    "/tether/shim",
		CriuImagePath: "/var/lib/criu/image",
		CriuWorkPath:  "/var/lib/criu/work",
	}
	tests := []struct {
		name    string
		any     *anypb.Any
		want    Options
		wantErr error // nil: success
	}{
		{name: "nil any", any: nil},
		{name: "empty any", any: &anypb.Any{}},
		{name: "type url only", any: &anypb.Any{TypeUrl: OptionsTypeURL}},
		{name: "every field", any: optionsAny(t, OptionsTypeURL, full), want: fullWant},
		{name: "type.googleapis.com prefix", any: optionsAny(t, "type.googleapis.com/"+OptionsTypeURL, full), want: fullWant},
		{name: "anypb.New", any: func() *anypb.Any {
			a, err := anypb.New(full)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}(), want: fullWant},
		{name: "no pivot only", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{NoPivotRoot: true}), want: Options{NoPivotRoot: true}},
		{name: "no new keyring only", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{NoNewKeyring: true}), want: Options{NoNewKeyring: true}},
		{name: "systemd cgroup only", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{SystemdCgroup: true}), want: Options{SystemdCgroup: true}},
		{name: "io uid gid", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{IoUid: 7, IoGid: 8}), want: Options{IoUID: 7, IoGID: 8}},
		{name: "shim cgroup", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{ShimCgroup: "tether"}), want: Options{ShimCgroup: "tether"}},
		{name: "binary crun", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{BinaryName: "crun"}), want: Options{BinaryName: "crun"}},
		{name: "binary absolute", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{BinaryName: "/usr/bin/crun"}), want: Options{BinaryName: "/usr/bin/crun"}},
		{name: "root absolute", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{Root: "/run/x"}), want: Options{Root: "/run/x"}},
		{name: "garbage bytes", any: &anypb.Any{TypeUrl: OptionsTypeURL, Value: []byte{0xff, 0xff, 0xff, 0xff}}, wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown type url", any: &anypb.Any{TypeUrl: "containerd.runhcs.v1.Options", Value: nil}, wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown prefixed type url", any: optionsAny(t, "type.googleapis.com/io.containerd.other.Options", full), wantErr: errdefs.ErrInvalidArgument},
		{name: "value without type url", any: optionsAny(t, "", full), wantErr: errdefs.ErrInvalidArgument},
		{name: "binary parent dir", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{BinaryName: "../runc"}), wantErr: errdefs.ErrInvalidArgument},
		{name: "binary relative with dotdot", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{BinaryName: "bin/../runc"}), wantErr: errdefs.ErrInvalidArgument},
		{name: "binary relative path", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{BinaryName: "bin/runc"}), wantErr: errdefs.ErrInvalidArgument},
		{name: "binary absolute unclean", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{BinaryName: "/usr/bin/../sbin/runc"}), wantErr: errdefs.ErrInvalidArgument},
		{name: "root relative", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{Root: "run/runc"}), wantErr: errdefs.ErrInvalidArgument},
		{name: "root with dotdot", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{Root: "/run/../etc"}), wantErr: errdefs.ErrInvalidArgument},
		{name: "criu image relative", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{CriuImagePath: "img"}), wantErr: errdefs.ErrInvalidArgument},
		{name: "criu work with dotdot", any: optionsAny(t, OptionsTypeURL, &runcoptions.Options{CriuWorkPath: "/a/../b"}), wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOptions(tt.any)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseOptions() error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseOptions() error = %v", err)
			}
			if got != tt.want {
				t.Fatalf("ParseOptions() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestConfigSaveLoadRoundTrip(t *testing.T) {
	tests := []Config{
		{Binary: "/usr/bin/crun", Root: "/run/tether/crun"},
		{Binary: "runc", Root: "/run/containerd/runc/k8s.io"},
	}
	for _, cfg := range tests {
		t.Run(cfg.Binary, func(t *testing.T) {
			path := bundle.New(t.TempDir()).RuntimeConfig()
			// Log and flags are not part of what Save records.
			saved := cfg
			saved.Log = "/somewhere/log.json"
			saved.Debug = true
			if err := saved.Save(path); err != nil {
				t.Fatalf("Save: %v", err)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatalf("state file: %v", err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("state file mode = %v, want 0600", st.Mode().Perm())
			}
			got, err := LoadConfig(path, "other-namespace")
			if err != nil {
				t.Fatalf("LoadConfig: %v", err)
			}
			if got != cfg {
				t.Fatalf("LoadConfig() = %+v, want %+v", got, cfg)
			}
		})
	}
}

func TestLoadConfigMissingFileDefaults(t *testing.T) {
	got, err := LoadConfig(bundle.New(t.TempDir()).RuntimeConfig(), "k8s.io")
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	want := Config{Binary: "runc", Root: "/run/containerd/runc/k8s.io"}
	if got != want {
		t.Fatalf("LoadConfig() = %+v, want %+v", got, want)
	}
	if DefaultRoot("default") != "/run/containerd/runc/default" {
		t.Errorf("DefaultRoot(default) = %q", DefaultRoot("default"))
	}
}

func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		class   error // nil: any error
	}{
		{"malformed json", `{"binary":`, nil},
		{"wrong type", `{"binary": 7}`, nil},
		{"unsafe binary", `{"binary":"../runc","root":"/run/x"}`, errdefs.ErrInvalidArgument},
		{"relative root", `{"binary":"runc","root":"run/x"}`, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := bundle.New(t.TempDir()).RuntimeConfig()
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path, "default")
			if err == nil {
				t.Fatal("LoadConfig succeeded")
			}
			if tt.class != nil && !errors.Is(err, tt.class) {
				t.Fatalf("LoadConfig error = %v, want %v", err, tt.class)
			}
		})
	}
}

func TestLoadConfigPartialFileKeepsDefaults(t *testing.T) {
	path := bundle.New(t.TempDir()).RuntimeConfig()
	if err := os.WriteFile(path, []byte(`{"binary":"crun"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadConfig(path, "ns1")
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	if want := (Config{Binary: "crun", Root: "/run/containerd/runc/ns1"}); got != want {
		t.Fatalf("LoadConfig() = %+v, want %+v", got, want)
	}
}

func TestSaveIntoMissingBundleFails(t *testing.T) {
	err := Config{Binary: "runc", Root: "/run/x"}.Save(bundle.New(filepath.Join(t.TempDir(), "missing")).RuntimeConfig())
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Save into a missing bundle = %v, want ErrNotExist", err)
	}
}
