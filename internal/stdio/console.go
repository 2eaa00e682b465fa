package stdio

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// receiveTimeout bounds the wait for the runtime's pty master once its
// create or exec has returned (it sent the master before returning).
const receiveTimeout = 10 * time.Second

// console is the terminal of a process: the socket the runtime sends the
// pty master to (--console-socket), then the master itself.
type console struct {
	dir string
	ln  *net.UnixListener
	// out is the client's stdout fifo, or nil.
	out *os.File

	// mu guards master and closed: receive sets master on the goroutine of
	// the runtime's create or exec, while Resize, the stops and Close come
	// from other requests and from the exit watcher.
	mu sync.Mutex
	// master is set by receive, before any copy starts; nil until then.
	master *os.File
	// closed is set by Close: a master received later is closed at once.
	closed bool
}

// newConsole listens on a fresh socket in a private directory under dir
// (default os.TempDir()).
func newConsole(dir string) (*console, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	d, err := os.MkdirTemp(dir, "tether-pty-")
	if err != nil {
		return nil, fmt.Errorf("stdio: console socket dir: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(d, "s"), Net: "unix"})
	if err != nil {
		os.RemoveAll(d)
		return nil, fmt.Errorf("stdio: console socket: %w", err)
	}
	return &console{dir: d, ln: ln}, nil
}

// Path is the socket's path, for --console-socket.
func (c *console) Path() string { return filepath.Join(c.dir, "s") }

// receive accepts the runtime's connection and takes the pty master from
// it, non-blocking so that reads and writes wait in Go's netpoller, and
// returns it. After Close it refuses the master and closes it.
func (c *console) receive() (*os.File, error) {
	if err := c.ln.SetDeadline(time.Now().Add(receiveTimeout)); err != nil {
		return nil, err
	}
	conn, err := c.ln.AcceptUnix()
	if err != nil {
		return nil, fmt.Errorf("stdio: no pty from the runtime: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(receiveTimeout))
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("stdio: read pty from the runtime: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("stdio: pty message from the runtime: %v: %w", err, errdefs.ErrUnknown)
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("stdio: the runtime sent %d control messages, not a pty: %w", len(msgs), errdefs.ErrUnknown)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return nil, fmt.Errorf("stdio: pty fd from the runtime: %v: %w", err, errdefs.ErrUnknown)
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("stdio: the runtime sent %d descriptors, not one pty: %w", len(fds), errdefs.ErrUnknown)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("stdio: pty: %w", err)
	}
	master := os.NewFile(uintptr(fds[0]), "pty-master")
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		master.Close()
		return nil, fmt.Errorf("stdio: pty came after the process's stdio was closed: %w", errdefs.ErrFailedPrecondition)
	}
	c.master = master
	c.mu.Unlock()
	c.ln.Close()
	os.RemoveAll(c.dir)
	return master, nil
}

// pty returns the master: nil before receive took it, and after Close.
func (c *console) pty() *os.File {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	return c.master
}

func (c *console) stopReads() {
	if m := c.pty(); m != nil {
		_ = m.SetReadDeadline(time.Now())
	}
}

// stopOutputWrites makes writes to the client's stdout fifo return.
func (c *console) stopOutputWrites() {
	if c.out != nil {
		_ = c.out.SetWriteDeadline(time.Now())
	}
}

func (c *console) stopWrites() {
	if m := c.pty(); m != nil {
		_ = m.SetWriteDeadline(time.Now())
	}
}

// Close closes the master, the socket and its directory.
func (c *console) Close() error {
	c.mu.Lock()
	c.closed = true
	m := c.master
	c.mu.Unlock()
	if m != nil {
		m.Close()
	}
	if c.out != nil {
		c.out.Close()
	}
	c.ln.Close()
	return os.RemoveAll(c.dir)
}

// StartOutput starts delivering the process's output to the client. Call
// it once the runtime's create, exec or restore returned, and only if it
// succeeded: until then the pipes hold only what the runtime itself wrote
// there (runc writes its own error to the process's stderr), which must not
// reach the client as the process's output; on failure Close drops it.
// containerd's shim starts its copies at the same point.
//
// With pipes it starts their copies. With a terminal it takes the pty
// master the runtime sent and starts copying it to the client's stdout
// fifo, and the client's stdin to it. Without stdio it does nothing. After
// stopOutputs or Close it starts nothing.
func (p *IO) StartOutput() error {
	p.mu.Lock()
	pending := p.pendingOut
	p.pendingOut = nil
	for _, c := range pending {
		p.setStageLocked(c.role, stageReading)
	}
	p.mu.Unlock()
	for _, c := range pending {
		go p.copyOut(c.role, c.dst, c.src, c.closeDst)
	}
	if p.console == nil {
		return nil
	}
	master, err := p.console.receive()
	if err != nil {
		p.giveUpConsoleCopy()
		return err
	}
	p.startConsoleCopies(master)
	return nil
}

// startConsoleCopies starts the pty copy, unless stopOutputs gave its
// place up, and the stdin copy into master.
func (p *IO) startConsoleCopies(master *os.File) {
	p.mu.Lock()
	start := p.stage[roleOut] == stagePending
	in := p.stdinFifo
	if start {
		p.setStageLocked(roleOut, stageReading)
		if in != nil {
			p.setStageLocked(roleIn, stageReading)
		}
	}
	p.mu.Unlock()
	if !start {
		// Stopped or closed before the master came: Close closes it.
		return
	}
	// The copy takes over the place Open counted in outputs.
	dst, closeDst := p.consoleDst()
	go p.copyOut(roleOut, dst, master, closeDst)
	if in != nil {
		p.input.Add(1)
		go p.copyInConsole(in, master)
	}
}

// consoleDst is where the pty copy writes, and what it runs at the end.
func (p *IO) consoleDst() (io.Writer, func()) {
	out := p.console.out
	if out == nil {
		return io.Discard, nil
	}
	return out, func() { p.closeFifoWhenRead(out) }
}

// eot is ^D, the terminal's end-of-file character in canonical mode.
const eot = 0x04

// copyInConsole copies the client's input to the pty. At EOF (the client
// closed its stdin, or CloseStdin) it types ^D, so that a process reading
// the terminal sees end of file: twice after a partial line, because the
// first ^D only hands the pending line over. The pty stays open, since
// closing the master would hang up the terminal and lose its output.
func (p *IO) copyInConsole(src *stdinFifo, dst io.Writer) {
	defer p.input.Done()
	defer p.setStage(roleIn, stageDone)
	get, put := p.lease()
	last := byte('\n')
	if p.partialIn.Load() {
		last = 0
	}
	for {
		if p.paused.Load() && !p.park(false) {
			return
		}
		buf, n, err := pollRead(src.rc, get, put)
		if n > 0 {
			_, werr := dst.Write((*buf)[:n])
			last = (*buf)[n-1]
			p.partialIn.Store(last != '\n')
			if werr != nil {
				put(buf)
				return
			}
		}
		if buf != nil {
			put(buf)
		}
		if err != nil {
			if n == 0 && p.pauseWoke(err, false) {
				continue
			}
			// EOF, or CloseStdin closed the fifo: the client's input ended.
			if !errors.Is(err, io.EOF) && !src.closed.Load() {
				return
			}
			break
		}
	}
	if p.abandoned.Load() {
		return
	}
	eof := []byte{eot}
	if last != '\n' {
		eof = []byte{eot, eot}
	}
	_, _ = dst.Write(eof)
}

// maxWinsize is the largest terminal dimension the kernel's winsize holds.
const maxWinsize = math.MaxUint16

// Resize sets the terminal's size. A dimension above 65535 is
// ErrInvalidArgument: the kernel's winsize has 16 bits for each, and a
// silently truncated size is worse than a refused one.
func (p *IO) Resize(width, height uint32) error {
	if width > maxWinsize || height > maxWinsize {
		return fmt.Errorf("resize pty to %dx%d: a terminal dimension is at most %d: %w", width, height, maxWinsize, errdefs.ErrInvalidArgument)
	}
	var master *os.File
	if p.console != nil {
		master = p.console.pty()
	}
	if master == nil {
		return fmt.Errorf("the process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	// A Close racing with this one is the only way the master can fail
	// here.
	rc, err := master.SyscallConn()
	if err != nil {
		return fmt.Errorf("resize pty: the terminal is closed: %v: %w", err, errdefs.ErrFailedPrecondition)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(height), Col: uint16(width)})
	}); err != nil {
		return fmt.Errorf("resize pty: the terminal is closed: %v: %w", err, errdefs.ErrFailedPrecondition)
	}
	if ierr != nil {
		return fmt.Errorf("resize pty: %w", errors.Join(ierr, errdefs.ErrUnknown))
	}
	return nil
}
