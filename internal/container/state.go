package container

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// State is where a process is in its lifecycle.
type State int

// The states of a process. A container's state is its init process's state.
// Starting, StartFailed, Exiting and Deleting are the shim's own: containerd
// sees them as created, created, stopped and (see Process.Status) the state
// the delete began from.
const (
	// Created: the runtime created the process (or, for an exec, the
	// shim recorded it); it has not been started.
	Created State = iota
	// Starting: a Start is in the runtime; a second Start and a Delete
	// are refused until it ends.
	Starting
	// StartFailed: the one Start a process gets failed; it can only be
	// killed, exit and be deleted.
	StartFailed
	// Running: started and not exited.
	Running
	// Paused: the init of a frozen container.
	Paused
	// Exiting: the exit is recorded and its TaskExit not yet handed on
	// (the output drains, the init waits for its execs). An exec may still
	// be added to the init, not started.
	Exiting
	// Stopped: TaskExit is handed on.
	Stopped
	// Deleting: a Delete is in progress; it ends in Deleted, or goes back
	// to the state it began from when it fails.
	Deleting
	// Deleted: gone; every operation is refused as NotFound.
	Deleted
)

// String returns the lower-case name of the state.
func (s State) String() string {
	switch s {
	case Created:
		return "created"
	case Starting:
		return "starting"
	case StartFailed:
		return "start failed"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Exiting:
		return "exiting"
	case Stopped:
		return "stopped"
	case Deleting:
		return "deleting"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Op is something that can happen to a process.
type Op int

// The operations of the lifecycle. Start and Delete have a beginning
// (OpStart, OpDelete), taken before the runtime call, and an end (OpStarted
// or OpStartFailed, OpDeleted), applied after it; the others are checked
// before the runtime call and, where they change the state, applied after
// it.
const (
	OpStart Op = iota
	OpStarted
	OpStartFailed
	OpPause
	OpResume
	OpKill
	// OpExec adds an exec process to the init's container.
	OpExec
	// OpExecStart starts an exec process in the init's container.
	OpExecStart
	// OpExit: the exit is collected and recorded.
	OpExit
	// OpExited: TaskExit is handed on.
	OpExited
	OpDelete
	OpDeleted
	OpUpdate
	OpCheckpoint
)

// String returns the lower-case name of the operation.
func (o Op) String() string {
	switch o {
	case OpStart:
		return "start"
	case OpStarted:
		return "finish starting"
	case OpStartFailed:
		return "fail starting"
	case OpPause:
		return "pause"
	case OpResume:
		return "resume"
	case OpKill:
		return "kill"
	case OpExec:
		return "exec"
	case OpExecStart:
		return "start an exec in"
	case OpExit:
		return "exit"
	case OpExited:
		return "publish the exit of"
	case OpDelete:
		return "delete"
	case OpDeleted:
		return "finish deleting"
	case OpUpdate:
		return "update"
	case OpCheckpoint:
		return "checkpoint"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// numStates and numOps size a lifecycle.
const (
	numStates = int(Deleted) + 1
	numOps    = int(OpCheckpoint) + 1
)

// lifecycle is a transition table: for each state, the operations allowed
// in it and the state each one leads to. An operation missing from a
// state's row is refused with a *TransitionError. Tables are read-only.
// Arrays, not maps: a map literal is built on the heap by the package's
// init in every shim process, for good (2.3 kB, 25 allocations; see
// docs/performance.md), an array literal is part of the binary.
type lifecycle [numStates][numOps]transition

// transition is one cell of a lifecycle: ok if the operation is allowed,
// and the state it leads to.
type transition struct {
	to State
	ok bool
}

// initLifecycle is the lifecycle of a container's init process, and so of
// the container.
var initLifecycle = lifecycle{
	Created: {OpStart: {Starting, true}, OpKill: {Created, true}, OpExit: {Exiting, true}, OpDelete: {Deleting, true}, OpUpdate: {Created, true}},
	// The runtime's start is under way: the init may already run and
	// exit, and it can be killed and updated as a created one.
	Starting:    {OpStarted: {Running, true}, OpStartFailed: {StartFailed, true}, OpKill: {Starting, true}, OpExit: {Exiting, true}, OpUpdate: {Starting, true}},
	StartFailed: {OpKill: {StartFailed, true}, OpExit: {Exiting, true}, OpDelete: {Deleting, true}, OpUpdate: {StartFailed, true}},
	Running:     {OpPause: {Paused, true}, OpKill: {Running, true}, OpExec: {Running, true}, OpExecStart: {Running, true}, OpExit: {Exiting, true}, OpUpdate: {Running, true}, OpCheckpoint: {Running, true}},
	Paused:      {OpResume: {Running, true}, OpKill: {Paused, true}, OpExit: {Exiting, true}, OpUpdate: {Paused, true}, OpCheckpoint: {Paused, true}},
	// As with containerd's shim, an exec added while the exit is pending
	// is accepted and its start refused.
	Exiting: {OpExec: {Exiting, true}, OpExited: {Stopped, true}, OpDelete: {Deleting, true}},
	Stopped: {OpDelete: {Deleting, true}},
	// The forced delete of a created container kills its init, whose
	// exit comes while it is deleted; a kill meanwhile goes to the
	// runtime, which answers for a container being deleted.
	Deleting: {OpKill: {Deleting, true}, OpExit: {Deleting, true}, OpExited: {Deleting, true}, OpDeleted: {Deleted, true}},
	Deleted:  {},
}

// execLifecycle is the lifecycle of an exec process. It has no process
// before Running, so it cannot be killed before then, and it is deleted in
// one step (the runtime has nothing of it to delete).
var execLifecycle = lifecycle{
	Created:     {OpStart: {Starting, true}, OpDelete: {Deleted, true}},
	Starting:    {OpStarted: {Running, true}, OpStartFailed: {StartFailed, true}, OpExit: {Exiting, true}},
	StartFailed: {OpDelete: {Deleted, true}},
	Running:     {OpKill: {Running, true}, OpExit: {Exiting, true}},
	Exiting:     {OpExited: {Stopped, true}, OpDelete: {Deleted, true}},
	Stopped:     {OpDelete: {Deleted, true}},
	Deleted:     {},
}

// next returns the state that op leads to from s, or a *TransitionError
// when the lifecycle does not allow op in s.
func (l *lifecycle) next(s State, op Op) (State, error) {
	if s >= 0 && int(s) < numStates && op >= 0 && int(op) < numOps {
		if t := l[s][op]; t.ok {
			return t.to, nil
		}
	}
	return s, &TransitionError{From: s, Op: op}
}

// TransitionError is an operation the lifecycle refuses. It unwraps to
// errdefs.ErrNotFound when the process is gone (killing one that exited,
// anything on a deleted one), as containerd expects, and to
// errdefs.ErrFailedPrecondition otherwise: a Start racing a Delete, or an
// exec's start racing the init's exit, is refused with it.
type TransitionError struct {
	From State
	Op   Op
}

// Error implements error.
func (e *TransitionError) Error() string {
	if e.gone() {
		return fmt.Sprintf("cannot %s: process already finished", e.Op)
	}
	article := "a"
	if strings.ContainsRune("aeiou", rune(e.From.String()[0])) {
		article = "an"
	}
	return fmt.Sprintf("cannot %s %s %s process", e.Op, article, e.From)
}

func (e *TransitionError) gone() bool {
	return e.From == Deleted || (e.Op == OpKill && (e.From == Exiting || e.From == Stopped))
}

// Unwrap returns the errdefs class of the refusal.
func (e *TransitionError) Unwrap() error {
	if e.gone() {
		return errdefs.ErrNotFound
	}
	return errdefs.ErrFailedPrecondition
}
