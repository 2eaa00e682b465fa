package stdio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// openFifos connects stdout and stderr to the client's fifos.
func (p *IO) openFifos(out, errOut output) error {
	for _, s := range []struct {
		o            output
		role         role
		fifo         **os.File
		shim, contnr **os.File
	}{{out, roleOut, &p.stdoutFifo, &p.stdoutR, &p.stdoutW}, {errOut, roleErr, &p.stderrFifo, &p.stderrR, &p.stderrW}} {
		if s.o.kind != kindFifo {
			continue
		}
		f, err := openOutputFifo(s.o.path)
		if err != nil {
			return err
		}
		if err := p.pipe(s.role, s.shim, s.contnr, f, func() { p.closeFifoWhenRead(f) }); err != nil {
			f.Close()
			return err
		}
		*s.fifo = f
	}
	return nil
}

// openOutputFifo opens an existing fifo read-write: the open does not wait
// for a reader, and the shim's own read side keeps the fifo usable while the
// client is away.
func openOutputFifo(path string) (*os.File, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("stdio: %w: %w", err, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("stdio: %w", err)
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

// openStdinFifo opens the client's stdin fifo for reading without waiting
// for the client, and without a thread blocked in open(2): the fifo is
// opened non-blocking and read through the netpoller (see stdinFifo).
func openStdinFifo(path string) (*stdinFifo, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("stdio: open stdin %s: %w: %w", path, err, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("stdio: open stdin %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		unix.Close(fd)
		return nil, fmt.Errorf("stdio: stdin %s is not a fifo: %w", path, errdefs.ErrInvalidArgument)
	}
	f := os.NewFile(uintptr(fd), path)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stdio: stdin %s: %w", path, err)
	}
	return &stdinFifo{f: f, rc: rc}, nil
}

// stdinFifo is a fifo that was opened before its writer. A plain read of a
// fifo without a writer returns EOF, even when the writer has not come yet;
// but Linux reports POLLHUP on a fifo's read end only once a writer has come
// and gone. So the copies read it with pollRead, which waits in the
// netpoller until poll(2) shows data or that hang-up: EOF means the client
// closed its stdin.
type stdinFifo struct {
	f  *os.File
	rc syscall.RawConn
	// closed is set by Close, so that a copy whose read it interrupts
	// (RawConn returns the poller's own error) takes it for the end of
	// the input.
	closed atomic.Bool
}

// Close closes the fifo; a read waiting on it returns an error, and closed
// is set.
func (s *stdinFifo) Close() error {
	s.closed.Store(true)
	return s.f.Close()
}

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
		if p.paused.Load() && !p.park(true) {
			return
		}
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
