package bootstrap

import (
	"errors"
	"io"
	"os"
	"syscall"
)

// logWriter writes the server's log to containerd's log fifo without ever
// blocking the shim: a write that would block (containerd is not reading)
// or fails (containerd went away) is dropped. The fifo is not the shim's
// stderr, because Go turns EPIPE on fd 2 into a fatal SIGPIPE.
type logWriter struct {
	f *os.File // nil: discard
}

// openLog opens the fifo write-only and non-blocking. Without a reader
// (the shim was not started by containerd) it logs nowhere.
func openLog(path string) *logWriter {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return &logWriter{}
	}
	return &logWriter{f: os.NewFile(uintptr(fd), path)}
}

// Write implements io.Writer; it reports success for dropped writes so that
// the logger carries on.
func (w *logWriter) Write(p []byte) (int, error) {
	n := len(p)
	if w.f == nil {
		return n, nil
	}
	rc, err := w.f.SyscallConn()
	if err != nil {
		return n, nil
	}
	_ = rc.Write(func(fd uintptr) bool {
		for len(p) > 0 {
			n, err := syscall.Write(int(fd), p)
			if err != nil {
				// EAGAIN: the fifo is full; EPIPE: no reader. Drop the rest.
				return true
			}
			p = p[n:]
		}
		return true
	})
	return n, nil
}

// Close closes the fifo.
func (w *logWriter) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

var _ io.WriteCloser = (*logWriter)(nil)
