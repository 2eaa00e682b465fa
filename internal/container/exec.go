package container

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/oserr"
	"github.com/tether-shim/tether/internal/runtime"
	"github.com/tether-shim/tether/internal/stdio"
)

// execDrainTimeout bounds how long the init's exit waits for the exits of the
// container's exec processes to be published first; after it, the remaining
// execs are killed (they share the init's pid namespace with the host or a
// pod) and waited for once more.
const execDrainTimeout = 2 * time.Second

// Exec adds an exec process to the container, in the created state; Start
// runs it. The spec is a JSON runtime-spec Process. A duplicate id is
// ErrAlreadyExists; a container whose init is not running is
// ErrFailedPrecondition, except while the init's exit is being published
// (initExitPending): as with containerd's shim, the exec is added and its
// Start is refused. It publishes TaskExecAdded.
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
	if err := c.init.check(OpExec); err != nil && !c.initExitPending() {
		return fmt.Errorf("exec %s in %s: %w", execID, c.id, err)
	}
	p := newProcess(c.id, execID, cfg, c.deps.Events, c.deps.Logger)
	p.spec = &spec
	p.afterExit = func() {
		<-p.startResolved
		c.execExited()
	}
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

// initExitPending reports whether the init's exit is recorded but its
// TaskExit not yet handed on (the exit waits for the output to drain and for
// the execs' exits). A client that raced the init's death gets its error
// from the exec's Start, as from containerd's shim, rather than from the
// create, which some clients do not expect to fail there.
func (c *Container) initExitPending() bool {
	return c.init.Status().State == Stopped && !c.init.Exited()
}

// startExec runs an added exec process and publishes TaskExecStarted. The
// exec counts as running from before the runtime call until its exit has
// been published, so that the init's exit waits for it.
func (c *Container) startExec(ctx context.Context, p *Process) (_ int, retErr error) {
	if err := p.check(OpStart); err != nil {
		return 0, fmt.Errorf("start exec %s: %w", p.execID, err)
	}
	if err := c.init.check(OpExec); err != nil {
		return 0, fmt.Errorf("start exec %s in %s: %w", p.execID, c.id, err)
	}
	io, err := c.openIO(ctx, p.stdioCfg)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	p.pipes = io.pipes
	p.mu.Unlock()
	c.execStarting()
	p.outbox.ExpectStart()
	defer close(p.startResolved)
	pid, err := c.rt.Exec(ctx, c.id, *p.spec, runtime.ExecOpts{
		IO:            io.runcIO(),
		ConsoleSocket: io.consoleSocket(),
		PidFile:       filepath.Join(c.bundle, p.execID+".pid"),
	}, p.watchFunc(c.deps.Monitor))
	if err != nil {
		// Exec returns an error only when nothing watches the process, so
		// no exit will come: it no longer counts as running.
		p.outbox.AbortStart()
		c.execExited()
		if io.pipes != nil {
			io.pipes.Close()
		}
		return 0, fmt.Errorf("start exec %s: %w", p.execID, err)
	}
	if io.pipes != nil {
		if err := io.pipes.StartOutput(); err != nil {
			c.deps.Logger.Warn("exec: no terminal from the runtime", "id", c.id, "exec", p.execID, "error", err)
		}
	}
	p.apply(OpStart)
	p.outbox.Started(events.TopicExecStarted, &eventsapi.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: uint32(pid)})
	return pid, nil
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
		if !p.Exited() && p.Pid() != 0 {
			_ = c.deps.Monitor.Signal(p.Pid(), syscall.SIGKILL)
		}
	}
	select {
	case <-idle:
	case <-time.After(execDrainTimeout):
		c.deps.Logger.Warn("exec exits still missing; publishing the init exit", "id", c.id)
	}
}

// killExec signals an exec process through its pidfd.
func (c *Container) killExec(p *Process, signal uint32) error {
	if err := p.check(OpKill); err != nil {
		return fmt.Errorf("kill exec %s: %w", p.execID, err)
	}
	pid := p.Pid()
	if pid == 0 {
		return fmt.Errorf("kill exec %s: not started: %w", p.execID, errdefs.ErrFailedPrecondition)
	}
	if err := c.deps.Monitor.Signal(pid, syscall.Signal(signal)); err != nil {
		return fmt.Errorf("kill exec %s: %w", p.execID, signalErrorClass(err))
	}
	return nil
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

// deleteExec forgets a created or stopped exec process.
func (c *Container) deleteExec(p *Process) (Status, error) {
	if err := p.check(OpDelete); err != nil {
		return Status{}, fmt.Errorf("delete exec %s: %w", p.execID, err)
	}
	p.mu.Lock()
	pipes := p.pipes
	p.mu.Unlock()
	if pipes != nil {
		pipes.Close()
	}
	p.apply(OpDelete)
	c.mu.Lock()
	delete(c.execs, p.execID)
	c.mu.Unlock()
	return p.Status(), nil
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
