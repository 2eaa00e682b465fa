package stdio

import (
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/testutil"
)

// busyCounter is an Options.Busy that counts the work begun and the work
// under way, and notices an end called twice.
type busyCounter struct {
	begun, active, doubleEnds atomic.Int32
}

func (b *busyCounter) busy() (end func()) {
	b.begun.Add(1)
	b.active.Add(1)
	var once atomic.Bool
	return func() {
		if once.Swap(true) {
			b.doubleEnds.Add(1)
			return
		}
		b.active.Add(-1)
	}
}

// waitActive waits (bounded) until the work under way is want.
func (b *busyCounter) waitActive(t *testing.T, what string, want int32) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for b.active.Load() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: work under way %d, want %d", what, b.active.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCopiesAreBusy: a copy counts as work under way (Options.Busy, the
// trimmer's Begin) from the read of a chunk until it has written it, also
// while the write waits for a slow client, and as none once it has.
func TestCopiesAreBusy(t *testing.T) {
	testutil.CheckLeaks(t)
	var b busyCounter
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "in"), mkfifo(t, dir, "out")
	p := openIO(t, Config{Stdin: in, Stdout: out}, Options{Busy: b.busy})

	// stdout: four times what the fifo holds, with no client reading yet:
	// the copy waits in its write, holding a chunk.
	data := make([]byte, 256<<10)
	var wg sync.WaitGroup
	wg.Add(1)
	var werr error
	go func() {
		defer wg.Done()
		_, werr = p.stdoutW.Write(data)
	}()
	b.waitActive(t, "stdout copy waiting for its client", 1)
	client, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_ = client.SetReadDeadline(time.Now().Add(bound))
	if _, err := io.ReadFull(client, make([]byte, len(data))); err != nil {
		t.Fatalf("client read of stdout: %v", err)
	}
	wg.Wait()
	if werr != nil {
		t.Fatalf("process write to stdout: %v", werr)
	}
	b.waitActive(t, "stdout copied", 0)
	if got := b.begun.Load(); got < 2 {
		t.Fatalf("work begun for %d bytes of stdout: %d, want a begin per chunk read", len(data), got)
	}

	// stdin.
	before := b.begun.Load()
	w, err := os.OpenFile(in, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("in\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	_ = p.stdinR.SetReadDeadline(time.Now().Add(bound))
	if _, err := io.ReadFull(p.stdinR, got); err != nil || string(got) != "in\n" {
		t.Fatalf("stdin: %q, %v", got, err)
	}
	b.waitActive(t, "stdin copied", 0)
	if b.begun.Load() == before {
		t.Fatal("the stdin copy began no work")
	}
	if n := b.doubleEnds.Load(); n != 0 {
		t.Fatalf("%d ends called twice", n)
	}
}
