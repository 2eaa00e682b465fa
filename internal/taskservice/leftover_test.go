package taskservice

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
)

// TestSharedPidNSLeftoversKilledBeforeOutputDrain: when the init of a
// container without a pid namespace of its own exits, the processes it left
// behind (which hold its output open) are killed before the exit waits for
// the output to drain, as containerd's shim does. The stub's kill --all
// writes a line to the leftover's stdout just before killing it: that line
// reaches the client only while the shim still reads the output, so it is
// lost if the drain gave up (after its 2 s stall) before the kill.
func TestSharedPidNSLeftoversKilledBeforeOutputDrain(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	fifoPath := filepath.Join(t.TempDir(), "stdout")
	if err := syscall.Mkfifo(fifoPath, 0o600); err != nil {
		t.Fatal(err)
	}
	// Read-write, so that the shim's open never blocks; reads go through a
	// separate read-only descriptor that sees EOF once the shim closes.
	keep, err := os.OpenFile(fifoPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(fifoPath, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	// No pid namespace in the spec: the container shares its parent's.
	files := map[string]string{configKey: `{"linux":{}}`, "exit-code": "0", "stub-leftover": ""}
	if _, err := h.create(ctx, "shared", files, fifoPath); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: "shared"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: "shared"}); err != nil {
		t.Fatal(err)
	}
	// Wait returned: TaskExit was published and the output delivered.
	keep.Close()
	out, err := io.ReadAll(reader)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "hello shared") {
		t.Fatalf("stdout %q lacks the init's line", out)
	}
	if !strings.Contains(string(out), "leftover killed") {
		t.Fatalf("stdout %q lacks the line written when the leftover was killed: it was killed after the output drain gave up", out)
	}
	if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "shared"}); err != nil {
		t.Fatal(err)
	}
}
