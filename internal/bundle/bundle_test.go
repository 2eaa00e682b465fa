package bundle

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

// TestLayout pins the file names containerd and the runtime expect: a
// renamed file would break `delete` of a container an older shim created,
// and containerd 1.x's reconnect (address).
func TestLayout(t *testing.T) {
	b := New("/b/c1")
	for got, want := range map[string]string{
		b.Dir():           "/b/c1",
		b.Config():        "/b/c1/config.json",
		b.Rootfs():        "/b/c1/rootfs",
		b.InitPid():       "/b/c1/init.pid",
		b.ExecPid("e1"):   "/b/c1/e1.pid",
		b.RuntimeLog():    "/b/c1/log.json",
		b.RuntimeConfig(): "/b/c1/tether-runtime.json",
		b.Log():           "/b/c1/log",
		b.CrashLog():      "/b/c1/tether-crash.log",
		b.CPUProfile():    "/b/c1/tether-cpu.pprof",
		b.HeapProfile():   "/b/c1/tether-heap.pprof",
		b.Goroutines():    "/b/c1/tether-goroutines.txt",
		b.Metrics():       "/b/c1/tether-metrics.txt",
	} {
		if got != want {
			t.Errorf("path %q, want %q", got, want)
		}
	}
}

func TestWriteAddress(t *testing.T) {
	dir := t.TempDir()
	b := New(dir)
	const first = "unix:///run/containerd/s/aaaa"
	const second = "unix:///run/containerd/s/bbbb"
	for _, addr := range []string{first, second} {
		if err := b.WriteAddress(addr); err != nil {
			t.Fatalf("WriteAddress(%q): %v", addr, err)
		}
		got, err := b.ReadAddress()
		if err != nil || got != addr {
			t.Fatalf("ReadAddress = %q, %v; want exactly %q", got, err, addr)
		}
	}
	st, err := os.Stat(filepath.Join(dir, addressFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("address file mode = %v, want 0600", st.Mode().Perm())
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Errorf("bundle holds %v, want only the address file", ents)
	}
	if err := New(filepath.Join(dir, "missing")).WriteAddress(first); err == nil {
		t.Error("WriteAddress into a missing bundle succeeded")
	}
	if _, err := New(t.TempDir()).ReadAddress(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadAddress without a file = %v, want ErrNotExist", err)
	}
}

func TestDeletedMarker(t *testing.T) {
	b := New(t.TempDir())
	if b.WasDeleted() {
		t.Fatal("WasDeleted on a fresh bundle")
	}
	if err := b.MarkDeleted(); err != nil {
		t.Fatal(err)
	}
	if !b.WasDeleted() {
		t.Fatal("WasDeleted after MarkDeleted = false")
	}
	for range 2 {
		if err := b.ClearDeleted(); err != nil {
			t.Fatalf("ClearDeleted: %v", err)
		}
	}
	if b.WasDeleted() {
		t.Fatal("WasDeleted after ClearDeleted")
	}
}

func TestRemoveRuntimeConfig(t *testing.T) {
	b := New(t.TempDir())
	if err := os.WriteFile(b.RuntimeConfig(), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := b.RemoveRuntimeConfig(); err != nil {
			t.Fatalf("RemoveRuntimeConfig: %v", err)
		}
	}
	if _, err := os.Stat(b.RuntimeConfig()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("runtime config still there: %v", err)
	}
}

func TestAnnotations(t *testing.T) {
	b := New(t.TempDir())
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(b.Config(), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"annotations":{"a":"1","b":"2"}}`)
	got, err := b.Annotations()
	if err != nil || len(got) != 2 || got["a"] != "1" || got["b"] != "2" {
		t.Fatalf("Annotations = %v, %v", got, err)
	}
	write(`{"annotations":{"a":7}}`)
	if _, err := b.Annotations(); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("non-string annotation: %v, want InvalidArgument", err)
	}
	// The spec's own fields ignore annotations that Annotations refuses.
	if _, err := b.Spec(); err != nil {
		t.Fatalf("Spec with a non-string annotation: %v", err)
	}
}
