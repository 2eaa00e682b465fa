// Package container holds Tether's model of a container and its processes.
//
// A Container owns its init Process, its exec Processes, its rootfs mounts
// and its runtime. A Process's operations (Start, Kill, Delete, Resize,
// CloseStdin) are its methods; what differs between an init and an exec is
// its kind (initKind, execKind), and nothing outside the kinds tells them
// apart. The lifecycle is a transition table per kind (state.go); every
// operation takes its transition before it runs the runtime and settles it
// afterwards, so that a refusal is a typed *TransitionError and never a
// runtime round trip, and a Start and a Delete cannot both pass.
//
// Locking: Container.mu guards the exec table, the exec exit barrier and
// the cgroup; Process.mu guards a process's state, pid, exit and stdio.
// Lock order: Container.mu → Process.mu. No mutex is held across a runtime
// call, an RPC or a publish; callers may call Status at any time and get an
// answer without waiting on the runtime.
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
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/bundle"
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

// Config is a parsed and validated request to create a container: what
// the task service decoded from a CreateTaskRequest. Validate checks it;
// Create trusts it.
type Config struct {
	ID     string
	Bundle bundle.Bundle
	// Spec is what Bundle.Spec read of the bundle's config.json.
	Spec   bundle.Spec
	Rootfs []Mount
	Stdio  stdio.Config
	// Runtime configures the OCI runtime of this container; Create records
	// it in the bundle (Bundle.RuntimeConfig) for `delete`.
	Runtime      runtime.Config
	NoPivot      bool
	NoNewKeyring bool
	// IoUID and IoGID own the container's ends of its stdio pipes.
	IoUID, IoGID int
	// Restore, if set, makes the container a restore from a checkpoint:
	// Create prepares it and Start runs the runtime's restore (as
	// containerd's runc shim does), so it has no pid before Start.
	Restore *runtime.CheckpointOpts
}

// Validate checks what Create trusts: the container id, the stdio paths
// and the rootfs mounts. Errors are errdefs.ErrInvalidArgument.
func (cfg Config) Validate() error {
	if err := ValidateID("container", cfg.ID); err != nil {
		return err
	}
	if err := cfg.Stdio.Validate(); err != nil {
		return err
	}
	return validateMounts(cfg.Rootfs)
}

// Container is one OCI container managed by the shim.
type Container struct {
	// The fields above mu are set by Create before the container is
	// shared and never change.
	id     string
	bundle bundle.Bundle
	rt     *runtime.Runtime
	init   *Process
	deps   Deps
	// sharedPidNS is set when the container has no pid namespace of its
	// own: its processes do not die with the init, so the init's exit
	// kills them.
	sharedPidNS bool
	// ioUID and ioGID own the stdio pipes of every process.
	ioUID, ioGID int
	// restore is set for a restore from a checkpoint; createOpts keeps the
	// runtime options prepared at Create for the restore at Start.
	restore    *runtime.CheckpointOpts
	createOpts runtime.CreateOpts

	// mu guards the fields below it. Lock order: Container.mu →
	// Process.mu; never held across a runtime call or a publish.
	mu sync.Mutex
	// execs maps exec ids to exec processes.
	execs map[string]*Process
	// runningExecs counts execs whose start began and whose exit is not
	// yet published; execsIdle is closed when it drops to zero. The
	// init's exit waits for it (awaitExecs).
	runningExecs int
	execsIdle    chan struct{}
	// cgroup is the init's cgroup, nil if it could not be found; oom
	// watches it. Both are set once the init exists.
	cgroup *cgroups.Cgroup
	oom    *cgroups.OOMWatcher
}

// undo is the cleanup of a Create that failed: the steps done so far, in
// reverse.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }

func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// Create creates the container of a validated Config (see Config.Validate)
// whose id the caller reserved: it records the runtime configuration in the
// bundle, mounts the rootfs, opens the stdio, runs the runtime's create and
// starts watching the init process, then publishes TaskCreate. On error
// nothing is left behind: no file it wrote in the bundle, no mount, no
// runtime state, no open fifo, no event.
func Create(ctx context.Context, cfg Config, deps Deps) (_ *Container, retErr error) {
	c := &Container{
		id:          cfg.ID,
		bundle:      cfg.Bundle,
		rt:          runtime.New(cfg.Runtime, deps.Monitor),
		deps:        deps,
		execs:       make(map[string]*Process),
		ioUID:       cfg.IoUID,
		ioGID:       cfg.IoGID,
		restore:     cfg.Restore,
		sharedPidNS: cfg.Spec.SharesPidNamespace,
	}
	c.init = newProcess(cfg.ID, cfg.ID, initKind{c}, cfg.Stdio, deps.Events, deps.Logger.With("id", cfg.ID))
	var cleanup undo
	defer func() {
		if retErr != nil {
			cleanup.run()
		}
	}()
	warn := func(what string, err error) {
		deps.Logger.Warn("create failed; "+what, "id", cfg.ID, "error", err)
	}

	if err := cfg.Bundle.ClearDeleted(); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	if err := cfg.Runtime.Save(cfg.Bundle.RuntimeConfig()); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.ID, err)
	}
	cleanup.push(func() {
		if err := cfg.Bundle.RemoveRuntimeConfig(); err != nil {
			warn("remove runtime config", err)
		}
	})

	rootfs := cfg.Bundle.Rootfs()
	if err := mountRootfs(rootfs, cfg.Rootfs); err != nil {
		return nil, err
	}
	cleanup.push(func() {
		if err := unmountAll(rootfs); err != nil {
			warn("unmount rootfs", err)
		}
	})

	io, err := c.openIO(ctx, cfg.Stdio)
	if err != nil {
		return nil, err
	}
	if pipes := io.pipes; pipes != nil {
		cleanup.push(func() { pipes.Close() })
	}
	c.init.setPipes(io.pipes)

	opts := runtime.CreateOpts{
		IO:            io.runcIO(),
		ConsoleSocket: io.consoleSocket(),
		PidFile:       cfg.Bundle.InitPid(),
		NoPivot:       cfg.NoPivot,
		NoNewKeyring:  cfg.NoNewKeyring,
	}
	created := &eventsapi.TaskCreate{
		ContainerID: c.id,
		Bundle:      c.bundle.Dir(),
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
	pid, err := c.rt.Create(ctx, c.id, c.bundle.Dir(), opts, c.init.watchFunc(deps.Monitor))
	// A duplicate id is another container's runtime state and must not be
	// touched; anything else the runtime left is deleted.
	deleteState := err == nil || pid != 0 || !errors.Is(err, errdefs.ErrAlreadyExists)
	cleanup.push(func() {
		c.init.outbox.Abandon()
		if deleteState {
			if err := c.rt.Delete(context.WithoutCancel(ctx), c.id, true); err != nil {
				warn("runtime delete", err)
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", c.id, err)
	}
	if io.pipes != nil {
		if err := io.pipes.StartOutput(); err != nil {
			return nil, fmt.Errorf("create %s: %w", c.id, err)
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
func (c *Container) Bundle() string { return c.bundle.Dir() }

// Init returns the init process.
func (c *Container) Init() *Process { return c.init }

// Process returns the process that a request's exec id names: the init for
// "", else the exec process execID, or ErrNotFound. An exec id that is not
// a valid id is ErrInvalidArgument.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" {
		return c.init, nil
	}
	if err := ValidateID("exec", execID); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.execs[execID]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("exec %q in container %q: %w", execID, c.id, errdefs.ErrNotFound)
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
	pipes, err := stdio.Open(ctx, cfg, c.stdioOptions())
	return procIO{pipes: pipes}, err
}

// stdioOptions are what the stdio of every process of c gets.
func (c *Container) stdioOptions() stdio.Options {
	return stdio.Options{
		UID:       c.ioUID,
		GID:       c.ioGID,
		ID:        c.id,
		Namespace: c.deps.Namespace,
		Monitor:   c.deps.Monitor,
		Busy:      c.deps.Busy,
	}
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

// startInit runs the runtime's start, or its restore for a container created
// from a checkpoint.
func (c *Container) startInit(ctx context.Context) error {
	if c.restore == nil {
		return c.rt.Start(ctx, c.id)
	}
	_, err := c.rt.Restore(ctx, c.id, c.bundle.Dir(), *c.restore, c.createOpts, c.init.watchFunc(c.deps.Monitor))
	if err != nil {
		return err
	}
	c.watchCgroup(c.init.Pid())
	if pipes := c.init.getPipes(); pipes != nil {
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
	c.init.mu.Lock()
	exited := c.init.exitRecordedLocked()
	c.init.mu.Unlock()
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
