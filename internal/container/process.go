package container

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/stdio"

	eventsapi "github.com/containerd/containerd/api/events"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// drainTimeout bounds how long an exit waits for the process's output to
// reach the client. Output the process wrote is at most a pipe buffer away;
// only a process left behind holding the pipe makes the drain time out.
const drainTimeout = 2 * time.Second

// Status is a snapshot of a process, as State reports it.
type Status struct {
	State      State
	Pid        int
	ExitStatus uint32
	ExitedAt   time.Time
	Stdio      stdio.Config
}

// Process is a container's init process or one of its exec processes.
//
// Its exit is collected by the exits monitor, which calls onExit exactly once
// on the watcher goroutine. onExit drains the output, records the exit,
// hands TaskExit to the outbox and only then closes done. So a Wait that
// returns and a TaskExit that arrives both mean all output has been
// delivered, and a TaskDelete (which Delete publishes after done) always
// follows the TaskExit.
type Process struct {
	containerID string
	execID      string // "" for the init process
	stdioCfg    stdio.Config
	outbox      *events.Outbox
	// done is closed by onExit once the exit is recorded. Only onExit
	// closes it.
	done chan struct{}
	// reaped, if set, runs on the watcher goroutine as soon as the exit is
	// collected, before the output drains (the init of a container in a
	// shared pid namespace kills what it left behind there: those processes
	// hold the output open). beforeExitEvent, if set, runs after the exit
	// is recorded and before TaskExit is handed to the outbox (the init
	// waits there for its execs). afterExit, if set, runs after. All are
	// set before the process is watched.
	reaped          func(exits.Exit)
	beforeExitEvent func()
	afterExit       func()
	// spec is the process spec of an exec process; nil for the init.
	spec *specs.Process
	// startResolved is closed by an exec's Start once its start event was
	// published or abandoned; the exec's onExit waits for it before it
	// counts the exec as done, so that the init's exit cannot overtake a
	// held exec exit.
	startResolved chan struct{}

	mu sync.Mutex
	// state, pid, exit, pipes and startTried are guarded by mu.
	state      State
	pid        int
	exit       exits.Exit
	pipes      *stdio.IO
	startTried bool
}

func newProcess(containerID, execID string, cfg stdio.Config, sink events.Sink, logger *slog.Logger) *Process {
	if execID != "" {
		logger = logger.With("id", containerID, "exec", execID)
	} else {
		logger = logger.With("id", containerID)
	}
	return &Process{
		containerID:   containerID,
		execID:        execID,
		stdioCfg:      cfg,
		outbox:        events.NewOutbox(sink, logger),
		done:          make(chan struct{}),
		startResolved: make(chan struct{}),
		state:         Created,
	}
}

// ID returns the exec id, or the container id for the init process.
func (p *Process) ID() string {
	if p.execID == "" {
		return p.containerID
	}
	return p.execID
}

// Status returns a snapshot of the process. It never blocks on anything but
// the process's own mutex, which is never held across a runtime call.
func (p *Process) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Status{
		State:      p.state,
		Pid:        p.pid,
		ExitStatus: uint32(p.exit.Status),
		ExitedAt:   p.exit.At,
		Stdio:      p.stdioCfg,
	}
}

// Pid returns the process's pid, 0 before it was created.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// check reports whether op is allowed in the current state, without
// changing it.
func (p *Process) check(op Op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := Next(p.state, op)
	return err
}

// apply moves the process along op if the lifecycle still allows it; an
// exit that raced ahead wins over a late start or pause.
func (p *Process) apply(op Op) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if next, err := Next(p.state, op); err == nil {
		p.state = next
	}
}

// Wait blocks until the process exited or ctx is done.
func (p *Process) Wait(ctx context.Context) (Status, error) {
	select {
	case <-p.done:
		return p.Status(), nil
	case <-ctx.Done():
		return Status{}, ctx.Err()
	}
}

// Exited reports whether the exit has been recorded.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// onExit is the exits.Reaper callback.
func (p *Process) onExit(e exits.Exit) {
	if p.reaped != nil {
		p.reaped(e)
	}
	p.mu.Lock()
	pipes := p.pipes
	p.mu.Unlock()
	if pipes != nil {
		pipes.Drain(drainTimeout)
	}
	p.mu.Lock()
	p.exit = e
	if next, err := Next(p.state, OpExit); err == nil {
		p.state = next
	}
	p.mu.Unlock()
	if p.beforeExitEvent != nil {
		p.beforeExitEvent()
	}
	p.outbox.Exit(events.TopicExit, &eventsapi.TaskExit{
		ContainerID: p.containerID,
		ID:          p.ID(),
		Pid:         uint32(e.Pid),
		ExitStatus:  uint32(e.Status),
		ExitedAt:    timestamppb.New(e.At),
	})
	// Only now may Wait return and Delete publish TaskDelete: TaskExit is
	// queued ahead of anything they cause.
	close(p.done)
	if p.afterExit != nil {
		p.afterExit()
	}
}

// CloseStdin closes the process's stdin so that it reads EOF.
func (p *Process) CloseStdin() {
	p.mu.Lock()
	pipes := p.pipes
	p.mu.Unlock()
	if pipes != nil {
		pipes.CloseStdin()
	}
}

// tryStart marks the one start attempt a process gets; a second one is
// ErrFailedPrecondition.
func (p *Process) tryStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.startTried {
		return fmt.Errorf("process %s was already started: %w", p.ID(), errdefs.ErrFailedPrecondition)
	}
	p.startTried = true
	return nil
}
