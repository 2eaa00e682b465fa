// Package stdio connects a container process's stdin, stdout and stderr to the
// endpoints containerd names in a task request.
//
// The container never gets the client's fifos directly: it gets pipes, and
// the shim copies between the pipes and the fifos. So a client that goes away
// (containerd restarting) neither kills the container with SIGPIPE nor loses
// the fifo: the shim opens each output fifo read-write, which keeps it alive
// and makes the open never block.
//
// Invariants:
//   - Each output copy goroutine is owned by its Pipes; Drain and Close wait
//     for them. The stdin copy goroutine is also owned and waited by Close.
//   - A client sees EOF on an output fifo once the process and every process
//     sharing its pipe closed it, or once Drain's deadline passed, whichever
//     comes first. Nothing written before that point is dropped.
package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
)

// copyBufSize is the buffer of each output copy. A pipe hands out at most
// 64 KiB per read; 32 KiB halves the memory at no measurable cost.
const copyBufSize = 32 << 10

// Config is the stdio a client asked for. Empty paths mean no such stream.
type Config struct {
	Stdin    string
	Stdout   string
	Stderr   string
	Terminal bool
}

// IsNull reports whether the process gets no stdio at all.
func (c Config) IsNull() bool { return c.Stdin == "" && c.Stdout == "" && c.Stderr == "" }

// Validate checks that every path is absolute, clean and has no ".."
// component. It does not touch the filesystem.
func (c Config) Validate() error {
	for _, p := range []string{c.Stdin, c.Stdout, c.Stderr} {
		if p == "" {
			continue
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("stdio path %q must be absolute and clean: %w", p, errdefs.ErrInvalidArgument)
		}
	}
	if c.Terminal {
		return fmt.Errorf("terminal stdio: %w", errdefs.ErrNotImplemented)
	}
	return nil
}

// Pipes connects one process's stdio to fifos. It implements go-runc's IO and
// StartCloser interfaces. Create it with Open.
type Pipes struct {
	// Container-side ends, handed to the runtime by Set and closed in the
	// shim by CloseAfterStart.
	stdinR, stdoutW, stderrW *os.File
	// Shim-side ends.
	stdinW, stdoutR, stderrR *os.File

	outputs sync.WaitGroup // the stdout and stderr copies
	input   sync.WaitGroup // the stdin copy

	mu sync.Mutex
	// stdinFifo is the client's stdin fifo, nil once closed; guarded by mu.
	stdinFifo io.ReadCloser
	// closed is set by Close; guarded by mu.
	closed bool
}

// Open opens the client's fifos and the pipes for the process and starts the
// copies. On error everything opened is closed again.
func Open(ctx context.Context, c Config) (_ *Pipes, retErr error) {
	p := &Pipes{}
	defer func() {
		if retErr != nil {
			p.closeFiles()
		}
	}()
	type out struct {
		path   string
		shim   **os.File
		contnr **os.File
	}
	for _, o := range []out{{c.Stdout, &p.stdoutR, &p.stdoutW}, {c.Stderr, &p.stderrR, &p.stderrW}} {
		if o.path == "" {
			continue
		}
		f, err := openOutputFifo(o.path)
		if err != nil {
			return nil, err
		}
		r, w, err := os.Pipe()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("stdio: pipe: %w", err)
		}
		*o.shim, *o.contnr = r, w
		p.outputs.Add(1)
		go p.copyOut(f, r)
	}
	if c.Stdin != "" {
		in, err := fifo.OpenFifo(ctx, c.Stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("stdio: open stdin %s: %w", c.Stdin, err)
		}
		r, w, err := os.Pipe()
		if err != nil {
			in.Close()
			return nil, fmt.Errorf("stdio: pipe: %w", err)
		}
		p.stdinR, p.stdinW, p.stdinFifo = r, w, in
		p.input.Add(1)
		go p.copyIn(in, w)
	}
	return p, nil
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

// copyOut copies the process's output from the pipe into the fifo until the
// pipe reports EOF or is closed, then closes the fifo so that the client
// sees EOF.
func (p *Pipes) copyOut(dst *os.File, src *os.File) {
	defer p.outputs.Done()
	buf := make([]byte, copyBufSize)
	_, _ = io.CopyBuffer(dst, src, buf)
	dst.Close()
}

// copyIn copies the client's stdin into the process's stdin pipe, and closes
// the pipe at EOF so that the process sees EOF.
func (p *Pipes) copyIn(src io.Reader, dst *os.File) {
	defer p.input.Done()
	buf := make([]byte, copyBufSize)
	_, _ = io.CopyBuffer(dst, src, buf)
	dst.Close()
}

// Stdin returns the shim's end of the process's stdin, or nil.
func (p *Pipes) Stdin() io.WriteCloser {
	if p.stdinW == nil {
		return nil
	}
	return p.stdinW
}

// Stdout returns the shim's end of the process's stdout, or nil.
func (p *Pipes) Stdout() io.ReadCloser {
	if p.stdoutR == nil {
		return nil
	}
	return p.stdoutR
}

// Stderr returns the shim's end of the process's stderr, or nil.
func (p *Pipes) Stderr() io.ReadCloser {
	if p.stderrR == nil {
		return nil
	}
	return p.stderrR
}

// Set gives the container-side ends to the runtime command.
func (p *Pipes) Set(cmd *exec.Cmd) {
	if p.stdinR != nil {
		cmd.Stdin = p.stdinR
	}
	if p.stdoutW != nil {
		cmd.Stdout = p.stdoutW
	}
	if p.stderrW != nil {
		cmd.Stderr = p.stderrW
	}
}

// CloseAfterStart closes the shim's copies of the container-side ends once
// the runtime has handed them to the container, so that the container holds
// the last writer and its exit produces EOF.
func (p *Pipes) CloseAfterStart() error {
	for _, f := range []*os.File{p.stdinR, p.stdoutW, p.stderrW} {
		if f != nil {
			f.Close()
		}
	}
	return nil
}

// CloseStdin closes the process's stdin: the client's fifo and the pipe, so
// that the process reads EOF. It is idempotent.
func (p *Pipes) CloseStdin() {
	p.mu.Lock()
	in := p.stdinFifo
	p.stdinFifo = nil
	p.mu.Unlock()
	if in != nil {
		in.Close()
	}
}

// Drain waits until the output copies have delivered everything the process
// wrote, or until timeout. After the timeout (a process left behind still
// holds the pipe) it stops the copies: what was already read is written out,
// and the client sees EOF.
func (p *Pipes) Drain(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		p.outputs.Wait()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	for _, f := range []*os.File{p.stdoutR, p.stderrR} {
		if f != nil {
			_ = f.SetReadDeadline(time.Now())
		}
	}
	<-done
}

// Close stops every copy, waits for them and closes every file. It is
// idempotent.
func (p *Pipes) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.CloseStdin()
	for _, f := range []*os.File{p.stdoutR, p.stderrR} {
		if f != nil {
			_ = f.SetReadDeadline(time.Now())
		}
	}
	p.outputs.Wait()
	if p.stdinW != nil {
		// Unblocks a copyIn stuck writing to a full pipe.
		_ = p.stdinW.SetWriteDeadline(time.Now())
	}
	p.input.Wait()
	p.closeFiles()
	return nil
}

func (p *Pipes) closeFiles() {
	for _, f := range []*os.File{p.stdinR, p.stdoutW, p.stderrW, p.stdinW, p.stdoutR, p.stderrR} {
		if f != nil {
			f.Close()
		}
	}
	p.mu.Lock()
	in := p.stdinFifo
	p.stdinFifo = nil
	p.mu.Unlock()
	if in != nil {
		in.Close()
	}
}
