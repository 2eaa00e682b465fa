// Package stdio connects a container process's stdin, stdout and stderr to
// the endpoints containerd names in a task request: fifo paths,
// `file:///path` (append stdout and stderr to one file), `binary:///path?k=v`
// (a logging binary reads them on fds 3 and 4), a terminal (a pty whose
// master the runtime sends over a console socket), or nothing.
//
// The container never gets the client's fifos directly: it gets pipes (or
// the pty), and the shim copies between them and the fifos. So a client that
// goes away (containerd restarting) neither kills the container with SIGPIPE
// nor loses the fifo: the shim opens each output fifo read-write, which
// keeps it alive and makes the open never block.
//
// Invariants:
//   - Every copy goroutine is owned by its IO; Drain and Close wait for them.
//   - A client sees EOF on an output once the process and every process
//     sharing its pipe closed it, or once Drain's deadline passed, whichever
//     comes first. Nothing written before that point is dropped.
//   - A logging binary is a watched child of the shim, stopped (and waited
//     for, with a deadline) by Close.
//   - Once Pause returned, no copy reads until Unpause, and every byte a
//     copy read has been written: an IO that HandOver describes and Adopt
//     rebuilds in the next image loses no byte and copies none twice
//     (handover.go).
package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"

	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/paths"
)

// copyBufSize is the buffer of a copy while its stream has data. A pipe
// hands out at most 64 KiB per read; 32 KiB halves the memory at no
// measurable cost. An idle stream holds no buffer (see IO.buffer).
const copyBufSize = 32 << 10

// Config is the stdio a client asked for. Empty paths mean no such stream.
type Config struct {
	Stdin    string `json:"stdin,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
	Terminal bool   `json:"terminal,omitempty"`
}

// IsNull reports whether the process gets no stdio at all. A terminal is
// stdio even without client endpoints: the runtime needs a console socket
// to send the pty to, and the output is drained (as containerd's shim does).
func (c Config) IsNull() bool {
	return c.Stdin == "" && c.Stdout == "" && c.Stderr == "" && !c.Terminal
}

// Options are what Open needs besides the Config.
type Options struct {
	// UID and GID own the container's ends of the pipes (IoUid, IoGid).
	UID, GID int
	// ID and Namespace are given to a logging binary as CONTAINER_ID and
	// CONTAINER_NAMESPACE.
	ID, Namespace string
	// Monitor watches and stops logging binaries; required for binary://
	// URIs.
	Monitor exits.Monitor
	// Busy, if not nil, is called when a copy has read data and the func
	// it returns once the copy has written it, so that the idle trimmer
	// (trim.Trimmer.Begin) counts the copy as work under way. It must not
	// block.
	Busy func() (end func())
	// ConsoleDir is where the console socket of a terminal is created.
	ConsoleDir string
}

// kind is how one output stream is delivered.
type kind int

const (
	kindNone kind = iota
	kindFifo
	kindFile
	kindBinary
)

// output is a parsed stdout or stderr URI.
type output struct {
	kind kind
	path string
	args []string // binary:// query, as k v pairs
}

// parseOutput parses a stdout or stderr endpoint: a bare path or fifo://
// is a fifo, file:// a file to append to, binary:// a logging binary.
func parseOutput(s string) (output, error) {
	if s == "" {
		return output{}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return output{}, fmt.Errorf("stdio %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	if u.Scheme != "" && (u.Host != "" || u.User != nil) {
		return output{}, fmt.Errorf("stdio %q: a %s URI names a path, not a host (%s:///path): %w", s, u.Scheme, u.Scheme, errdefs.ErrInvalidArgument)
	}
	o := output{path: u.Path}
	switch u.Scheme {
	case "", "fifo":
		o.kind = kindFifo
		if u.Scheme == "" {
			o.path = s
		}
	case "file":
		o.kind = kindFile
	case "binary":
		o.kind = kindBinary
		// In key order, so that the logging binary sees the same
		// arguments for the same URI.
		q := u.Query()
		for _, k := range slices.Sorted(maps.Keys(q)) {
			o.args = append(o.args, k)
			if vs := q[k]; len(vs) > 0 && vs[0] != "" {
				o.args = append(o.args, vs[0])
			}
		}
	default:
		return output{}, fmt.Errorf("stdio %q: scheme %q is not supported: %w", s, u.Scheme, errdefs.ErrInvalidArgument)
	}
	if err := paths.Check("stdio path", o.path); err != nil {
		return output{}, err
	}
	return o, nil
}

// Validate checks every endpoint: stdin a clean absolute fifo path, stdout
// and stderr fifo paths or file:// / binary:// URIs with clean absolute
// paths, the same scheme for both, and no file:// or binary:// with a
// terminal. It does not touch the filesystem.
func (c Config) Validate() error {
	if c.Stdin != "" {
		if err := paths.Check("stdin path", c.Stdin); err != nil {
			return err
		}
	}
	out, err := parseOutput(c.Stdout)
	if err != nil {
		return err
	}
	errOut, err := parseOutput(c.Stderr)
	if err != nil {
		return err
	}
	if out.kind != kindNone && errOut.kind != kindNone && out.kind != errOut.kind {
		return fmt.Errorf("stdout %q and stderr %q differ in kind: %w", c.Stdout, c.Stderr, errdefs.ErrInvalidArgument)
	}
	if c.Terminal {
		for _, o := range []output{out, errOut} {
			if o.kind == kindFile || o.kind == kindBinary {
				return fmt.Errorf("a terminal needs fifo stdio, not %q: %w", o.path, errdefs.ErrInvalidArgument)
			}
		}
	}
	return nil
}

// IO is one process's stdio. It implements go-runc's IO and StartCloser.
// Create it with Open.
type IO struct {
	// cfg is the Config the IO was opened with (handed over).
	cfg Config
	// Container-side ends, handed to the runtime by Set and closed in the
	// shim by CloseAfterStart. Unused with a terminal.
	stdinR, stdoutW, stderrW *os.File
	// Shim-side ends of the pipes.
	stdinW, stdoutR, stderrR *os.File
	// console is set with a terminal: the socket until the master arrived.
	console *console
	// logger is the logging binary of binary:// stdio.
	logger *logger
	// file is the file:// destination, closed after both copies ended.
	file *os.File

	// stdoutFifo and stderrFifo are the client's output fifos the copies
	// write to (a terminal's is console.out).
	stdoutFifo, stderrFifo *os.File
	// progress counts the bytes the output copies have written; Drain
	// waits as long as it grows. Stats reports it too.
	progress atomic.Int64
	// dropped counts the bytes the output copies read from the process
	// and could not write to the client (Stats).
	dropped atomic.Int64
	// writing counts the output copies blocked in a write to the client:
	// a stall there is a slow client, not a process left behind.
	writing atomic.Int32
	// stopping is set by stopOutputs: the copies, and the waits for the
	// client to read the fifos empty, end.
	stopping atomic.Bool
	// paused is set by Pause and cleared by Unpause, both under mu: the
	// copies park (see park) instead of reading. Read by the copies'
	// loops without mu.
	paused atomic.Bool
	// partialIn is set by the pty's stdin copy while the last byte it
	// wrote did not end a line (so its EOF takes two ^D); handed over.
	partialIn atomic.Bool
	// abandoned is set by abandon (tests): released copies return without
	// touching anything shared with the IO that adopted their descriptors.
	abandoned atomic.Bool

	outputs sync.WaitGroup // the stdout and stderr (or pty) copies
	input   sync.WaitGroup // the stdin copy

	// bufs holds the copies' buffers between reads (see buffer).
	bufs sync.Pool
	// busy is Options.Busy: a copy holding a buffer is work under way
	// (see lease). Set by Open.
	busy func() (end func())

	mu sync.Mutex
	// stdinFifo is the client's stdin fifo, nil once closed; guarded by mu.
	stdinFifo *stdinFifo
	// stage is where each copy stands, by role (see stage). A terminal's
	// pty copy is stagePending from Open until StartOutput starts it or
	// stopOutputs gives its place up: Open counts the copy in outputs
	// already, so that a Drain that comes first (a quick exec exits
	// before its runtime call returned) waits for it. Guarded by mu.
	stage [numRoles]stage
	// parked counts the copies parked by Pause; guarded by mu.
	parked int
	// resume is closed to release the parked copies (Unpause, stopOutputs,
	// Close, abandon), and made anew while still paused; nil when not
	// paused. Guarded by mu.
	resume chan struct{}
	// parkChanged wakes a Pause waiting for the copies to park; made by
	// Pause, sent to (never blocking) under mu.
	parkChanged chan struct{}
	// endsClosed is set by CloseAfterStart: the container-side ends are
	// closed in the shim. Guarded by mu.
	endsClosed bool
	// closed is set by Close; guarded by mu.
	closed bool
	// pendingOut are the output copies of pipes that Open prepared and
	// StartOutput has not started yet: until the runtime's create or exec
	// returned, the pipes hold only what the runtime itself wrote. Each
	// counts in outputs already; stopOutputs gives their places up.
	// Guarded by mu.
	pendingOut []pendingCopy
}

// pendingCopy is an output copy waiting for StartOutput.
type pendingCopy struct {
	role     role
	dst      io.Writer
	src      *os.File
	closeDst func()
}

// Open prepares the stdio of a process: opens the client's endpoints and
// the pipes, starts the copies or the logging binary, or creates the
// console socket of a terminal (the copies start in StartOutput). On
// error everything opened is closed again. ctx bounds only the wait for a
// logging binary to become ready.
func Open(ctx context.Context, c Config, opts Options) (_ *IO, retErr error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	p := &IO{cfg: c, busy: opts.Busy}
	defer func() {
		if retErr != nil {
			p.Close()
		}
	}()
	if c.Stdin != "" {
		if err := p.openStdin(c.Stdin, !c.Terminal); err != nil {
			return nil, err
		}
	}
	if c.Terminal {
		con, err := newConsole(opts.ConsoleDir)
		if err != nil {
			return nil, err
		}
		p.console = con
		p.stage[roleOut] = stagePending
		p.outputs.Add(1)
		if out, _ := parseOutput(c.Stdout); out.kind == kindFifo {
			if p.console.out, err = openOutputFifo(out.path); err != nil {
				return nil, err
			}
		}
		return p, nil
	}
	out, _ := parseOutput(c.Stdout)
	errOut, _ := parseOutput(c.Stderr)
	k := out.kind
	if k == kindNone {
		k = errOut.kind
	}
	switch k {
	case kindFifo:
		if err := p.openFifos(out, errOut); err != nil {
			return nil, err
		}
	case kindFile:
		if err := p.openFile(out, errOut); err != nil {
			return nil, err
		}
	case kindBinary:
		bin := out
		if bin.kind == kindNone {
			bin = errOut
		}
		if err := p.startLogger(ctx, bin, opts); err != nil {
			return nil, err
		}
	}
	if err := p.chown(opts.UID, opts.GID); err != nil {
		return nil, err
	}
	return p, nil
}

// openStdin opens the client's stdin fifo and, without a terminal, the pipe
// it is copied into; with a terminal the copy starts in StartOutput.
func (p *IO) openStdin(path string, pipe bool) error {
	in, err := openStdinFifo(path)
	if err != nil {
		return err
	}
	p.stdinFifo = in
	if !pipe {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("stdio: pipe: %w", err)
	}
	p.stdinR, p.stdinW = r, w
	p.startCopyIn(in, w)
	return nil
}

// pipe makes the pipe of one output stream and prepares its copy into
// dst, which StartOutput starts; closeDst runs when the copy ends (or
// gives up without starting).
func (p *IO) pipe(ro role, shim, contnr **os.File, dst io.Writer, closeDst func()) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("stdio: pipe: %w", err)
	}
	*shim, *contnr = r, w
	p.outputs.Add(1)
	p.mu.Lock()
	p.pendingOut = append(p.pendingOut, pendingCopy{role: ro, dst: dst, src: r, closeDst: closeDst})
	p.stage[ro] = stagePending
	p.mu.Unlock()
	return nil
}

// chown gives the container's ends of the pipes to uid and gid.
func (p *IO) chown(uid, gid int) error {
	if uid == 0 && gid == 0 {
		return nil
	}
	for _, f := range []*os.File{p.stdinR, p.stdoutW, p.stderrW} {
		if f == nil {
			continue
		}
		if err := f.Chown(uid, gid); err != nil {
			return fmt.Errorf("stdio: chown pipe to %d:%d: %w", uid, gid, err)
		}
	}
	return nil
}

// Stdin returns the shim's end of the process's stdin, or nil.
func (p *IO) Stdin() io.WriteCloser {
	if p.stdinW == nil {
		return nil
	}
	return p.stdinW
}

// Stdout returns the shim's end of the process's stdout, or nil.
func (p *IO) Stdout() io.ReadCloser {
	if p.stdoutR == nil {
		return nil
	}
	return p.stdoutR
}

// Stderr returns the shim's end of the process's stderr, or nil.
func (p *IO) Stderr() io.ReadCloser {
	if p.stderrR == nil {
		return nil
	}
	return p.stderrR
}

// Set gives the container-side ends to the runtime command. Streams the
// client did not ask for get /dev/null from os/exec. With a terminal it
// gives nothing: the process gets the pty.
func (p *IO) Set(cmd *exec.Cmd) {
	if p.console != nil {
		return
	}
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

// ConsoleSocket returns the socket the runtime sends the pty master to, or
// nil without a terminal.
func (p *IO) ConsoleSocket() runc.ConsoleSocket {
	if p.console == nil {
		return nil
	}
	return p.console
}

// CloseAfterStart closes the shim's copies of the container-side ends once
// the runtime has handed them to the container, so that the container holds
// the last writer and its exit produces EOF.
func (p *IO) CloseAfterStart() error {
	p.mu.Lock()
	p.endsClosed = true
	p.mu.Unlock()
	for _, f := range []*os.File{p.stdinR, p.stdoutW, p.stderrW} {
		if f != nil {
			f.Close()
		}
	}
	return nil
}

// CloseStdin closes the process's stdin: the client's fifo and what it was
// copied into, so that the process reads EOF. It is idempotent.
func (p *IO) CloseStdin() {
	p.mu.Lock()
	in := p.stdinFifo
	p.stdinFifo = nil
	p.mu.Unlock()
	if in != nil {
		in.Close()
	}
}

// Limits of Drain once no more output should come: what a process leaves
// in its pipes when it exits is at most a pipe buffer and a copy buffer per
// stream, so more than drainByteLimit means something left behind is still
// writing; and draining for longer than drainMaxFactor times Drain's
// timeout means the client stopped reading.
const (
	drainByteLimit = 256 << 10
	drainMaxFactor = 5
)

// Drain waits until the output copies have delivered everything the process
// wrote. A slow client only slows it down: while a copy is blocked writing
// to the client, or output moves, it waits, so nothing the process wrote is
// lost. It stops the copies (and the client sees EOF) once nothing moved
// for timeout while the copies wait to read (a process left behind holds
// the pipe), once more than drainByteLimit went through (a process left
// behind keeps writing), or after drainMaxFactor timeouts in all (a
// client that stopped reading).
func (p *IO) Drain(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		p.outputs.Wait()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	start := p.progress.Load()
	deadline := time.Now().Add(drainMaxFactor * timeout)
	last := start
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		now := p.progress.Load()
		stalledOnRead := now == last && p.writing.Load() == 0
		if stalledOnRead || now-start > drainByteLimit || time.Now().After(deadline) {
			break
		}
		last = now
		t.Reset(timeout)
	}
	p.stopOutputs()
	<-done
}

// stopOutputs makes the output copies return: their reads from the
// process and their writes to the client.
func (p *IO) stopOutputs() {
	p.stopping.Store(true)
	p.giveUpConsoleCopy()
	p.giveUpOutputCopies()
	p.setStopDeadlines()
	p.mu.Lock()
	p.releaseParked()
	p.mu.Unlock()
}

// setStopDeadlines makes the output copies' reads and writes return.
func (p *IO) setStopDeadlines() {
	now := time.Now()
	for _, f := range []*os.File{p.stdoutR, p.stderrR, p.stdoutFifo, p.stderrFifo} {
		if f != nil {
			_ = f.SetReadDeadline(now)
			_ = f.SetWriteDeadline(now)
		}
	}
	if p.console != nil {
		p.console.stopReads()
		p.console.stopOutputWrites()
	}
}

// giveUpConsoleCopy releases the place in outputs Open took for a pty copy
// that has not started, so that nothing waits for it any more.
func (p *IO) giveUpConsoleCopy() {
	p.mu.Lock()
	pending := p.console != nil && p.stage[roleOut] == stagePending
	if pending {
		p.setStageLocked(roleOut, stageDone)
	}
	p.mu.Unlock()
	if pending {
		p.outputs.Done()
	}
}

// giveUpOutputCopies releases the places of the pipe copies StartOutput
// has not started, and closes their destinations: what the pipes hold is
// the runtime's, never delivered.
func (p *IO) giveUpOutputCopies() {
	p.mu.Lock()
	pending := p.pendingOut
	p.pendingOut = nil
	for _, c := range pending {
		p.setStageLocked(c.role, stageDone)
	}
	p.mu.Unlock()
	for _, c := range pending {
		if c.closeDst != nil {
			c.closeDst()
		}
		p.outputs.Done()
	}
}

// Close stops every copy and the logging binary, waits for them and closes
// every file. It is idempotent.
func (p *IO) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	// Parked copies end (see park).
	p.releaseParked()
	p.mu.Unlock()
	p.CloseStdin()
	p.stopOutputs()
	p.outputs.Wait()
	if p.stdinW != nil {
		// Unblocks a copyIn stuck writing to a full pipe.
		_ = p.stdinW.SetWriteDeadline(time.Now())
	}
	if p.console != nil {
		p.console.stopWrites()
	}
	p.input.Wait()
	for _, f := range []*os.File{p.stdinR, p.stdoutW, p.stderrW, p.stdinW, p.stdoutR, p.stderrR, p.file} {
		if f != nil {
			f.Close()
		}
	}
	var errs []error
	if p.console != nil {
		errs = append(errs, p.console.Close())
	}
	if p.logger != nil {
		errs = append(errs, p.logger.stop())
	}
	return errors.Join(errs...)
}
