package container

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
)

var (
	allStates = []State{Created, Running, Paused, Stopped, Deleted}
	allOps    = []Op{OpStart, OpPause, OpResume, OpKill, OpExec, OpExit, OpDelete, OpUpdate, OpCheckpoint}
)

// allowed is the lifecycle, written out independently of the transitions
// table: the operations each state admits and where they lead.
var allowed = map[State]map[Op]State{
	Created: {OpStart: Running, OpKill: Created, OpExit: Stopped, OpDelete: Deleted, OpUpdate: Created},
	Running: {OpPause: Paused, OpKill: Running, OpExec: Running, OpExit: Stopped, OpUpdate: Running, OpCheckpoint: Running},
	Paused:  {OpResume: Running, OpKill: Paused, OpExit: Stopped, OpUpdate: Paused, OpCheckpoint: Paused},
	Stopped: {OpDelete: Deleted},
	Deleted: {},
}

func TestNextEveryPair(t *testing.T) {
	for _, s := range allStates {
		for _, op := range allOps {
			t.Run(fmt.Sprintf("%s/%s", s, op), func(t *testing.T) {
				got, err := Next(s, op)
				if want, ok := allowed[s][op]; ok {
					if err != nil || got != want {
						t.Fatalf("Next(%s, %s) = %s, %v; want %s", s, op, got, err, want)
					}
					return
				}
				var te *TransitionError
				if !errors.As(err, &te) {
					t.Fatalf("Next(%s, %s) = %s, %v (%T); want a *TransitionError", s, op, got, err, err)
				}
				if te.From != s || te.Op != op {
					t.Errorf("TransitionError{From: %s, Op: %s}, want {%s, %s}", te.From, te.Op, s, op)
				}
				if got != s {
					t.Errorf("refused Next(%s, %s) returned state %s, want it unchanged", s, op, got)
				}
				gone := s == Deleted || (s == Stopped && op == OpKill)
				var wantClass, otherClass error = errdefs.ErrFailedPrecondition, errdefs.ErrNotFound
				if gone {
					wantClass, otherClass = errdefs.ErrNotFound, errdefs.ErrFailedPrecondition
				}
				if !errors.Is(err, wantClass) {
					t.Errorf("Next(%s, %s) error %q is not %v", s, op, err, wantClass)
				}
				if errors.Is(err, otherClass) {
					t.Errorf("Next(%s, %s) error %q is also %v", s, op, err, otherClass)
				}
				// Wrapped by a caller the class survives.
				if !errors.Is(fmt.Errorf("kill c1: %w", err), wantClass) {
					t.Errorf("wrapped error lost its class")
				}
			})
		}
	}
}

func TestTransitionErrorString(t *testing.T) {
	tests := []struct {
		from State
		op   Op
		want string
	}{
		{Stopped, OpKill, "cannot kill: process already finished"},
		{Deleted, OpStart, "cannot start: process already finished"},
		{Deleted, OpDelete, "cannot delete: process already finished"},
		{Running, OpStart, "cannot start a running process"},
		{Created, OpPause, "cannot pause a created process"},
		{Paused, OpDelete, "cannot delete a paused process"},
		{Stopped, OpExec, "cannot exec a stopped process"},
		{Running, OpResume, "cannot resume a running process"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := Next(tt.from, tt.op)
			if err == nil {
				t.Fatalf("Next(%s, %s) allowed", tt.from, tt.op)
			}
			if err.Error() != tt.want {
				t.Fatalf("Error() = %q, want %q", err.Error(), tt.want)
			}
		})
	}
}

func TestStateAndOpStrings(t *testing.T) {
	states := map[State]string{
		Created: "created", Running: "running", Paused: "paused", Stopped: "stopped", Deleted: "deleted",
		State(42): "state(42)",
	}
	for s, want := range states {
		if s.String() != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), s.String(), want)
		}
	}
	ops := map[Op]string{
		OpStart: "start", OpPause: "pause", OpResume: "resume", OpKill: "kill",
		OpExec: "exec", OpExit: "exit", OpDelete: "delete", OpUpdate: "update", OpCheckpoint: "checkpoint", Op(-1): "op(-1)",
	}
	for o, want := range ops {
		if o.String() != want {
			t.Errorf("Op(%d).String() = %q, want %q", int(o), o.String(), want)
		}
	}
}

func TestNextUnknownStateIsRefused(t *testing.T) {
	_, err := Next(State(99), OpStart)
	var te *TransitionError
	if !errors.As(err, &te) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Next(state(99), start) = %v, want a FailedPrecondition *TransitionError", err)
	}
}
