package bootstrap

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/runtime"
)

// fakeContainerd builds, with the go command, a program whose build
// information names main package cmd/containerd of the module modulePath,
// as a real containerd binary's does, and returns its path.
func fakeContainerd(t *testing.T, modulePath string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is required: %v", err)
	}
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":                 "module " + modulePath + "\n\ngo 1.21\n",
		"cmd/containerd/main.go": "package main\n\nfunc main() { println(\"containerd\") }\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "containerd")
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/containerd")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", modulePath, err, b)
	}
	return out
}

func TestIsContainerd2(t *testing.T) {
	v2 := fakeContainerd(t, "github.com/containerd/containerd/v2")
	v1 := fakeContainerd(t, "github.com/containerd/containerd")
	text := filepath.Join(t.TempDir(), "containerd")
	if err := os.WriteFile(text, []byte("#!/bin/sh\necho containerd\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want bool
	}{
		{"containerd 2.x", v2, true},
		{"containerd 1.x", v1, false},
		{"script", text, false},
		{"non-Go binary", "/bin/busybox", false},
		{"missing", filepath.Join(t.TempDir(), "missing"), false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isContainerd2(tt.path); got != tt.want {
				t.Fatalf("isContainerd2(%s) = %v, want %v", tt.path, got, tt.want)
			}
		})
	}

	// The dialect of a start without BootstrapParams follows the binary.
	f := Flags{Namespace: "default", ID: "c1"}
	legacy := mustAny(t, &runcoptions.Options{BinaryName: "crun"})
	dialects := []struct {
		name    string
		binary  string
		stdin   []byte
		dialect Dialect
	}{
		{"2.x empty stdin", v2, nil, DialectJSON},
		{"1.x empty stdin", v1, nil, DialectPlain},
		{"2.x options", v2, legacy, DialectJSON},
		{"1.x options", v1, legacy, DialectPlain},
		{"non-Go binary", "/bin/busybox", nil, DialectPlain},
	}
	for _, tt := range dialects {
		t.Run("dialect/"+tt.name, func(t *testing.T) {
			f := f
			f.PublishBinary = tt.binary
			req, err := ParseStartInput(tt.stdin, f)
			if err != nil {
				t.Fatalf("ParseStartInput: %v", err)
			}
			if req.Dialect != tt.dialect {
				t.Fatalf("dialect = %v, want %v", req.Dialect, tt.dialect)
			}
		})
	}
}

// mustAny marshals the runc options into an Any, as containerd 1.x and
// 2.0-2.2 write them to start's stdin.
func mustAny(t *testing.T, o *runcoptions.Options) []byte {
	t.Helper()
	v, err := proto.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(&anypb.Any{TypeUrl: runtime.OptionsTypeURL, Value: v})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseStartInput(t *testing.T) {
	f := Flags{Namespace: "default", ID: "c1"}
	runcOpts := &runcoptions.Options{BinaryName: "crun", Root: "/run/tether/crun", SystemdCgroup: true}
	optsAny, err := anypb.New(runcOpts)
	if err != nil {
		t.Fatal(err)
	}
	otherExt, err := anypb.New(&bootapi.BootstrapResult{Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	socketDir := "/run/tether/s"

	t.Run("empty stdin", func(t *testing.T) {
		req, err := ParseStartInput(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		if req.Dialect != DialectPlain || req.Params != nil || req.Options != nil {
			t.Fatalf("ParseStartInput(empty) = %+v, want plain without params or options", req)
		}
	})

	t.Run("bootstrap params", func(t *testing.T) {
		params := &bootapi.BootstrapParams{
			InstanceID:             "c1",
			Namespace:              "default",
			LogLevel:               bootapi.LogLevel_LOG_LEVEL_DEBUG,
			ContainerdVersion:      "v2.4.0",
			ContainerdTtrpcAddress: "/run/containerd/containerd.sock.ttrpc",
			ContainerdGrpcAddress:  "/run/containerd/containerd.sock",
			ContainerdBinary:       "/usr/bin/containerd",
			Extensions:             []*bootapi.Extension{{Value: otherExt}, {Value: optsAny}},
			SocketDir:              proto.String(socketDir),
		}
		req, err := ParseStartInput(mustMarshal(t, params), f)
		if err != nil {
			t.Fatal(err)
		}
		if req.Dialect != DialectProto {
			t.Fatalf("dialect = %v, want protobuf", req.Dialect)
		}
		if !proto.Equal(req.Params, params) {
			t.Fatalf("Params = %v, want %v", req.Params, params)
		}
		if req.Params.GetSocketDir() != socketDir {
			t.Errorf("socket dir = %q, want %q", req.Params.GetSocketDir(), socketDir)
		}
		if !proto.Equal(req.Options, optsAny) {
			t.Fatalf("Options = %v, want the runc options extension %v", req.Options, optsAny)
		}
		parsed, err := runtime.ParseOptions(req.Options)
		if err != nil || parsed.BinaryName != "crun" || parsed.Root != "/run/tether/crun" || !parsed.SystemdCgroup {
			t.Fatalf("ParseOptions(extension) = %+v, %v", parsed, err)
		}
	})

	t.Run("bootstrap params without options", func(t *testing.T) {
		params := &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "default", Extensions: []*bootapi.Extension{{Value: otherExt}}}
		req, err := ParseStartInput(mustMarshal(t, params), f)
		if err != nil {
			t.Fatal(err)
		}
		if req.Dialect != DialectProto || req.Options != nil || req.Params.GetSocketDir() != "" {
			t.Fatalf("ParseStartInput = %+v, want protobuf without options or socket dir", req)
		}
	})

	mismatched := []struct {
		name   string
		params *bootapi.BootstrapParams
	}{
		{"other id", &bootapi.BootstrapParams{InstanceID: "c2", Namespace: "default"}},
		{"other namespace", &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "k8s.io"}},
	}
	for _, tt := range mismatched {
		t.Run("mismatched "+tt.name, func(t *testing.T) {
			req, err := ParseStartInput(mustMarshal(t, tt.params), f)
			if err != nil {
				t.Fatal(err)
			}
			if req.Dialect == DialectProto || req.Params != nil {
				t.Fatalf("BootstrapParams of another instance taken as this one's: %+v", req)
			}
			if req.Dialect != DialectPlain || req.Options == nil {
				t.Fatalf("ParseStartInput = %+v, want a plain request with a legacy options Any", req)
			}
		})
	}

	t.Run("legacy options any", func(t *testing.T) {
		// The Any's type_url and value are fields 1 and 2, like
		// BootstrapParams' instance_id and namespace: it parses as
		// BootstrapParams too.
		stdin := mustAny(t, runcOpts)
		var asParams bootapi.BootstrapParams
		if err := proto.Unmarshal(stdin, &asParams); err != nil {
			t.Fatalf("precondition: the options Any does not parse as BootstrapParams: %v", err)
		}
		req, err := ParseStartInput(stdin, f)
		if err != nil {
			t.Fatal(err)
		}
		if req.Dialect != DialectPlain || req.Params != nil {
			t.Fatalf("options Any mistaken for BootstrapParams: %+v", req)
		}
		want := &anypb.Any{TypeUrl: runtime.OptionsTypeURL, Value: mustMarshal(t, runcOpts)}
		if !proto.Equal(req.Options, want) {
			t.Fatalf("Options = %v, want %v", req.Options, want)
		}
		parsed, err := runtime.ParseOptions(req.Options)
		if err != nil || parsed.BinaryName != "crun" {
			t.Fatalf("ParseOptions(stdin) = %+v, %v", parsed, err)
		}
	})

	t.Run("empty options any", func(t *testing.T) {
		req, err := ParseStartInput(mustMarshal(t, &anypb.Any{TypeUrl: runtime.OptionsTypeURL}), f)
		if err != nil {
			t.Fatal(err)
		}
		if req.Dialect != DialectPlain || req.Options.GetTypeUrl() != runtime.OptionsTypeURL {
			t.Fatalf("ParseStartInput = %+v", req)
		}
	})

	t.Run("garbage", func(t *testing.T) {
		if req, err := ParseStartInput([]byte{0xff, 0xff, 0xff, 0xff}, f); err == nil {
			t.Fatalf("ParseStartInput(garbage) = %+v, want an error", req)
		}
	})
}

func TestAnswer(t *testing.T) {
	const address = "unix:///run/containerd/s/0123abcd"
	t.Run("plain", func(t *testing.T) {
		got, err := Answer(DialectPlain, address)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != address {
			t.Fatalf("Answer(plain) = %q, want exactly %q (no trailing newline)", got, address)
		}
	})
	t.Run("json", func(t *testing.T) {
		got, err := Answer(DialectJSON, address)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(got, &m); err != nil {
			t.Fatalf("Answer(json) = %q: %v", got, err)
		}
		want := map[string]any{"version": float64(3), "address": address, "protocol": "ttrpc"}
		if len(m) != len(want) {
			t.Fatalf("Answer(json) = %v, want %v", m, want)
		}
		for k, v := range want {
			if m[k] != v {
				t.Fatalf("Answer(json)[%s] = %v, want %v", k, m[k], v)
			}
		}
	})
	t.Run("protobuf", func(t *testing.T) {
		got, err := Answer(DialectProto, address)
		if err != nil {
			t.Fatal(err)
		}
		var res bootapi.BootstrapResult
		if err := proto.Unmarshal(got, &res); err != nil {
			t.Fatalf("Answer(protobuf) does not decode: %v", err)
		}
		if res.GetVersion() != 3 || res.GetAddress() != address || res.GetProtocol() != "ttrpc" {
			t.Fatalf("Answer(protobuf) = %v", &res)
		}
	})
	t.Run("unknown dialect", func(t *testing.T) {
		if got, err := Answer(Dialect(9), address); err == nil {
			t.Fatalf("Answer(dialect 9) = %q, want an error", got)
		}
	})
}

func TestDialectString(t *testing.T) {
	tests := map[Dialect]string{
		DialectPlain: "plain", DialectJSON: "json", DialectProto: "protobuf", Dialect(5): "dialect(5)",
	}
	for d, want := range tests {
		if d.String() != want {
			t.Errorf("Dialect(%d).String() = %q, want %q", int(d), d.String(), want)
		}
	}
}
