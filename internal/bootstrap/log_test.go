package bootstrap

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

// newFifo creates a fifo in a temporary directory.
func newFifo(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log")
	if err := unix.Mkfifo(path, 0o600); err != nil {
		t.Fatalf("mkfifo: %v", err)
	}
	return path
}

// openReader opens the fifo's read end without waiting for a writer.
func openReader(t *testing.T, path string) *os.File {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open fifo for reading: %v", err)
	}
	return os.NewFile(uintptr(fd), path)
}

// readAvailable reads what the fifo holds without blocking.
func readAvailable(t *testing.T, r *os.File) []byte {
	t.Helper()
	rc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	buf := make([]byte, 64<<10)
	if err := rc.Read(func(fd uintptr) bool {
		for {
			n, err := unix.Read(int(fd), buf)
			if n > 0 {
				out = append(out, buf[:n]...)
				continue
			}
			if err != nil && !errors.Is(err, unix.EAGAIN) {
				t.Errorf("read fifo: %v", err)
			}
			return true
		}
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// writeBounded runs w.Write(p) and fails the test unless it returns within
// boundedWait.
func writeBounded(t *testing.T, w io.Writer, p []byte) (int, error) {
	t.Helper()
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := w.Write(p)
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		return r.n, r.err
	case <-time.After(boundedWait):
		t.Fatalf("a %d-byte write to the log did not return within %v", len(p), boundedWait)
		return 0, nil
	}
}

func TestLogWriterNoReader(t *testing.T) {
	testutil.CheckLeaks(t)
	for name, path := range map[string]string{
		"fifo without reader": newFifo(t),
		"missing path":        filepath.Join(t.TempDir(), "missing"),
	} {
		t.Run(name, func(t *testing.T) {
			w := openLog(path)
			if w.f != nil {
				w.Close()
				t.Fatalf("openLog(%s) opened %v, want a discarding writer", name, w.f.Name())
			}
			msg := []byte("level=INFO msg=hello\n")
			n, err := writeBounded(t, w, msg)
			if n != len(msg) || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(msg))
			}
			if err := w.Close(); err != nil {
				t.Fatalf("Close = %v", err)
			}
		})
	}
}

func TestLogWriterWithReader(t *testing.T) {
	testutil.CheckLeaks(t)
	path := newFifo(t)
	r := openReader(t, path)
	defer r.Close()
	w := openLog(path)
	if w.f == nil {
		t.Fatal("openLog did not open a fifo that has a reader")
	}
	lines := []string{"level=INFO msg=one\n", "level=DEBUG msg=two\n"}
	var want []byte
	for _, l := range lines {
		n, err := writeBounded(t, w, []byte(l))
		if n != len(l) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(l))
		}
		want = append(want, l...)
	}
	if got := readAvailable(t, r); !bytes.Equal(got, want) {
		t.Fatalf("reader got %q, want %q", got, want)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
}

// TestLogWriterReaderGoesAway: containerd went away. Writes hit EPIPE; they
// must neither kill the process with SIGPIPE nor report an error.
func TestLogWriterReaderGoesAway(t *testing.T) {
	testutil.CheckLeaks(t)
	path := newFifo(t)
	r := openReader(t, path)
	w := openLog(path)
	if w.f == nil {
		r.Close()
		t.Fatal("openLog did not open a fifo that has a reader")
	}
	defer w.Close()
	first := []byte("before\n")
	if n, err := writeBounded(t, w, first); n != len(first) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if got := readAvailable(t, r); !bytes.Equal(got, first) {
		t.Fatalf("reader got %q, want %q", got, first)
	}
	r.Close()
	for i := range 3 {
		msg := []byte("after the reader left\n")
		n, err := writeBounded(t, w, msg)
		if n != len(msg) || err != nil {
			t.Fatalf("write #%d after the reader left = %d, %v; want %d, nil", i+1, n, err, len(msg))
		}
	}
	// Still alive: the process was not killed by SIGPIPE.
	big := bytes.Repeat([]byte("x"), 128<<10)
	if n, err := writeBounded(t, w, big); n != len(big) || err != nil {
		t.Fatalf("big write after the reader left = %d, %v", n, err)
	}
}

// TestLogWriterFifoFull: containerd stopped reading. A write larger than the
// fifo's capacity must not block; what is dropped is the tail.
func TestLogWriterFifoFull(t *testing.T) {
	testutil.CheckLeaks(t)
	path := newFifo(t)
	r := openReader(t, path)
	defer r.Close()
	w := openLog(path)
	if w.f == nil {
		t.Fatal("openLog did not open a fifo that has a reader")
	}
	defer w.Close()
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte('a' + i%26)
	}
	n, err := writeBounded(t, w, data)
	if n != len(data) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
	}
	// The fifo is full now; another write must not block either.
	more := []byte("one more line\n")
	if n, err := writeBounded(t, w, more); n != len(more) || err != nil {
		t.Fatalf("Write to a full fifo = %d, %v", n, err)
	}
	got := readAvailable(t, r)
	if len(got) == 0 || len(got) >= len(data) {
		t.Fatalf("the fifo held %d bytes, want a non-empty prefix of the %d written", len(got), len(data))
	}
	if !bytes.Equal(got, data[:len(got)]) {
		t.Fatal("the fifo holds something other than a prefix of the write")
	}
	// Drained, the fifo takes writes again.
	again := []byte("after the drain\n")
	if n, err := writeBounded(t, w, again); n != len(again) || err != nil {
		t.Fatalf("Write after the drain = %d, %v", n, err)
	}
	if got := readAvailable(t, r); !bytes.Equal(got, again) {
		t.Fatalf("after the drain the reader got %q, want %q", got, again)
	}
}
