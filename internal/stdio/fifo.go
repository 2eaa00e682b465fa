package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	"golang.org/x/sys/unix"
)

// openFifos connects stdout and stderr to the client's fifos.
func (p *IO) openFifos(out, errOut output) error {
	for _, s := range []struct {
		o            output
		shim, contnr **os.File
	}{{out, &p.stdoutR, &p.stdoutW}, {errOut, &p.stderrR, &p.stderrW}} {
		if s.o.kind != kindFifo {
			continue
		}
		f, err := openOutputFifo(s.o.path)
		if err != nil {
			return err
		}
		p.outFiles = append(p.outFiles, f)
		if err := p.pipe(s.shim, s.contnr, f, func() { p.closeFifoWhenRead(f) }); err != nil {
			f.Close()
			return err
		}
	}
	return nil
}

// openOutputFifo opens an existing fifo read-write: the open does not wait
// for a reader, and the shim's own read side keeps the fifo usable while the
// client is away.
func openOutputFifo(path string) (*os.File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("stdio: %w", errors.Join(err, errdefs.ErrNotFound))
	}
	if st.Mode()&os.ModeNamedPipe == 0 {
		return nil, fmt.Errorf("stdio: %s is not a fifo: %w", path, errdefs.ErrInvalidArgument)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("stdio: open %s: %w", path, err)
	}
	return f, nil
}

// openStdinFifo opens the client's stdin fifo for reading. The open itself
// completes in the background once the client opens its end; reads wait
// for it, and Close cancels it.
func openStdinFifo(path string) (io.ReadCloser, error) {
	in, err := fifo.OpenFifo(context.Background(), path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("stdio: open stdin %s: %w", path, err)
	}
	return in, nil
}

// isFifoClosed reports whether err is a read from a stdin fifo that
// CloseStdin closed.
func isFifoClosed(err error) bool { return errors.Is(err, fifo.ErrReadClosed) }

// closeFifoWhenRead closes an output fifo once the client has read what the
// shim wrote into it. containerd's client closes its end of the fifos as
// soon as it has seen the exit (cio.Cancel, despite its comment), and drops
// whatever it had not read yet; so the exit must not be published while
// bytes still sit in the fifo. The wait polls FIONREAD (TIOCINQ) with a backoff and
// counts what the client reads as progress, so that Drain waits for a
// reader that is working and gives up (stopOutputs) on one that is gone.
func (p *IO) closeFifoWhenRead(f *os.File) {
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	delay := time.Millisecond
	prev := -1
	for !p.stopping.Load() {
		var n int
		var ierr error
		if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil || ierr != nil || n == 0 {
			return
		}
		if prev >= 0 && n < prev {
			p.progress.Add(int64(prev - n))
			delay = time.Millisecond
		}
		prev = n
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}
