// Package container holds Tether's model of a container and its processes.
//
// A Container owns its init Process, its rootfs mounts and its runtime. Its
// lifecycle is the transition table in state.go; every operation checks the
// table before it runs the runtime and applies it afterwards, so that a
// refusal is a typed *TransitionError and never a runtime round trip.
//
// Locking: each Process has one mutex that guards its state, pid and exit.
// No mutex is held across a runtime call, an RPC or a publish; callers may
// call Status at any time and get an answer without waiting on the runtime.
//
// Events: each Process has an events.Outbox. Create publishes TaskCreate,
// Start TaskStart (after the runtime's start, with the exit held back until
// then), onExit TaskExit, Delete TaskDelete.
package container

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/internal/cgroups"
	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/runtime"
	"github.com/tether-shim/tether/internal/stdio"
)

// deleteWaitTimeout bounds how long Delete of a created container waits for
// the killed init's exit to be collected.
const deleteWaitTimeout = 10 * time.Second

// Deps are the shim-wide services a container uses.
type Deps struct {
	// Monitor watches and signals the container's processes.
	Monitor exits.Monitor
	Events  events.Sink
	Logger  *slog.Logger
	// Namespace is the containerd namespace, given to logging binaries.
	Namespace string
	// Busy, if not nil, is given to each process's stdio (stdio.Options).
	Busy func() (end func())
}

// Config describes a container to create.
type Config struct {
	ID     string
	Bundle string
	// Spec is what LoadSpec read of the bundle's config.json.
	Spec   Spec
	Rootfs []Mount
	Stdio  stdio.Config
	// Runtime runs the OCI runtime for this container.
	Runtime      *runtime.Runtime
	NoPivot      bool
	NoNewKeyring bool
	// IoUID and IoGID own the container's ends of its stdio pipes.
	IoUID, IoGID int
	// Restore, if set, makes the container a restore from a checkpoint:
	// Create prepares it and Start runs the runtime's restore (as
	// containerd's runc shim does), so it has no pid before Start.
	Restore *runtime.CheckpointOpts
}

// Container is one OCI container managed by the shim.
type Container struct {
	id     string
	bundle string
	rt     *runtime.Runtime
	init   *Process
	deps   Deps
	// sharedPidNS is set when the container has no pid namespace of its
	// own: its processes do not die with the init, so the init's exit
	// kills them.
	sharedPidNS bool

	mu sync.Mutex
	// execs maps exec ids to exec processes; guarded by mu.
	execs map[string]*Process
	// runningExecs counts execs whose start began and whose exit is not
	// yet published; execsIdle is closed when it drops to zero. Both are
	// guarded by mu.
	runningExecs int
	execsIdle    chan struct{}
	// ioUID and ioGID own the stdio pipes of every process.
	ioUID, ioGID int
	// cgroup is the init's cgroup, nil if it could not be found; oom
	// watches it. Both are set once the init exists; guarded by mu.
	cgroup *cgroups.Cgroup
	oom    *cgroups.OOMWatcher
	// initExited is set when the init's exit is being published; an OOM
	// watch that comes later is closed at once. Guarded by mu.
	initExited bool
	// restore is set for a restore from a checkpoint; createOpts keeps the
	// runtime options prepared at Create for the restore at Start.
	restore    *runtime.CheckpointOpts
	createOpts runtime.CreateOpts
}

// Create mounts the rootfs, opens the stdio, runs the runtime's create and
// starts watching the init process. On error nothing is left behind: no
// mount, no runtime state, no open fifo.
func Create(ctx context.Context, cfg Config, deps Deps) (_ *Container, retErr error) {
	if err := ValidateID("container", cfg.ID); err != nil {
		return nil, err
	}
	if err := cfg.Stdio.Validate(); err != nil {
		return nil, err
	}
	if err := validateMounts(cfg.Rootfs); err != nil {
		return nil, err
	}
	c := &Container{
		id:      cfg.ID,
		bundle:  cfg.Bundle,
		rt:      cfg.Runtime,
		deps:    deps,
		init:    newProcess(cfg.ID, "", cfg.Stdio, deps.Events, deps.Logger),
		execs:   make(map[string]*Process),
		ioUID:   cfg.IoUID,
		ioGID:   cfg.IoGID,
		restore: cfg.Restore,
	}
	c.init.beforeExitEvent = c.initExiting
	c.init.reaped = c.initReaped
	c.sharedPidNS = cfg.Spec.SharesPidNamespace
	if err := clearDeleted(cfg.Bundle); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	rootfs := filepath.Join(cfg.Bundle, "rootfs")
	if err := mountRootfs(rootfs, cfg.Rootfs); err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			if err := unmountAll(rootfs); err != nil {
				deps.Logger.Warn("create failed; unmount rootfs", "id", cfg.ID, "error", err)
			}
		}
	}()
	io, err := c.openIO(ctx, cfg.Stdio)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil && io.pipes != nil {
			io.pipes.Close()
		}
	}()
	c.init.mu.Lock()
	c.init.pipes = io.pipes
	c.init.mu.Unlock()
	opts := runtime.CreateOpts{
		IO:            io.runcIO(),
		ConsoleSocket: io.consoleSocket(),
		PidFile:       filepath.Join(cfg.Bundle, "init.pid"),
		NoPivot:       cfg.NoPivot,
		NoNewKeyring:  cfg.NoNewKeyring,
	}
	created := &eventsapi.TaskCreate{
		ContainerID: c.id,
		Bundle:      c.bundle,
		Rootfs:      mountsToAPI(cfg.Rootfs),
		IO: &eventsapi.TaskIO{
			Stdin:    cfg.Stdio.Stdin,
			Stdout:   cfg.Stdio.Stdout,
			Stderr:   cfg.Stdio.Stderr,
			Terminal: cfg.Stdio.Terminal,
		},
	}
	if c.restore != nil {
		// The runtime's restore runs at Start, with this IO.
		c.createOpts = opts
		created.Checkpoint = c.restore.ImagePath
		c.init.outbox.Send(events.TopicCreate, created)
		return c, nil
	}
	// The init can exit as soon as it is watched: its exit waits for
	// TaskCreate, and is dropped with it if the Create fails.
	c.init.outbox.ExpectStart()
	pid, err := c.rt.Create(ctx, c.id, c.bundle, opts, c.init.watchFunc(deps.Monitor))
	// fail abandons the init's events and, unless the runtime state is
	// another container's, deletes what the runtime left.
	fail := func(err error, deleteState bool) (*Container, error) {
		c.init.outbox.Abandon()
		if deleteState {
			if derr := c.rt.Delete(context.WithoutCancel(ctx), c.id, true); derr != nil {
				deps.Logger.Warn("create failed; runtime delete", "id", c.id, "error", derr)
			}
		}
		return nil, fmt.Errorf("create %s: %w", c.id, err)
	}
	if err != nil {
		// A duplicate id is another container's state and must not be
		// touched.
		return fail(err, pid != 0 || !errors.Is(err, errdefs.ErrAlreadyExists))
	}
	if io.pipes != nil {
		if err := io.pipes.StartOutput(); err != nil {
			return fail(err, true)
		}
	}
	created.Pid = uint32(pid)
	c.init.outbox.Started(events.TopicCreate, created)
	// After TaskCreate, so that a TaskOOM never precedes it; the init
	// cannot run before Start, and watchCgroup copes with an init that
	// already exited.
	c.watchCgroup(pid)
	return c, nil
}

// ID returns the container id.
func (c *Container) ID() string { return c.id }

// Bundle returns the bundle path.
func (c *Container) Bundle() string { return c.bundle }

// Init returns the init process.
func (c *Container) Init() *Process { return c.init }

// Process returns the process with execID ("" for init), or ErrNotFound.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.execs[execID]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("exec %q in container %q: %w", execID, c.id, errdefs.ErrNotFound)
}

// Start starts the init process (execID "") and publishes TaskStart, or an
// exec process and publishes TaskExecStarted. An exit that comes first is
// published after the start event.
func (c *Container) Start(ctx context.Context, execID string) (int, error) {
	p, err := c.Process(execID)
	if err != nil {
		return 0, err
	}
	if err := p.tryStart(); err != nil {
		return 0, err
	}
	if execID != "" {
		return c.startExec(ctx, p)
	}
	if err := p.check(OpStart); err != nil {
		return 0, fmt.Errorf("start %s: %w", c.id, err)
	}
	p.outbox.ExpectStart()
	if err := c.startInit(ctx); err != nil {
		p.outbox.AbortStart()
		return 0, fmt.Errorf("start %s: %w", c.id, err)
	}
	p.apply(OpStart)
	pid := p.Pid()
	p.outbox.Started(events.TopicStart, &eventsapi.TaskStart{ContainerID: c.id, Pid: uint32(pid)})
	return pid, nil
}

// Kill signals the init process (execID ""), with every process of the
// container, or an exec process. Killing a process that has exited is
// ErrNotFound, as containerd expects.
func (c *Container) Kill(ctx context.Context, execID string, signal uint32, all bool) error {
	if execID != "" {
		p, err := c.Process(execID)
		if err != nil {
			return err
		}
		return c.killExec(p, signal)
	}
	if err := c.init.check(OpKill); err != nil {
		return fmt.Errorf("kill %s: %w", c.id, err)
	}
	err := c.rt.Kill(ctx, c.id, signal, all)
	if err == nil {
		return nil
	}
	if runtime.IsNotFound(err) || errors.Is(err, errdefs.ErrFailedPrecondition) {
		// The runtime saw the container stop before we collected the exit.
		return fmt.Errorf("kill %s: process already finished (%s): %w", c.id, err.Error(), errdefs.ErrNotFound)
	}
	return fmt.Errorf("kill %s: %w", c.id, err)
}

// Delete deletes a created or stopped exec process, or (execID "") the
// container: the runtime's state, the stdio and the rootfs mounts, which
// publishes TaskDelete. It returns the process's final status.
func (c *Container) Delete(ctx context.Context, execID string) (Status, error) {
	if execID != "" {
		p, err := c.Process(execID)
		if err != nil {
			return Status{}, err
		}
		return c.deleteExec(p)
	}
	p := c.init
	if err := p.check(OpDelete); err != nil {
		return Status{}, fmt.Errorf("delete %s: %w", c.id, err)
	}
	if err := c.rt.Delete(ctx, c.id, true); err != nil {
		return Status{}, fmt.Errorf("delete %s: %w", c.id, err)
	}
	// A created container's init was just killed by the forced delete; wait
	// for its exit so that TaskExit comes before TaskDelete. A container
	// created from a checkpoint and never started has no init to wait for.
	if p.Pid() != 0 {
		select {
		case <-p.done:
		case <-time.After(deleteWaitTimeout):
			c.deps.Logger.Warn("delete: init exit not collected", "id", c.id, "pid", p.Pid())
		}
	}
	p.mu.Lock()
	pipes := p.pipes
	p.mu.Unlock()
	if pipes != nil {
		pipes.Close()
	}
	if err := UnmountRootfs(c.bundle); err != nil {
		return Status{}, fmt.Errorf("delete %s: %w", c.id, err)
	}
	if err := markDeleted(c.bundle); err != nil {
		// Only an optimisation is lost: `delete` then asks the runtime.
		c.deps.Logger.Warn("delete: mark bundle", "id", c.id, "error", err)
	}
	p.apply(OpDelete)
	st := p.Status()
	p.outbox.Send(events.TopicDelete, &eventsapi.TaskDelete{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         uint32(st.Pid),
		ExitStatus:  st.ExitStatus,
		ExitedAt:    timestamppb.New(st.ExitedAt),
	})
	return st, nil
}

// Pids lists the pids of the container's processes. Until the container
// is deleted the list is never empty once it has an init: after the init
// has exited it is the init's pid alone, without asking the runtime, and
// so it is while the exit is being collected (the runtime already finds
// no process then). containerd 2.x, when it restarts, deletes the task of
// any shim whose Pids is empty as a leaked shim, and with it the exit
// status that no client has collected yet.
func (c *Container) Pids(ctx context.Context) ([]int, error) {
	initPid := c.init.Pid()
	if c.init.Exited() {
		return []int{initPid}, nil
	}
	pids, err := c.rt.Ps(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("pids %s: %w", c.id, err)
	}
	if len(pids) == 0 && initPid != 0 {
		return []int{initPid}, nil
	}
	return pids, nil
}

// initExiting runs on the init's watcher goroutine before its TaskExit is
// published: it waits for the execs' exits to be published first (in a
// shared pid namespace, killLeftovers has already killed what the init left
// behind).
func (c *Container) initExiting() {
	c.mu.Lock()
	oom := c.oom
	c.initExited = true
	c.mu.Unlock()
	if oom != nil {
		// An OOM kill since initReaped's check (of a process the init
		// left behind in a shared pid namespace) is published before the
		// exit too.
		if oom.Check() {
			c.publishOOM()
		}
		if err := oom.Close(); err != nil {
			c.deps.Logger.Warn("close OOM watch", "id", c.id, "error", err)
		}
	}
	c.awaitExecs()
}

// initReaped runs on the init's watcher goroutine as soon as the init's exit
// is collected, before its output drains: it looks for the OOM kill that
// may have caused the exit while the cgroup most likely still exists
// (systemd removes an empty scope at once), and publishes TaskOOM, which
// thus precedes TaskExit. Where the cgroup is gone already, an OOM kill may
// be inferred (cgroups.OOMWatcher.CheckExit). Then, in a shared pid
// namespace, it kills what the init left behind.
func (c *Container) initReaped(e exits.Exit) {
	c.mu.Lock()
	oom := c.oom
	c.mu.Unlock()
	if oom != nil {
		if report, _ := oom.CheckExit(e.Status == 128+int(syscall.SIGKILL)); report {
			c.publishOOM()
		}
	}
	if c.sharedPidNS {
		c.killLeftovers()
	}
}

// killLeftovers runs on the init's watcher goroutine as soon as the init's
// exit is collected, in a shared pid namespace only: it kills every process
// the init left behind (no pid namespace goes away to kill them), before the
// init's output drains. They are what holds that output open: killed
// later, they would keep the drain waiting for its timeout, and the
// container's stop with it.
func (c *Container) killLeftovers() {
	if err := c.rt.Kill(context.Background(), c.id, uint32(syscall.SIGKILL), true); err != nil && !runtime.IsNotFound(err) {
		c.deps.Logger.Warn("kill the processes the init left", "id", c.id, "error", err)
	}
}

// procIO is the stdio of one process: pipes (or a pty) to the client's
// endpoints, or nil when it asked for none (the runtime then gives it
// /dev/null).
type procIO struct {
	pipes *stdio.IO
}

func (c *Container) openIO(ctx context.Context, cfg stdio.Config) (procIO, error) {
	if cfg.IsNull() {
		return procIO{}, nil
	}
	pipes, err := stdio.Open(ctx, cfg, stdio.Options{
		UID:       c.ioUID,
		GID:       c.ioGID,
		ID:        c.id,
		Namespace: c.deps.Namespace,
		Monitor:   c.deps.Monitor,
		Busy:      c.deps.Busy,
	})
	return procIO{pipes: pipes}, err
}

// runcIO is what the runtime command gets: an untyped nil for no stdio.
func (io procIO) runcIO() runc.IO {
	if io.pipes == nil {
		return nil
	}
	return io.pipes
}

// consoleSocket is the runtime's --console-socket, or an untyped nil.
func (io procIO) consoleSocket() runc.ConsoleSocket {
	if io.pipes == nil {
		return nil
	}
	return io.pipes.ConsoleSocket()
}

// ResizePty sets the terminal size of the process execID; for a process
// without a terminal it does nothing.
func (c *Container) ResizePty(execID string, width, height uint32) error {
	p, err := c.Process(execID)
	if err != nil {
		return err
	}
	p.mu.Lock()
	pipes := p.pipes
	p.mu.Unlock()
	// A process without a terminal has no size to set. containerd's shim
	// ignores the request, and clients send it regardless (ctr and CRI
	// attach resize whatever they attach to).
	if pipes == nil || !p.stdioCfg.Terminal {
		return nil
	}
	return pipes.Resize(width, height)
}

// startInit runs the runtime's start, or its restore for a container created
// from a checkpoint.
func (c *Container) startInit(ctx context.Context) error {
	if c.restore == nil {
		return c.rt.Start(ctx, c.id)
	}
	_, err := c.rt.Restore(ctx, c.id, c.bundle, *c.restore, c.createOpts, c.init.watchFunc(c.deps.Monitor))
	if err != nil {
		return err
	}
	c.watchCgroup(c.init.Pid())
	c.init.mu.Lock()
	pipes := c.init.pipes
	c.init.mu.Unlock()
	if pipes != nil {
		return pipes.StartOutput()
	}
	return nil
}

// watchCgroup finds the init's cgroup and watches it for OOM kills, which
// are published as TaskOOM. After a create the watch is in place before
// the init runs; after a restore it starts once the restored init runs, so
// an OOM kill in between is missed, and if the init already exited the
// watch is closed at once. A cgroup that cannot be found costs the
// container its stats and OOM events, not its life: it is logged at Warn.
func (c *Container) watchCgroup(pid int) {
	cg, err := cgroups.Load(pid)
	if err != nil {
		c.deps.Logger.Warn("no cgroup: stats and OOM events unavailable", "id", c.id, "pid", pid, "error", err)
		return
	}
	oom, err := cg.WatchOOM(c.publishOOM, c.deps.Logger.With("id", c.id))
	if err != nil {
		c.deps.Logger.Warn("no OOM watch", "id", c.id, "error", err)
	}
	c.mu.Lock()
	exited := c.initExited
	c.cgroup = cg
	if !exited {
		c.oom = oom
	}
	c.mu.Unlock()
	if exited && oom != nil {
		if err := oom.Close(); err != nil {
			c.deps.Logger.Warn("close OOM watch", "id", c.id, "error", err)
		}
	}
}

func (c *Container) publishOOM() {
	c.init.outbox.Send(events.TopicOOM, &eventsapi.TaskOOM{ContainerID: c.id})
}

// Stats returns the container's cgroup metrics.
func (c *Container) Stats(ctx context.Context) (*anypb.Any, error) {
	c.mu.Lock()
	cg := c.cgroup
	c.mu.Unlock()
	if cg == nil {
		return nil, fmt.Errorf("stats %s: no cgroup: %w", c.id, errdefs.ErrNotFound)
	}
	return cg.Stats(ctx)
}
