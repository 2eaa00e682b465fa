package container

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// State is where a process is in its lifecycle.
type State int

// The states of a process. A container's state is its init process's state.
const (
	Created State = iota
	Running
	Paused
	Stopped
	Deleted
)

// String returns the lower-case name of the state.
func (s State) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Op is something that can happen to a process.
type Op int

// The operations of the lifecycle.
const (
	OpStart Op = iota
	OpPause
	OpResume
	OpKill
	OpExec
	OpExit
	OpDelete
	OpUpdate
	OpCheckpoint
)

// String returns the lower-case name of the operation.
func (o Op) String() string {
	switch o {
	case OpStart:
		return "start"
	case OpPause:
		return "pause"
	case OpResume:
		return "resume"
	case OpKill:
		return "kill"
	case OpExec:
		return "exec"
	case OpExit:
		return "exit"
	case OpDelete:
		return "delete"
	case OpUpdate:
		return "update"
	case OpCheckpoint:
		return "checkpoint"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// transitions is the lifecycle: for each state, the operations allowed in it
// and the state each one leads to. An operation missing from a state's row is
// refused with a *TransitionError. The table is read-only.
var transitions = map[State]map[Op]State{
	Created: {OpStart: Running, OpKill: Created, OpExit: Stopped, OpDelete: Deleted, OpUpdate: Created},
	Running: {OpPause: Paused, OpKill: Running, OpExec: Running, OpExit: Stopped, OpUpdate: Running, OpCheckpoint: Running},
	Paused:  {OpResume: Running, OpKill: Paused, OpExit: Stopped, OpUpdate: Paused, OpCheckpoint: Paused},
	Stopped: {OpDelete: Deleted},
	Deleted: {},
}

// Next returns the state that op leads to from s, or a *TransitionError when
// the lifecycle does not allow op in s.
func Next(s State, op Op) (State, error) {
	if to, ok := transitions[s][op]; ok {
		return to, nil
	}
	return s, &TransitionError{From: s, Op: op}
}

// TransitionError is an operation the lifecycle refuses. It unwraps to
// errdefs.ErrNotFound when the process is gone (killing a stopped process,
// anything on a deleted one), as containerd expects, and to
// errdefs.ErrFailedPrecondition otherwise.
type TransitionError struct {
	From State
	Op   Op
}

// Error implements error.
func (e *TransitionError) Error() string {
	if e.gone() {
		return fmt.Sprintf("cannot %s: process already finished", e.Op)
	}
	return fmt.Sprintf("cannot %s a %s process", e.Op, e.From)
}

func (e *TransitionError) gone() bool {
	return e.From == Deleted || (e.From == Stopped && e.Op == OpKill)
}

// Unwrap returns the errdefs class of the refusal.
func (e *TransitionError) Unwrap() error {
	if e.gone() {
		return errdefs.ErrNotFound
	}
	return errdefs.ErrFailedPrecondition
}
