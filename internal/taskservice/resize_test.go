package taskservice

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"google.golang.org/grpc/codes"
)

// TestResizePtyWithoutTerminalIsIgnored: ResizePty on a process that has no
// terminal (no stdio at all, or pipes) succeeds and does nothing, as with
// containerd's shim; an unknown process is still NotFound.
func TestResizePtyWithoutTerminalIsIgnored(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	fifoPath := filepath.Join(t.TempDir(), "stdout")
	if err := syscall.Mkfifo(fifoPath, 0o600); err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(fifoPath, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	for id, stdout := range map[string]string{"nostdio": "", "pipes": fifoPath} {
		if _, err := h.create(ctx, id, map[string]string{}, stdout); err != nil {
			t.Fatal(err)
		}
		if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.svc.ResizePty(ctx, &taskv2.ResizePtyRequest{ID: id, Width: 80, Height: 24}); err != nil {
			t.Errorf("resize %s (no terminal): %v, want it ignored", id, err)
		}
	}
	_, err = h.svc.ResizePty(ctx, &taskv2.ResizePtyRequest{ID: "nostdio", ExecID: "nope", Width: 80, Height: 24})
	if got := codeOfErr(err); got != codes.NotFound {
		t.Fatalf("resize of an unknown exec: %v (%v), want NotFound", got, err)
	}
}
