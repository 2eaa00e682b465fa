// Package runtime is Tether's adapter to an OCI runtime binary (runc, crun or
// any runtime with runc's command line), built on go-runc.
//
// Invariants:
//   - Every runtime command runs under a Hold of the exit monitor, so that the
//     orphan sweep never reaps the runtime process itself, nor a container
//     process whose pid is not yet registered (see package exits).
//   - Create and Exec hand the new process's pid to a register callback while
//     the Hold is still active: the pid cannot be reaped, and so not reused,
//     before the caller watches it.
//   - This is the only package that reads runtime output as text (error
//     messages, the JSON log, `features`). A failed runtime command is an
//     *Error that unwraps to an errdefs class (see Classify); failures around
//     it (the pid file, /dev/null, the register callback) are plain errors
//     wrapped with %w, and register's error is returned as it is.
//   - Runtime commands never inherit the caller's cancellation: a containerd
//     RPC that times out must not kill `runc create` halfway. Each command has
//     its own deadline instead. A control command (kill, delete, ps, pause,
//     resume, update) also ends shortly before the request's deadline, if it
//     has one, so that the caller gets the shim's timed-out error rather than
//     giving up on a hung runtime first.
//   - A runtime command runs in its own process group, which is killed whole
//     at the command's deadline (see GroupMonitor): a runtime hung in a
//     helper process does not outlive it, nor keep the command waiting.
package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/exits"
)

// Deadlines for runtime commands. Creating and starting run hooks and can be
// slow on a loaded node; the rest only touch runtime state.
const (
	launchTimeout  = 5 * time.Minute
	controlTimeout = time.Minute
)

// DefaultBinary is the runtime binary of a container whose options name
// none, as with containerd's runc shim. It is set here only.
const DefaultBinary = "runc"

// Config selects and configures the runtime binary for one container.
type Config struct {
	// Binary is the runtime's name or path; empty means DefaultBinary.
	Binary string
	// Root is the runtime's state directory (--root).
	Root string
	// Log is the file the runtime writes its JSON log to (--log); the
	// adapter reads the last error from it when a command fails.
	Log string
	// SystemdCgroup makes the runtime use systemd cgroup paths.
	SystemdCgroup bool
	// Debug turns on the runtime's debug logging.
	Debug bool
}

// Runtime runs commands of one OCI runtime binary. It is safe for concurrent
// use; it holds no state besides its configuration.
type Runtime struct {
	cfg Config
	rc  *runc.Runc
	// mon is the exit monitor: every command runs under its Hold.
	mon exits.Monitor
	// launchLimit and controlLimit are launchTimeout and controlTimeout;
	// tests shorten them.
	launchLimit, controlLimit time.Duration
}

// New returns a Runtime for cfg. mon must not be nil: every command runs
// under its Hold, and the register func of Create, Exec and Restore is
// called before that Hold is released.
func New(cfg Config, mon exits.Monitor) *Runtime {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	rc := &runc.Runc{
		Command:       cfg.Binary,
		Root:          cfg.Root,
		Log:           cfg.Log,
		LogFormat:     runc.JSON,
		SystemdCgroup: cfg.SystemdCgroup,
		Debug:         cfg.Debug,
		Setpgid:       true,
	}
	return &Runtime{cfg: cfg, rc: rc, mon: mon, launchLimit: launchTimeout, controlLimit: controlTimeout}
}

// Binary returns the runtime binary this Runtime runs.
func (r *Runtime) Binary() string { return r.cfg.Binary }

// Root returns the runtime's state directory.
func (r *Runtime) Root() string { return r.cfg.Root }

// nullIO is the stdio of a process without any: /dev/null, read-write, for
// all three streams (go-runc's NullIO opens it read-only, so writes to
// stdout fail with EBADF). Giving it explicitly matters: with no stdio at
// all, go-runc captures the runtime's output through a pipe that the
// container inherits, and the command does not return until the container
// exits.
type nullIO struct {
	devNull *os.File
}

func newNullIO() (*nullIO, error) {
	f, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("runtime: /dev/null stdio: %w", err)
	}
	return &nullIO{devNull: f}, nil
}

// Stdin, Stdout and Stderr return nil: the shim keeps no end of /dev/null.
func (n *nullIO) Stdin() io.WriteCloser { return nil }

// Stdout returns nil; see Stdin.
func (n *nullIO) Stdout() io.ReadCloser { return nil }

// Stderr returns nil; see Stdin.
func (n *nullIO) Stderr() io.ReadCloser { return nil }

// Set gives /dev/null to the runtime command for all three streams.
func (n *nullIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = n.devNull, n.devNull, n.devNull
}

// Close closes the shim's /dev/null.
func (n *nullIO) Close() error { return n.devNull.Close() }

// CreateOpts are the options of Create.
type CreateOpts struct {
	// IO connects the container's stdio; nil means /dev/null.
	IO runc.IO
	// ConsoleSocket receives the pty master when the process has a terminal.
	ConsoleSocket runc.ConsoleSocket
	// PidFile is where the runtime writes the container's pid. Required.
	PidFile      string
	NoPivot      bool
	NoNewKeyring bool
}

// Create runs `<runtime> create` for the bundle, reads the container's pid
// from opts.PidFile and calls register(pid) before the monitor's Hold is
// released. When register fails, Create returns its error; the caller owns
// the cleanup (a forced delete).
func (r *Runtime) Create(ctx context.Context, id, bundle string, opts CreateOpts, register func(pid int) error) (int, error) {
	return r.launch(ctx, "create", id, opts.IO, opts.PidFile, register, func(ctx context.Context, io runc.IO) error {
		return r.rc.Create(ctx, id, bundle, &runc.CreateOpts{
			IO:            io,
			ConsoleSocket: opts.ConsoleSocket,
			PidFile:       opts.PidFile,
			NoPivot:       opts.NoPivot,
			NoNewKeyring:  opts.NoNewKeyring,
		})
	})
}

// launch runs a runtime command that leaves a process behind (create, exec,
// restore) under a Hold, with /dev/null for a nil io, then reads the new
// process's pid from pidFile and calls register(pid) before the Hold is
// released.
func (r *Runtime) launch(ctx context.Context, op, id string, io runc.IO, pidFile string, register func(pid int) error, run func(context.Context, runc.IO) error) (int, error) {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := detached(ctx, r.launchLimit)
	defer cancel()
	mark := r.logMark()
	if io == nil {
		null, err := newNullIO()
		if err != nil {
			return 0, err
		}
		defer null.Close()
		io = null
	}
	if err := run(ctx, io); err != nil {
		return 0, r.fail(ctx, op, id, mark, err)
	}
	pid, err := ReadPidFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("runtime %s %s: %w", op, id, err)
	}
	if err := register(pid); err != nil {
		return pid, err
	}
	return pid, nil
}

// ExecOpts are the options of Exec.
type ExecOpts struct {
	// IO connects the process's stdio; nil means /dev/null.
	IO            runc.IO
	ConsoleSocket runc.ConsoleSocket
	// PidFile is where the runtime writes the process's pid. Required.
	PidFile string
}

// Exec runs `<runtime> exec --detach` with the process spec and registers the
// new process's pid like Create does.
func (r *Runtime) Exec(ctx context.Context, id string, spec specs.Process, opts ExecOpts, register func(pid int) error) (int, error) {
	return r.launch(ctx, "exec", id, opts.IO, opts.PidFile, register, func(ctx context.Context, io runc.IO) error {
		return r.rc.Exec(ctx, id, spec, &runc.ExecOpts{
			IO:            io,
			ConsoleSocket: opts.ConsoleSocket,
			PidFile:       opts.PidFile,
			Detach:        true,
		})
	})
}

// Start runs `<runtime> start`.
func (r *Runtime) Start(ctx context.Context, id string) error {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := detached(ctx, r.launchLimit)
	defer cancel()
	mark := r.logMark()
	return r.fail(ctx, "start", id, mark, r.rc.Start(ctx, id))
}

// Kill runs `<runtime> kill [--all] <id> <signal>`.
func (r *Runtime) Kill(ctx context.Context, id string, signal uint32, all bool) error {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := r.control(ctx)
	defer cancel()
	mark := r.logMark()
	return r.fail(ctx, "kill", id, mark, r.rc.Kill(ctx, id, int(signal), &runc.KillOpts{All: all}))
}

// Delete runs `<runtime> delete [--force] <id>`. A container the runtime no
// longer knows is not an error: deleting is idempotent.
func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := r.control(ctx)
	defer cancel()
	mark := r.logMark()
	err := r.fail(ctx, "delete", id, mark, r.rc.Delete(ctx, id, &runc.DeleteOpts{Force: force}))
	if IsNotFound(err) {
		return nil
	}
	return err
}

// Ps lists the pids of the container's processes.
func (r *Runtime) Ps(ctx context.Context, id string) ([]int, error) {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := r.control(ctx)
	defer cancel()
	mark := r.logMark()
	pids, err := r.rc.Ps(ctx, id)
	return pids, r.fail(ctx, "ps", id, mark, err)
}

// logMark returns the current size of the runtime's log, so that fail reads
// only what the command being run appended.
func (r *Runtime) logMark() int64 {
	if r.cfg.Log == "" {
		return 0
	}
	st, err := os.Stat(r.cfg.Log)
	if err != nil {
		return 0
	}
	return st.Size()
}

// fail turns a go-runc error into an *Error carrying the runtime's own
// message: the last error entry of the JSON log, else the command output that
// go-runc put into err. It returns nil for a nil err.
func (r *Runtime) fail(ctx context.Context, op, id string, mark int64, err error) error {
	if err == nil {
		return nil
	}
	msg := lastLogError(r.cfg.Log, mark)
	if msg == "" {
		msg = outputOf(err)
	}
	return &Error{Op: op, ID: id, Message: msg, Err: err, TimedOut: errors.Is(ctx.Err(), context.DeadlineExceeded)}
}

// maxReplyMargin bounds how long before the request's deadline a control
// command ends: a tenth of the time left, at most this.
const maxReplyMargin = time.Second

// control returns the context of a control command: detached from ctx's
// cancellation, with a deadline of controlLimit or, if the request's own
// deadline comes earlier, a tenth of the time left (at most
// maxReplyMargin) before it, which leaves the shim time to answer.
func (r *Runtime) control(ctx context.Context) (context.Context, context.CancelFunc) {
	limit := r.controlLimit
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		left -= min(left/10, maxReplyMargin)
		limit = max(min(limit, left), 0)
	}
	return detached(ctx, limit)
}

// detached returns a context that keeps ctx's values but not its
// cancellation, with its own deadline.
func detached(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// ReadPidFile reads a pid written by an OCI runtime.
func ReadPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds %q, not a pid", filepath.Base(path), data)
	}
	return pid, nil
}

// logTail is how much of the end of the runtime's log lastLogError reads.
const logTail = 64 << 10

// lastLogError returns the message of the last error-level entry written to
// the runtime's JSON log at or after offset from, or "". Truncating the log is
// not needed: runc and crun log only warnings and errors unless Debug is set.
func lastLogError(path string, from int64) string {
	if path == "" {
		return ""
	}
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	from = max(from, st.Size()-logTail)
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return ""
	}
	// Bounded too while the runtime still appends.
	data, err := io.ReadAll(io.LimitReader(f, logTail))
	if err != nil {
		return ""
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(lines[i], &entry) == nil && (entry.Level == "error" || entry.Level == "fatal") {
			return entry.Msg
		}
	}
	return ""
}

// outputOf extracts the runtime's output from a go-runc error, which reads
// "exit status N: <output>" or "<binary> did not terminate successfully:
// exit status N: <output>".
func outputOf(err error) string {
	s := err.Error()
	if i := strings.Index(s, "exit status "); i >= 0 {
		if j := strings.Index(s[i:], ": "); j >= 0 {
			return strings.TrimSpace(s[i+j+2:])
		}
		return ""
	}
	return strings.TrimSpace(s)
}

// Pause runs `<runtime> pause`.
func (r *Runtime) Pause(ctx context.Context, id string) error {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := r.control(ctx)
	defer cancel()
	mark := r.logMark()
	return r.fail(ctx, "pause", id, mark, r.rc.Pause(ctx, id))
}

// Resume runs `<runtime> resume`.
func (r *Runtime) Resume(ctx context.Context, id string) error {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := r.control(ctx)
	defer cancel()
	mark := r.logMark()
	return r.fail(ctx, "resume", id, mark, r.rc.Resume(ctx, id))
}

// Update runs `<runtime> update --resources -` with the new resources.
func (r *Runtime) Update(ctx context.Context, id string, res *specs.LinuxResources) error {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := r.control(ctx)
	defer cancel()
	mark := r.logMark()
	return r.fail(ctx, "update", id, mark, r.rc.Update(ctx, id, res))
}

// CheckpointOpts are the options of Checkpoint and Restore, as
// containerd.runc.v1.CheckpointOptions carries them.
type CheckpointOpts struct {
	// Exit stops the container after the checkpoint; otherwise it keeps
	// running (--leave-running).
	Exit                bool
	OpenTCP             bool
	ExternalUnixSockets bool
	Terminal            bool
	FileLocks           bool
	EmptyNamespaces     []string
	// CgroupsMode is soft, full or strict; empty is the runtime's default.
	CgroupsMode string
	ImagePath   string
	WorkPath    string
}

func (o CheckpointOpts) runc() runc.CheckpointOpts {
	return runc.CheckpointOpts{
		ImagePath:                o.ImagePath,
		WorkDir:                  o.WorkPath,
		AllowOpenTCP:             o.OpenTCP,
		AllowExternalUnixSockets: o.ExternalUnixSockets,
		AllowTerminal:            o.Terminal,
		FileLocks:                o.FileLocks,
		Cgroups:                  runc.CgroupMode(o.CgroupsMode),
		EmptyNamespaces:          o.EmptyNamespaces,
	}
}

// Checkpoint runs `<runtime> checkpoint` (CRIU) into opts.ImagePath.
func (r *Runtime) Checkpoint(ctx context.Context, id string, opts CheckpointOpts) error {
	release := r.mon.Hold()
	defer release()
	ctx, cancel := detached(ctx, r.launchLimit)
	defer cancel()
	mark := r.logMark()
	var actions []runc.CheckpointAction
	if !opts.Exit {
		actions = append(actions, runc.LeaveRunning)
	}
	co := opts.runc()
	return r.fail(ctx, "checkpoint", id, mark, r.rc.Checkpoint(ctx, id, &co, actions...))
}

// Restore runs `<runtime> restore --detach` from opts.ImagePath and
// registers the restored process's pid like Create does.
func (r *Runtime) Restore(ctx context.Context, id, bundle string, opts CheckpointOpts, create CreateOpts, register func(pid int) error) (int, error) {
	return r.launch(ctx, "restore", id, create.IO, create.PidFile, register, func(ctx context.Context, io runc.IO) error {
		_, err := r.rc.Restore(ctx, id, bundle, &runc.RestoreOpts{
			CheckpointOpts: opts.runc(),
			IO:             io,
			Detach:         true,
			PidFile:        create.PidFile,
			NoPivot:        create.NoPivot,
			ConsoleSocket:  create.ConsoleSocket,
		})
		return err
	})
}
