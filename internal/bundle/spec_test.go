package bundle

import (
	"errors"
	"os"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		name, json string
		want       Spec
	}{
		{"empty", `{}`, Spec{}},
		{"own pid namespace", `{"linux":{"cgroupsPath":"/default/c1","namespaces":[{"type":"mount"},{"type":"pid"}]}}`,
			Spec{CgroupsPath: "/default/c1"}},
		{"joined pid namespace", `{"linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}`,
			Spec{SharesPidNamespace: true}},
		{"no pid namespace", `{"linux":{"cgroupsPath":"system.slice:docker:c1","namespaces":[{"type":"network"}]}}`,
			Spec{CgroupsPath: "system.slice:docker:c1", SharesPidNamespace: true}},
	}
	for _, tt := range tests {
		got, err := parseSpec([]byte(tt.json), "spec")
		if err != nil || got != tt.want {
			t.Errorf("%s: parseSpec = %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
	if _, err := parseSpec([]byte(`{"linux":`), "spec"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("truncated JSON: %v, want InvalidArgument", err)
	}
}

func TestSpecRefusals(t *testing.T) {
	if _, err := New(t.TempDir()).Spec(); !errors.Is(err, errdefs.ErrNotFound) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no config.json: %v, want NotFound and ErrNotExist", err)
	}
	fifo := t.TempDir()
	if err := unix.Mkfifo(New(fifo).Config(), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(fifo).Spec(); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("config.json a fifo: %v, want InvalidArgument", err)
	}
	dir := t.TempDir()
	if err := os.Mkdir(New(dir).Config(), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir).Spec(); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("config.json a directory: %v, want InvalidArgument", err)
	}
}

// FuzzParseSpec: any config.json parses or is InvalidArgument; never a panic.
func FuzzParseSpec(f *testing.F) {
	f.Add([]byte(`{"linux":{"cgroupsPath":"a.slice:b:c","namespaces":[{"type":"pid"}]}}`))
	f.Add([]byte(`{"linux":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := parseSpec(data, "spec"); err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("parseSpec(%q) = %v, not InvalidArgument", data, err)
		}
	})
}
