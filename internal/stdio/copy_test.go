package stdio

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/testutil"
)

// TestIdleStreamsHoldNoBuffers: once a burst of output and input went
// through, the copies of an idle process hold no copy buffer: after two
// collections the heap of 40 processes with stdin, stdout and stderr grows
// by far less than one 32 KiB buffer per process. (Each used to hold four:
// one per stream, and a second one for stdin that io.CopyBuffer allocated
// behind the first through os.File's ReadFrom.)
func TestIdleStreamsHoldNoBuffers(t *testing.T) {
	testutil.CheckLeaks(t)
	const n = 40
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	dir := t.TempDir()
	before := heap()
	ios := make([]*IO, n)
	writers := make([]*os.File, n)
	for i := range ios {
		in := mkfifo(t, dir, fmt.Sprintf("in%d", i))
		p := openIO(t, Config{
			Stdin:  in,
			Stdout: mkfifo(t, dir, fmt.Sprintf("out%d", i)),
			Stderr: mkfifo(t, dir, fmt.Sprintf("err%d", i)),
		}, Options{})
		ios[i] = p
		w, err := os.OpenFile(in, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		writers[i] = w
		t.Cleanup(func() { w.Close() })
	}
	for i, p := range ios {
		if _, err := p.stdoutW.Write([]byte("out\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := p.stderrW.Write([]byte("err\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := writers[i].Write([]byte("in\n")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 3)
		_ = p.stdinR.SetReadDeadline(time.Now().Add(bound))
		if _, err := io.ReadFull(p.stdinR, got); err != nil || string(got) != "in\n" {
			t.Fatalf("stdin of process %d: %q, %v", i, got, err)
		}
	}
	deadline := time.Now().Add(bound)
	for i, p := range ios {
		for p.progress.Load() < 8 {
			if time.Now().After(deadline) {
				t.Fatalf("process %d: output copied %d bytes, want 8", i, p.progress.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}
	grown := int64(heap()) - int64(before)
	perProcess := grown / n
	t.Logf("heap grew %d bytes for %d idle processes: %d per process", grown, n, perProcess)
	if perProcess >= copyBufSize/2 {
		t.Fatalf("an idle process holds %d bytes of heap, want well below one %d-byte copy buffer", perProcess, copyBufSize)
	}
}
