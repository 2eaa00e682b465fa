package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/handover"
	"github.com/tether-shim/tether/internal/paths"
)

// role names one copy of an IO: the stdout copy (or a terminal's pty
// copy), the stderr copy, the stdin copy (into a pipe or the pty).
type role int

const (
	roleOut role = iota
	roleErr
	roleIn
	numRoles
)

// stage is where one copy stands.
type stage int

const (
	// stageNone: the IO has no such copy (or a terminal's stdin copy has
	// not started).
	stageNone stage = iota
	// stagePending: prepared by Open, started by StartOutput.
	stagePending
	// stageReading: running, reading its source (or parked by Pause).
	stageReading
	// stageClosing: the source ended; the copy waits for the client to
	// read its fifo empty before closing it (closeFifoWhenRead).
	stageClosing
	// stageDone: returned, or given up before it started.
	stageDone
)

// String is the stage as Handed.Copies names it.
func (s stage) String() string {
	switch s {
	case stagePending:
		return "pending"
	case stageReading:
		return "reading"
	case stageClosing:
		return "closing"
	case stageDone:
		return "done"
	}
	return ""
}

// parseStage is the stage a Handed.Copies field names.
func parseStage(what, s string) (stage, error) {
	for st := stageNone; st <= stageDone; st++ {
		if s == st.String() {
			return st, nil
		}
	}
	return 0, fmt.Errorf("%s copy: unknown stage %q", what, s)
}

// live reports whether the copy's goroutine runs in this stage.
func (s stage) live() bool { return s == stageReading || s == stageClosing }

// Handed describes one IO across a live upgrade (docs/design.md, "Live
// upgrade"): its configuration, the numbers of its descriptors in the
// hand-over's handover.Files, its counters, and where its copies stood.
// It is JSON. A descriptor number 0 means none (handed-over descriptors
// are above 2). Adopt validates it all: a Handed is written by another
// build.
type Handed struct {
	Config Config `json:"config"`

	// StdinFifo is the client's stdin fifo (read end, non-blocking),
	// unless CloseStdin closed it.
	StdinFifo int `json:"stdin_fifo,omitempty"`
	// StdinPipe is the shim's (write) end of the process's stdin pipe,
	// while the stdin copy has not ended.
	StdinPipe int `json:"stdin_pipe,omitempty"`
	// StdoutPipe and StderrPipe are the shim's (read) ends of the output
	// pipes.
	StdoutPipe int `json:"stdout_pipe,omitempty"`
	StderrPipe int `json:"stderr_pipe,omitempty"`
	// StdoutFifo and StderrFifo are the client's output fifos, opened
	// read-write (a terminal's output fifo is StdoutFifo), while their
	// copy has not ended.
	StdoutFifo int `json:"stdout_fifo,omitempty"`
	StderrFifo int `json:"stderr_fifo,omitempty"`
	// File is the file:// destination of both output copies.
	File int `json:"file,omitempty"`
	// ContainerStdin, ContainerStdout and ContainerStderr are the
	// container-side ends of the pipes, until CloseAfterStart closed them
	// (a container created from a checkpoint holds them until Start).
	ContainerStdin  int `json:"container_stdin,omitempty"`
	ContainerStdout int `json:"container_stdout,omitempty"`
	ContainerStderr int `json:"container_stderr,omitempty"`
	// Console is a terminal's: its socket until the pty master came, then
	// the master.
	Console *HandedConsole `json:"console,omitempty"`
	// LoggerPid is the logging binary of binary:// stdio, unless it
	// exited already. Adopt watches it with Options.Monitor (whose
	// Reaper adopted its pidfd): nobody else may Watch it.
	LoggerPid int `json:"logger_pid,omitempty"`

	// Copies is where each copy stood.
	Copies HandedCopies `json:"copies"`
	// Progress and Dropped are the IO's counters (Stats).
	Progress int64 `json:"progress"`
	Dropped  int64 `json:"dropped"`
	// Stopping: Drain gave up on the outputs (or they were given up);
	// every output copy has ended.
	Stopping bool `json:"stopping,omitempty"`
	// PartialLine: the last byte the stdin copy wrote into the pty did not
	// end a line (its EOF then takes two ^D).
	PartialLine bool `json:"partial_line,omitempty"`
}

// HandedConsole is a terminal's console across a live upgrade: exactly
// one of Listener (with Dir) and Master.
type HandedConsole struct {
	// Dir is the private directory of the console socket, removed by
	// Close; Listener the socket (Dir/s), still waiting for the master.
	Dir      string `json:"dir,omitempty"`
	Listener int    `json:"listener,omitempty"`
	// Master is the pty master the runtime sent.
	Master int `json:"master,omitempty"`
}

// HandedCopies names the stage of each copy: "" (none), "pending" (waits
// for StartOutput), "reading", "closing" (the source ended; the client has
// not read its fifo empty yet), "done".
type HandedCopies struct {
	// Out is the stdout copy, or a terminal's pty copy.
	Out string `json:"out,omitempty"`
	Err string `json:"err,omitempty"`
	// In is the stdin copy, into a pipe or the pty.
	In string `json:"in,omitempty"`
}

// setStage sets the stage of ro's copy.
func (p *IO) setStage(ro role, st stage) {
	p.mu.Lock()
	p.setStageLocked(ro, st)
	p.mu.Unlock()
}

// setStageLocked is setStage with mu held; it wakes a waiting Pause.
func (p *IO) setStageLocked(ro role, st stage) {
	p.stage[ro] = st
	p.notifyParkLocked()
}

// notifyParkLocked wakes a Pause waiting for the copies to park; mu held.
func (p *IO) notifyParkLocked() {
	select {
	case p.parkChanged <- struct{}{}:
	default:
	}
}

// liveLocked counts the copies whose goroutines run; mu held.
func (p *IO) liveLocked() int {
	n := 0
	for _, st := range p.stage {
		if st.live() {
			n++
		}
	}
	return n
}

// park holds a copy, between two buffers, while the IO is paused: until
// Unpause, stopOutputs (for an output copy), Close or abandon releases it.
// It reports whether the copy goes on: false once the IO was closed or
// abandoned, or an output copy was stopped.
func (p *IO) park(output bool) bool {
	for {
		p.mu.Lock()
		if p.abandoned.Load() || p.closed || output && p.stopping.Load() {
			p.mu.Unlock()
			return false
		}
		if !p.paused.Load() {
			p.mu.Unlock()
			return true
		}
		resume := p.resume
		p.parked++
		p.notifyParkLocked()
		p.mu.Unlock()
		<-resume
		p.mu.Lock()
		p.parked--
		p.mu.Unlock()
	}
}

// releaseParked lets the parked copies look again at why they park; mu
// held.
func (p *IO) releaseParked() {
	if p.resume == nil {
		return
	}
	close(p.resume)
	p.resume = nil
	if p.paused.Load() {
		p.resume = make(chan struct{})
	}
}

// pauseWoke reports, for a copy whose read failed with err, whether Pause
// woke it (a read deadline not set by stopOutputs), after parking it until
// it may go on.
func (p *IO) pauseWoke(err error, output bool) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	return p.park(output)
}

// readSources are the descriptors the copies read from; in is the stdin
// fifo.
func (p *IO) readSources(in *stdinFifo) []*os.File {
	fs := []*os.File{p.stdoutR, p.stderrR}
	if p.console != nil {
		fs = append(fs, p.console.pty())
	}
	if in != nil {
		fs = append(fs, in.f)
	}
	return fs
}

// Pause parks every copy of the IO at a buffer boundary: whatever a copy
// read it has written, and nothing more is read; bytes not yet read stay in
// the kernel's pipe and fifo buffers. It waits for that, bounded by ctx; a
// copy stuck writing to a client that does not read (or, for stdin, to a
// process that does not read) makes it fail, and the copies resume. Unpause
// undoes it. A second Pause before Unpause fails and changes nothing.
//
// A paused copy waits in no read: Pause sets a read deadline in the past
// on every source, which wakes a copy waiting in the netpoller without
// reading (pollRead reads only inside RawConn.Read's callback), and the
// copy parks until Unpause. Drain and Close still work on a paused IO.
func (p *IO) Pause(ctx context.Context) error {
	p.mu.Lock()
	if p.paused.Load() {
		p.mu.Unlock()
		return errors.New("stdio: already paused")
	}
	p.paused.Store(true)
	p.resume = make(chan struct{})
	p.parkChanged = make(chan struct{}, 1)
	changed := p.parkChanged
	in := p.stdinFifo
	p.mu.Unlock()
	now := time.Now()
	for _, f := range p.readSources(in) {
		if f != nil {
			_ = f.SetReadDeadline(now)
		}
	}
	for {
		p.mu.Lock()
		parked := p.parked >= p.liveLocked()
		p.mu.Unlock()
		if parked {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			p.Unpause()
			return fmt.Errorf("stdio: pause: a copy is still writing (its reader does not read): %w", ctx.Err())
		}
	}
}

// Unpause resumes the copies after a failed hand-over, as if nothing had
// happened. Without a Pause it does nothing.
func (p *IO) Unpause() {
	p.mu.Lock()
	if !p.paused.Load() {
		p.mu.Unlock()
		return
	}
	in := p.stdinFifo
	p.mu.Unlock()
	// The deadlines first, so that no released copy finds one; then
	// stopOutputs' again if it came meanwhile (it sets stopping first).
	for _, f := range p.readSources(in) {
		if f != nil {
			_ = f.SetReadDeadline(time.Time{})
		}
	}
	if p.stopping.Load() {
		p.setStopDeadlines()
	}
	p.mu.Lock()
	p.paused.Store(false)
	p.releaseParked()
	p.mu.Unlock()
}

// HandOver, on a paused IO, duplicates every descriptor of the IO into files
// and returns its description. It changes nothing in the IO: after a
// failed hand-over, files.Close and Unpause, and the IO goes on.
func (p *IO) HandOver(files *handover.Files) (Handed, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Handed{}, errors.New("stdio: hand-over of a closed IO")
	}
	if !p.paused.Load() || p.parked < p.liveLocked() {
		return Handed{}, errors.New("stdio: hand-over of an IO whose copies are not paused")
	}
	if p.stdinFifo == nil && p.stage[roleIn].live() {
		// CloseStdin while paused: the copy will see it once resumed.
		return Handed{}, errors.New("stdio: stdin closed while paused: its copy has not ended yet")
	}
	h := Handed{
		Config:      p.cfg,
		Progress:    p.progress.Load(),
		Dropped:     p.dropped.Load(),
		Stopping:    p.stopping.Load(),
		PartialLine: p.partialIn.Load(),
		Copies: HandedCopies{
			Out: p.stage[roleOut].String(),
			Err: p.stage[roleErr].String(),
			In:  p.stage[roleIn].String(),
		},
	}
	var errs []error
	add := func(dst *int, f syscall.Conn, what string) {
		if len(errs) > 0 {
			return
		}
		fd, err := files.Add(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("stdio: hand over %s: %w", what, err))
			return
		}
		*dst = fd
	}
	// A nil *os.File must not become a non-nil syscall.Conn.
	addFile := func(dst *int, f *os.File, what string) {
		if f != nil {
			add(dst, f, what)
		}
	}
	if p.stdinFifo != nil {
		addFile(&h.StdinFifo, p.stdinFifo.f, "stdin fifo")
	}
	if p.stage[roleIn] != stageDone {
		addFile(&h.StdinPipe, p.stdinW, "stdin pipe")
	}
	addFile(&h.StdoutPipe, p.stdoutR, "stdout pipe")
	addFile(&h.StderrPipe, p.stderrR, "stderr pipe")
	outFifo := p.stdoutFifo
	if p.console != nil {
		outFifo = p.console.out
	}
	if st := p.stage[roleOut]; st == stagePending || st.live() {
		addFile(&h.StdoutFifo, outFifo, "stdout fifo")
	}
	if st := p.stage[roleErr]; st == stagePending || st.live() {
		addFile(&h.StderrFifo, p.stderrFifo, "stderr fifo")
	}
	addFile(&h.File, p.file, "log file")
	if !p.endsClosed {
		addFile(&h.ContainerStdin, p.stdinR, "container's stdin")
		addFile(&h.ContainerStdout, p.stdoutW, "container's stdout")
		addFile(&h.ContainerStderr, p.stderrW, "container's stderr")
	}
	if c := p.console; c != nil {
		h.Console = &HandedConsole{}
		if m := c.pty(); m != nil {
			add(&h.Console.Master, m, "pty master")
		} else {
			h.Console.Dir = c.dir
			add(&h.Console.Listener, c.ln, "console socket")
		}
	}
	if l := p.logger; l != nil {
		select {
		case <-l.exited:
		default:
			h.LoggerPid = l.pid
		}
	}
	if len(errs) > 0 {
		return Handed{}, errs[0]
	}
	return h, nil
}

// maxHandedFD bounds the descriptor numbers a Handed may name.
const maxHandedFD = 1 << 20

// consoleDirPrefix starts the name of every console socket's directory
// (newConsole): Close removes that directory, so an adopted one must be
// one of them.
const consoleDirPrefix = "tether-pty-"

// handedFD is one descriptor field of a Handed.
type handedFD struct {
	name string
	fd   int
	// modes are the file types the descriptor may have (S_IFIFO, ...).
	modes []uint32
}

// fds lists the descriptor fields of h.
func (h *Handed) fds() []handedFD {
	// A pipe or fifo, the file of file:// (which may name a device or a
	// fifo), a socket, a pty master.
	modeFifo := []uint32{unix.S_IFIFO}
	modeFile := []uint32{unix.S_IFREG, unix.S_IFCHR, unix.S_IFIFO}
	modeSocket := []uint32{unix.S_IFSOCK}
	modePty := []uint32{unix.S_IFCHR}
	fds := []handedFD{
		{"stdin_fifo", h.StdinFifo, modeFifo},
		{"stdin_pipe", h.StdinPipe, modeFifo},
		{"stdout_pipe", h.StdoutPipe, modeFifo},
		{"stderr_pipe", h.StderrPipe, modeFifo},
		{"stdout_fifo", h.StdoutFifo, modeFifo},
		{"stderr_fifo", h.StderrFifo, modeFifo},
		{"file", h.File, modeFile},
		{"container_stdin", h.ContainerStdin, modeFifo},
		{"container_stdout", h.ContainerStdout, modeFifo},
		{"container_stderr", h.ContainerStderr, modeFifo},
	}
	if h.Console != nil {
		fds = append(fds,
			handedFD{"console.listener", h.Console.Listener, modeSocket},
			handedFD{"console.master", h.Console.Master, modePty})
	}
	return fds
}

// errBadHanded is wrapped by every refusal of validate.
var errBadHanded = errors.New("stdio: bad hand-over")

// validate checks h before Adopt touches a descriptor: every number 0 or a
// handed-over one, none twice; the stages known; and every descriptor the
// stages and the Config need present, none they exclude. It touches
// nothing.
func (h *Handed) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{errBadHanded}, a...)...)
	}
	if err := h.Config.Validate(); err != nil {
		return bad("config: %w", err)
	}
	seen := map[int]string{}
	for _, d := range h.fds() {
		if d.fd == 0 {
			continue
		}
		if d.fd < 3 || d.fd > maxHandedFD {
			return bad("%s: descriptor %d: %w", d.name, d.fd, handover.ErrBadFD)
		}
		if other, dup := seen[d.fd]; dup {
			return bad("%s and %s are the same descriptor %d", other, d.name, d.fd)
		}
		seen[d.fd] = d.name
	}
	var st [numRoles]stage
	for ro, s := range [numRoles]string{h.Copies.Out, h.Copies.Err, h.Copies.In} {
		var err error
		if st[ro], err = parseStage([...]string{"out", "err", "in"}[ro], s); err != nil {
			return bad("%w", err)
		}
	}
	if h.Progress < 0 || h.Dropped < 0 {
		return bad("negative counters %d, %d", h.Progress, h.Dropped)
	}
	if h.LoggerPid < 0 {
		return bad("logger pid %d", h.LoggerPid)
	}
	if h.Stopping {
		for _, ro := range []role{roleOut, roleErr} {
			if st[ro] == stagePending || st[ro].live() {
				return bad("stopping, yet an output copy is %s", st[ro].String())
			}
		}
	}
	need := func(name string, fd int) error {
		if fd == 0 {
			return bad("%s: missing", name)
		}
		return nil
	}
	none := func(name string, fd int) error {
		if fd != 0 {
			return bad("%s: descriptor %d for a stream that has none", name, fd)
		}
		return nil
	}
	c := h.Config
	if c.Terminal {
		return h.validateTerminal(st, need, none, bad)
	}
	if h.Console != nil {
		return bad("a console without a terminal")
	}
	if h.PartialLine {
		return bad("partial_line without a terminal")
	}
	var errs []error
	if c.Stdin == "" {
		errs = append(errs, none("stdin_fifo", h.StdinFifo), none("stdin_pipe", h.StdinPipe), none("container_stdin", h.ContainerStdin))
		if st[roleIn] != stageNone {
			errs = append(errs, bad("a stdin copy without stdin"))
		}
	} else {
		switch st[roleIn] {
		case stageReading:
			errs = append(errs, need("stdin_fifo", h.StdinFifo), need("stdin_pipe", h.StdinPipe))
		case stageDone:
			// Its end of the pipe is closed: the process read EOF.
			errs = append(errs, none("stdin_pipe", h.StdinPipe))
		default:
			errs = append(errs, bad("stdin copy %q: it starts with the IO", h.Copies.In))
		}
	}
	out, _ := parseOutput(c.Stdout)
	errOut, _ := parseOutput(c.Stderr)
	k := out.kind
	if k == kindNone {
		k = errOut.kind
	}
	if k != kindFile {
		errs = append(errs, none("file", h.File))
	} else {
		errs = append(errs, need("file", h.File))
	}
	if k != kindBinary && h.LoggerPid != 0 {
		errs = append(errs, bad("logger pid %d without binary:// stdio", h.LoggerPid))
	}
	for _, s := range []struct {
		o                  output
		st                 stage
		name               string
		pipe, fifo, contnr int
	}{
		{out, st[roleOut], "stdout", h.StdoutPipe, h.StdoutFifo, h.ContainerStdout},
		{errOut, st[roleErr], "stderr", h.StderrPipe, h.StderrFifo, h.ContainerStderr},
	} {
		pipe, fifo, contnr := s.name+"_pipe", s.name+"_fifo", "container_"+s.name
		switch {
		case s.o.kind == kindFifo:
			switch s.st {
			case stagePending, stageReading:
				errs = append(errs, need(pipe, s.pipe), need(fifo, s.fifo))
			case stageClosing:
				errs = append(errs, need(fifo, s.fifo))
			case stageDone:
				errs = append(errs, none(fifo, s.fifo))
			default:
				errs = append(errs, bad("%s: a fifo without its copy", s.name))
			}
		case s.o.kind == kindFile:
			errs = append(errs, none(fifo, s.fifo))
			switch s.st {
			case stagePending, stageReading:
				errs = append(errs, need(pipe, s.pipe))
			case stageDone:
			default:
				errs = append(errs, bad("%s: copy %q into a file", s.name, s.st.String()))
			}
		default:
			// No copy: a logging binary reads the pipes itself (it has
			// both, whichever streams it was given).
			errs = append(errs, none(pipe, s.pipe), none(fifo, s.fifo))
			if k != kindBinary {
				errs = append(errs, none(contnr, s.contnr))
			}
			if s.st != stageNone {
				errs = append(errs, bad("%s: copy %q of a stream without one", s.name, s.st.String()))
			}
		}
	}
	return errors.Join(errs...)
}

// validateTerminal is validate's part for a terminal.
func (h *Handed) validateTerminal(st [numRoles]stage, need, none func(string, int) error, bad func(string, ...any) error) error {
	con := h.Console
	if con == nil {
		return bad("a terminal without its console")
	}
	errs := []error{
		none("stdin_pipe", h.StdinPipe), none("stdout_pipe", h.StdoutPipe), none("stderr_pipe", h.StderrPipe),
		none("stderr_fifo", h.StderrFifo), none("file", h.File), none("container_stdin", h.ContainerStdin),
		none("container_stdout", h.ContainerStdout), none("container_stderr", h.ContainerStderr),
	}
	if h.LoggerPid != 0 {
		errs = append(errs, bad("logger pid %d with a terminal", h.LoggerPid))
	}
	if st[roleErr] != stageNone {
		errs = append(errs, bad("a stderr copy with a terminal"))
	}
	if (con.Listener == 0) == (con.Master == 0) {
		errs = append(errs, bad("a console has either its socket or its master"))
	}
	if con.Listener != 0 {
		if !paths.CleanAbs(con.Dir) || !strings.HasPrefix(filepath.Base(con.Dir), consoleDirPrefix) {
			errs = append(errs, bad("console socket directory %q", con.Dir))
		}
	} else if con.Dir != "" {
		errs = append(errs, bad("console socket directory %q without its socket", con.Dir))
	}
	switch st[roleOut] {
	case stagePending:
		errs = append(errs, need("console.listener", con.Listener))
	case stageReading:
		errs = append(errs, need("console.master", con.Master))
	case stageClosing:
		errs = append(errs, need("stdout_fifo", h.StdoutFifo))
	case stageDone:
	default:
		errs = append(errs, bad("a terminal without its pty copy"))
	}
	if h.Config.Stdout == "" || st[roleOut] == stageDone {
		errs = append(errs, none("stdout_fifo", h.StdoutFifo))
	} else {
		errs = append(errs, need("stdout_fifo", h.StdoutFifo))
	}
	if h.Config.Stdin == "" {
		errs = append(errs, none("stdin_fifo", h.StdinFifo))
		if st[roleIn] != stageNone {
			errs = append(errs, bad("a stdin copy without stdin"))
		}
	}
	switch st[roleIn] {
	case stageNone, stageDone:
	case stageReading:
		errs = append(errs, need("stdin_fifo", h.StdinFifo), need("console.master", con.Master))
	default:
		errs = append(errs, bad("stdin copy %q on a terminal", h.Copies.In))
	}
	return errors.Join(errs...)
}

// Adopt rebuilds, in the image a live upgrade started, the IO that h
// describes, and resumes its copies where they stood: a pending copy waits
// for StartOutput, as before. With a logging binary (h.LoggerPid) it
// watches it with opts.Monitor, as startLogger does, so that the adopted
// IO's Close stops it: call it after the Reaper adopted its pidfd
// (Reaper.Adopt), and let nothing else Watch that pid.
//
// It refuses, with an error, a Handed that validate refuses, and a
// descriptor that is not open or not of the type its field needs; every
// descriptor of h it had taken is then closed, the others left alone.
func Adopt(ctx context.Context, h Handed, opts Options) (_ *IO, retErr error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	if h.LoggerPid != 0 && opts.Monitor == nil {
		return nil, errors.New("stdio: adopt: binary:// needs a monitor")
	}
	files := map[string]*os.File{}
	var ln *net.UnixListener
	defer func() {
		if retErr == nil {
			return
		}
		for _, f := range files {
			f.Close()
		}
		if ln != nil {
			// Not the socket's file: it is still the old image's name
			// until this image's IO owns it.
			ln.SetUnlinkOnClose(false)
			ln.Close()
		}
	}()
	for _, d := range h.fds() {
		if d.fd == 0 {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(d.fd, &st); err != nil {
			return nil, fmt.Errorf("stdio: adopt %s: descriptor %d: %w: %w", d.name, d.fd, handover.ErrBadFD, err)
		}
		if !slices.Contains(d.modes, st.Mode&unix.S_IFMT) {
			return nil, fmt.Errorf("stdio: adopt %s: descriptor %d has file type %#o, not one of %#o: %w", d.name, d.fd, st.Mode&unix.S_IFMT, d.modes, handover.ErrBadFD)
		}
		f, err := handover.Take(d.fd, d.name)
		if err != nil {
			return nil, fmt.Errorf("stdio: adopt: %w", err)
		}
		files[d.name] = f
	}
	p := &IO{
		cfg:        h.Config,
		busy:       opts.Busy,
		stdinW:     files["stdin_pipe"],
		stdoutR:    files["stdout_pipe"],
		stderrR:    files["stderr_pipe"],
		stdoutFifo: files["stdout_fifo"],
		stderrFifo: files["stderr_fifo"],
		file:       files["file"],
		stdinR:     files["container_stdin"],
		stdoutW:    files["container_stdout"],
		stderrW:    files["container_stderr"],
	}
	if f := files["stdin_fifo"]; f != nil {
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("stdio: adopt stdin fifo: %w", err)
		}
		p.stdinFifo = &stdinFifo{f: f, rc: rc}
	}
	if h.Config.Terminal {
		con := &console{out: p.stdoutFifo, master: files["console.master"]}
		p.stdoutFifo = nil
		if f := files["console.listener"]; f != nil {
			l, err := net.FileListener(f)
			if err != nil {
				return nil, fmt.Errorf("stdio: adopt console socket: %w", err)
			}
			ul, ok := l.(*net.UnixListener)
			if !ok {
				l.Close()
				return nil, fmt.Errorf("stdio: adopt console socket: a %T, not a unix socket: %w", l, handover.ErrBadFD)
			}
			ln = ul
			if got, want := ul.Addr().String(), filepath.Join(h.Console.Dir, "s"); got != want {
				return nil, fmt.Errorf("stdio: adopt console socket: it is %q, not %q: %w", got, want, handover.ErrBadFD)
			}
			// FileListener made its own descriptor.
			f.Close()
			delete(files, "console.listener")
			con.ln, con.dir = ul, h.Console.Dir
		}
		p.console = con
	}
	p.progress.Store(h.Progress)
	p.dropped.Store(h.Dropped)
	p.stopping.Store(h.Stopping)
	p.partialIn.Store(h.PartialLine)
	if h.LoggerPid != 0 {
		l := &logger{pid: h.LoggerPid, monitor: opts.Monitor, exited: make(chan struct{})}
		if err := opts.Monitor.Watch(l.pid, func(exits.Exit) { close(l.exited) }); err != nil {
			return nil, fmt.Errorf("stdio: adopt: watch logging binary %d: %w", l.pid, err)
		}
		p.logger = l
	}
	// Nothing fails from here on.
	if h.Stopping {
		p.setStopDeadlines()
	}
	st := [numRoles]stage{}
	for ro, s := range [numRoles]string{h.Copies.Out, h.Copies.Err, h.Copies.In} {
		st[ro], _ = parseStage("", s)
	}
	p.resumeCopies(st)
	return p, nil
}

// resumeCopies starts, in an adopted IO, each copy from the stage st names.
func (p *IO) resumeCopies(st [numRoles]stage) {
	for _, ro := range []role{roleOut, roleErr} {
		src, dst, closeDst := p.stdoutR, io.Writer(nil), func() {}
		if ro == roleErr {
			src = p.stderrR
		}
		if p.console != nil {
			src = p.console.master
			dst, closeDst = p.consoleDst()
		} else {
			dst, closeDst = p.outDst(ro)
		}
		p.mu.Lock()
		p.stage[ro] = st[ro]
		p.mu.Unlock()
		switch st[ro] {
		case stagePending:
			p.outputs.Add(1)
			if p.console == nil {
				p.mu.Lock()
				p.pendingOut = append(p.pendingOut, pendingCopy{role: ro, dst: dst, src: src, closeDst: closeDst})
				p.mu.Unlock()
			}
		case stageReading:
			p.outputs.Add(1)
			go p.copyOut(ro, dst, src, closeDst)
		case stageClosing:
			p.outputs.Add(1)
			go p.copyOut(ro, dst, nil, closeDst)
		}
	}
	if st[roleIn] == stageReading {
		if p.console != nil {
			p.setStage(roleIn, stageReading)
			p.input.Add(1)
			go p.copyInConsole(p.stdinFifo, p.console.master)
		} else {
			p.startCopyIn(p.stdinFifo, p.stdinW)
		}
	} else {
		p.setStage(roleIn, st[roleIn])
	}
}

// outDst is where the output copy ro of pipes writes, and what it runs at
// the end: the client's fifo, closed once read, or the log file.
func (p *IO) outDst(ro role) (io.Writer, func()) {
	f := p.stdoutFifo
	if ro == roleErr {
		f = p.stderrFifo
	}
	if f != nil {
		return f, func() { p.closeFifoWhenRead(f) }
	}
	if p.file != nil {
		return p.file, nil
	}
	return io.Discard, nil
}

// abandon lets go of a paused IO whose descriptors another IO adopted in
// this process, as execve does in a real upgrade: its copies return
// without reading, writing or closing anything on the way (no ^D, no
// closeFifoWhenRead), and its own descriptors are closed, which leaves the
// adopted duplicates' descriptions alone; the console socket is not
// unlinked, nor its directory removed, and the logging binary is not
// stopped. For tests.
func (p *IO) abandon() {
	p.abandoned.Store(true)
	p.mu.Lock()
	p.closed = true
	pending := len(p.pendingOut)
	p.pendingOut = nil
	if p.console != nil && p.stage[roleOut] == stagePending {
		pending++
	}
	p.releaseParked()
	p.mu.Unlock()
	for range pending {
		p.outputs.Done()
	}
	p.outputs.Wait()
	p.input.Wait()
	fs := []*os.File{p.stdinR, p.stdoutW, p.stderrW, p.stdinW, p.stdoutR, p.stderrR, p.file, p.stdoutFifo, p.stderrFifo}
	if p.stdinFifo != nil {
		fs = append(fs, p.stdinFifo.f)
	}
	if c := p.console; c != nil {
		fs = append(fs, c.master, c.out)
		if c.ln != nil {
			c.ln.SetUnlinkOnClose(false)
			c.ln.Close()
		}
	}
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}
