package container

import (
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/oserr"
	"github.com/tether-shim/tether/internal/runtime"
	"github.com/tether-shim/tether/internal/stdio"
)

// execDrainTimeout bounds how long the init's exit waits for the exits of the
// container's exec processes to be published first; after it, the remaining
// execs are killed (they share the init's pid namespace with the host or a
// pod) and waited for once more.
const execDrainTimeout = 2 * time.Second

// execKind is the kind of an exec process: the runtime runs it in the
// init's container, the shim signals it through its pidfd, and deleting it
// only forgets it.
type execKind struct {
	c      *Container
	execID string
	spec   specs.Process
	// startResolved is closed by start once the start event was published
	// or abandoned; exited waits for it before it counts the exec as done,
	// so that the init's exit cannot overtake a held exec exit.
	startResolved chan struct{}
}

func (*execKind) lifecycle() *lifecycle { return &execLifecycle }

// Exec adds an exec process to the container, in the created state; Start
// runs it. The spec is a JSON runtime-spec Process. A duplicate id is
// ErrAlreadyExists; a container whose init is not running is
// ErrFailedPrecondition, except while the init is Exiting (its exit is
// recorded, its TaskExit not yet handed on): as with containerd's shim, the
// exec is added and its Start is refused. It publishes TaskExecAdded.
func (c *Container) Exec(ctx context.Context, execID string, specJSON []byte, cfg stdio.Config) error {
	if err := ValidateID("exec", execID); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	var spec specs.Process
	if err := json.Unmarshal(specJSON, &spec); err != nil {
		return fmt.Errorf("exec %s: process spec: %v: %w", execID, err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Args) == 0 {
		return fmt.Errorf("exec %s: process spec has no args: %w", execID, errdefs.ErrInvalidArgument)
	}
	spec.Terminal = cfg.Terminal
	// A client that raced the init's death gets its error from the exec's
	// Start, as from containerd's shim, rather than from the create,
	// which some clients do not expect to fail there.
	if err := c.init.transition(OpExec); err != nil {
		return fmt.Errorf("exec %s in %s: %w", execID, c.id, err)
	}
	k := &execKind{c: c, execID: execID, spec: spec, startResolved: make(chan struct{})}
	p := newProcess(c.id, execID, k, cfg, c.deps.Events, c.deps.Logger.With("id", c.id, "exec", execID))
	c.mu.Lock()
	if _, ok := c.execs[execID]; ok {
		c.mu.Unlock()
		return fmt.Errorf("exec %q in %q: %w", execID, c.id, errdefs.ErrAlreadyExists)
	}
	c.execs[execID] = p
	c.mu.Unlock()
	p.outbox.Send(events.TopicExecAdded, &eventsapi.TaskExecAdded{ContainerID: c.id, ExecID: execID})
	return nil
}

// start runs an added exec process and publishes TaskExecStarted. The exec
// counts as running from before the runtime call until its exit has been
// published, so that the init's exit waits for it.
func (k *execKind) start(ctx context.Context, p *Process) (int, error) {
	c := k.c
	if err := p.transition(OpStart); err != nil {
		return 0, fmt.Errorf("start exec %s: %w", k.execID, err)
	}
	defer close(k.startResolved)
	// Counted before the init is asked: an init whose exit is recorded
	// after this waits for the exec; one recorded before refuses it.
	c.execStarting()
	if err := c.init.transition(OpExecStart); err != nil {
		p.settle(OpStartFailed)
		c.execExited()
		return 0, fmt.Errorf("start exec %s in %s: %w", k.execID, c.id, err)
	}
	io, err := c.openIO(ctx, p.stdioCfg)
	if err != nil {
		p.settle(OpStartFailed)
		c.execExited()
		return 0, err
	}
	p.setPipes(io.pipes)
	p.outbox.ExpectStart()
	pid, err := c.rt.Exec(ctx, c.id, k.spec, runtime.ExecOpts{
		IO:            io.runcIO(),
		ConsoleSocket: io.consoleSocket(),
		PidFile:       c.bundle.ExecPid(k.execID),
	}, p.watchFunc(c.deps.Monitor))
	if err != nil {
		// Exec returns an error only when nothing watches the process, so
		// no exit will come: it no longer counts as running.
		p.outbox.AbortStart()
		p.settle(OpStartFailed)
		c.execExited()
		if io.pipes != nil {
			io.pipes.Close()
		}
		return 0, fmt.Errorf("start exec %s: %w", k.execID, err)
	}
	if io.pipes != nil {
		if err := io.pipes.StartOutput(); err != nil {
			c.deps.Logger.Warn("exec: no terminal from the runtime", "id", c.id, "exec", k.execID, "error", err)
		}
	}
	p.settle(OpStarted)
	p.outbox.Started(events.TopicExecStarted, &eventsapi.TaskExecStarted{ContainerID: c.id, ExecID: k.execID, Pid: uint32(pid)})
	return pid, nil
}

// kill signals a running exec process through its pidfd.
func (k *execKind) kill(_ context.Context, p *Process, signal uint32, _ bool) error {
	if err := p.transition(OpKill); err != nil {
		return fmt.Errorf("kill exec %s: %w", k.execID, err)
	}
	if err := k.c.deps.Monitor.Signal(p.Pid(), syscall.Signal(signal)); err != nil {
		return fmt.Errorf("kill exec %s: %w", k.execID, signalErrorClass(err))
	}
	return nil
}

// delete forgets a created or stopped exec process.
func (k *execKind) delete(_ context.Context, p *Process) (Status, error) {
	p.mu.Lock()
	exiting := p.state == Exiting
	err := p.transitionLocked(OpDelete)
	p.mu.Unlock()
	if err != nil {
		return Status{}, fmt.Errorf("delete exec %s: %w", k.execID, err)
	}
	// An exec deleted while Exiting has its exit collected but TaskExit
	// not yet handed on: wait for it (it is under way, so the wait is
	// short), so that its id is not free for a new exec whose
	// TaskExecAdded would come before the old TaskExit.
	if exiting {
		select {
		case <-p.done:
		case <-time.After(deleteWaitTimeout):
			k.c.deps.Logger.Warn("delete exec: exit not handed on", "id", k.c.id, "exec", k.execID)
		}
	}
	if pipes := p.getPipes(); pipes != nil {
		pipes.Close()
	}
	k.c.mu.Lock()
	delete(k.c.execs, k.execID)
	k.c.mu.Unlock()
	return p.Status(), nil
}

func (*execKind) reaped(exits.Exit) {}

func (*execKind) exiting() {}

// exited counts the exec as done once its start is resolved (its start
// event and then its exit are published).
func (k *execKind) exited() {
	<-k.startResolved
	k.c.execExited()
}

// execStarting counts one more running exec.
func (c *Container) execStarting() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runningExecs == 0 {
		c.execsIdle = make(chan struct{})
	}
	c.runningExecs++
}

// execExited counts one running exec less, after its exit was published.
func (c *Container) execExited() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runningExecs--
	if c.runningExecs == 0 {
		close(c.execsIdle)
	}
}

// execsIdleChan returns a channel closed once no exec is running, or nil
// if none is.
func (c *Container) execsIdleChan() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runningExecs == 0 {
		return nil
	}
	return c.execsIdle
}

// awaitExecs is the init's exit barrier: every exec's TaskExit must be
// published before the init's. Execs normally die with the init (its pid
// namespace goes away); if they have not after execDrainTimeout, they are
// killed and waited for once more.
func (c *Container) awaitExecs() {
	idle := c.execsIdleChan()
	if idle == nil {
		return
	}
	select {
	case <-idle:
		return
	case <-time.After(execDrainTimeout):
	}
	c.deps.Logger.Warn("execs outlived the init process; killing them", "id", c.id)
	c.mu.Lock()
	procs := make([]*Process, 0, len(c.execs))
	for _, p := range c.execs {
		procs = append(procs, p)
	}
	c.mu.Unlock()
	for _, p := range procs {
		if pid := p.Pid(); !p.Exited() && pid != 0 {
			_ = c.deps.Monitor.Signal(pid, syscall.SIGKILL)
		}
	}
	select {
	case <-idle:
	case <-time.After(execDrainTimeout):
		c.deps.Logger.Warn("exec exits still missing; publishing the init exit", "id", c.id)
	}
}

// signalErrorClass adds the errdefs class (oserr.Class) of a failed signal
// when it is NotFound (the process is gone) or InvalidArgument (a signal
// number the kernel refuses); anything else keeps only its own cause and is
// Unknown to the client, as containerd's runc shim reports it.
func signalErrorClass(err error) error {
	switch class := oserr.Class(err); class {
	case errdefs.ErrNotFound, errdefs.ErrInvalidArgument:
		return fmt.Errorf("%w: %w", err, class)
	}
	return err
}

// ExecIDs maps the pids of the container's running exec processes to their
// exec ids.
func (c *Container) ExecIDs() map[int]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int]string, len(c.execs))
	for id, p := range c.execs {
		if pid := p.Pid(); pid != 0 && !p.Exited() {
			out[pid] = id
		}
	}
	return out
}
