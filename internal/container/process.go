package container

import (
	"context"
	"log/slog"
	"sync"
	"time"

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

// kind is what differs between a container's init process and its exec
// processes: how they start, are signalled and deleted, their lifecycle
// table, and what their exit does besides being recorded. initKind and
// execKind implement it; nothing outside them tells an init from an exec.
type kind interface {
	// lifecycle is the process's transition table.
	lifecycle() *lifecycle
	start(ctx context.Context, p *Process) (int, error)
	kill(ctx context.Context, p *Process, signal uint32, all bool) error
	delete(ctx context.Context, p *Process) (Status, error)
	// reaped runs on the watcher goroutine as soon as the exit is
	// collected, before the output drains; exiting after the exit is
	// recorded and before TaskExit is handed to the outbox; exited after
	// (see Process.onExit).
	reaped(e exits.Exit)
	exiting()
	exited()
}

// Process is a container's init process or one of its exec processes. Its
// operations (Start, Kill, Delete, Resize, CloseStdin) are methods; what
// differs between an init and an exec is its kind.
//
// Its exit is collected by the exits monitor, which calls onExit exactly once
// on the watcher goroutine. onExit drains the output, records the exit,
// hands TaskExit to the outbox and only then closes done. So a Wait that
// returns and a TaskExit that arrives both mean all output has been
// delivered, and a TaskDelete (which Delete publishes after done) always
// follows the TaskExit.
type Process struct {
	containerID string
	// id is the container id for the init, the exec id for an exec.
	id       string
	kind     kind
	stdioCfg stdio.Config
	outbox   *events.Outbox
	// done is closed by onExit once the exit is recorded and TaskExit
	// handed on. Only onExit closes it.
	done chan struct{}

	// mu guards the fields below. It is never held across a runtime call,
	// an RPC or a publish. Lock order: Container.mu → Process.mu.
	mu sync.Mutex
	// state is the process's place in its kind's lifecycle.
	state State
	// deleteFrom is, while state is Deleting, the state the delete began
	// from, moved along by an exit that comes meanwhile: the state a
	// failed delete returns to, and the one Status reports.
	deleteFrom State
	pid        int
	exit       exits.Exit
	pipes      *stdio.IO
}

func newProcess(containerID, id string, k kind, cfg stdio.Config, sink events.Sink, logger *slog.Logger) *Process {
	return &Process{
		containerID: containerID,
		id:          id,
		kind:        k,
		stdioCfg:    cfg,
		outbox:      events.NewOutbox(sink, logger),
		done:        make(chan struct{}),
		state:       Created,
	}
}

// ID returns the exec id, or the container id for the init process.
func (p *Process) ID() string { return p.id }

// IsInit reports whether p is its container's init process: deleting it
// deletes the container.
func (p *Process) IsInit() bool {
	_, ok := p.kind.(initKind)
	return ok
}

// Start starts the process and publishes its start event (TaskStart, or
// TaskExecStarted for an exec). An exit that comes first is published after
// the start event. A process gets one Start: another one, or one racing a
// Delete, is a *TransitionError.
func (p *Process) Start(ctx context.Context) (int, error) { return p.kind.start(ctx, p) }

// Kill signals the process; with all, the init's signal goes to every
// process of the container. Killing a process that has exited is
// ErrNotFound, as containerd expects.
func (p *Process) Kill(ctx context.Context, signal uint32, all bool) error {
	return p.kind.kill(ctx, p, signal, all)
}

// Delete deletes a created or stopped process and returns its final status.
// Deleting the init deletes the container: the runtime's state, the stdio
// and the rootfs mounts; it publishes TaskDelete.
func (p *Process) Delete(ctx context.Context) (Status, error) { return p.kind.delete(ctx, p) }

// Resize sets the terminal size of the process; for a process without a
// terminal it does nothing.
func (p *Process) Resize(width, height uint32) error {
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

// CloseStdin closes the process's stdin so that it reads EOF.
func (p *Process) CloseStdin() {
	p.mu.Lock()
	pipes := p.pipes
	p.mu.Unlock()
	if pipes != nil {
		pipes.CloseStdin()
	}
}

// Status returns a snapshot of the process. It never blocks on anything but
// the process's own mutex, which is never held across a runtime call. A
// process being deleted reports the state its delete began from (moved
// along by an exit meanwhile): containerd's shim holds its lock across a
// delete, so no client ever saw a deleting process.
func (p *Process) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.state
	if st == Deleting {
		st = p.deleteFrom
	}
	return Status{
		State:      st,
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

// transition moves the process along op, or returns the *TransitionError
// of a refusal and leaves it where it is. An operation that does not change
// the state (a kill, an update) is a check.
func (p *Process) transition(op Op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.transitionLocked(op)
}

func (p *Process) transitionLocked(op Op) error {
	from := p.state
	next, err := p.kind.lifecycle().next(from, op)
	if err != nil {
		return err
	}
	switch {
	case next == Deleting && from != Deleting:
		p.deleteFrom = from
	case from == Deleting && (op == OpExit || op == OpExited):
		// Where a failed delete returns to: the exit happened.
		if to, err := p.kind.lifecycle().next(p.deleteFrom, op); err == nil {
			p.deleteFrom = to
		}
	}
	p.state = next
	return nil
}

// check reports whether op is allowed now, without taking it: Pause and
// Resume check before the runtime call and settle after it, so that a
// failed pause leaves the process running.
func (p *Process) check(op Op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.kind.lifecycle().next(p.state, op)
	return err
}

// settle applies the end of an operation whose runtime call is over (a
// start that succeeded or failed, a pause); when the lifecycle no longer
// allows it, an exit raced ahead and wins, and the state stays.
func (p *Process) settle(op Op) {
	_ = p.transition(op)
}

// abortDelete returns a process whose delete failed to the state the
// delete began from (moved along by an exit meanwhile).
func (p *Process) abortDelete() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == Deleting {
		p.state = p.deleteFrom
	}
}

// exitRecordedLocked reports whether the exit is recorded: the state is
// Exiting or later, or a delete began or went on from there.
func (p *Process) exitRecordedLocked() bool {
	st := p.state
	if st == Deleting {
		st = p.deleteFrom
	}
	return st == Exiting || st == Stopped || st == Deleted
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

// Exited reports whether the exit has been recorded and TaskExit handed on.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// setPid records the pid the runtime created, from the runtime call's
// register callback.
func (p *Process) setPid(pid int) {
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
}

// setPipes records the process's stdio.
func (p *Process) setPipes(pipes *stdio.IO) {
	p.mu.Lock()
	p.pipes = pipes
	p.mu.Unlock()
}

// getPipes returns the process's stdio, nil for none.
func (p *Process) getPipes() *stdio.IO {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pipes
}

// onExit is the exits.Reaper callback.
func (p *Process) onExit(e exits.Exit) {
	p.kind.reaped(e)
	if pipes := p.getPipes(); pipes != nil {
		pipes.Drain(drainTimeout)
	}
	p.mu.Lock()
	p.exit = e
	_ = p.transitionLocked(OpExit)
	p.mu.Unlock()
	p.kind.exiting()
	p.outbox.Exit(events.TopicExit, &eventsapi.TaskExit{
		ContainerID: p.containerID,
		ID:          p.ID(),
		Pid:         uint32(e.Pid),
		ExitStatus:  uint32(e.Status),
		ExitedAt:    timestamppb.New(e.At),
	})
	p.settle(OpExited)
	// Only now may Wait return and Delete publish TaskDelete: TaskExit is
	// queued ahead of anything they cause.
	close(p.done)
	p.kind.exited()
}
