package container

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/stdio"
)

var (
	allStates = []State{Created, Starting, StartFailed, Running, Paused, Exiting, Stopped, Deleting, Deleted}
	allOps    = []Op{OpStart, OpStarted, OpStartFailed, OpPause, OpResume, OpKill, OpExec, OpExecStart, OpExit, OpExited, OpDelete, OpDeleted, OpUpdate, OpCheckpoint}
)

// The lifecycles, written out by hand as the design's table
// (docs/design.md, "Container lifecycle"), independently of state.go: one
// line per allowed transition. Removing a transition from either side
// fails TestLifecycleEveryPair.
type edge struct {
	from State
	op   Op
	to   State
}

var wantInit = []edge{
	{Created, OpStart, Starting},
	{Created, OpKill, Created},
	{Created, OpExit, Exiting},
	{Created, OpDelete, Deleting},
	{Created, OpUpdate, Created},

	{Starting, OpStarted, Running},
	{Starting, OpStartFailed, StartFailed},
	{Starting, OpKill, Starting},
	{Starting, OpExit, Exiting},
	{Starting, OpUpdate, Starting},

	{StartFailed, OpKill, StartFailed},
	{StartFailed, OpExit, Exiting},
	{StartFailed, OpDelete, Deleting},
	{StartFailed, OpUpdate, StartFailed},

	{Running, OpPause, Paused},
	{Running, OpKill, Running},
	{Running, OpExec, Running},
	{Running, OpExecStart, Running},
	{Running, OpExit, Exiting},
	{Running, OpUpdate, Running},
	{Running, OpCheckpoint, Running},

	{Paused, OpResume, Running},
	{Paused, OpKill, Paused},
	{Paused, OpExit, Exiting},
	{Paused, OpUpdate, Paused},
	{Paused, OpCheckpoint, Paused},

	{Exiting, OpExec, Exiting},
	{Exiting, OpExited, Stopped},
	{Exiting, OpDelete, Deleting},

	{Stopped, OpDelete, Deleting},

	{Deleting, OpKill, Deleting},
	{Deleting, OpExit, Deleting},
	{Deleting, OpExited, Deleting},
	{Deleting, OpDeleted, Deleted},
}

var wantExec = []edge{
	{Created, OpStart, Starting},
	{Created, OpDelete, Deleted},

	{Starting, OpStarted, Running},
	{Starting, OpStartFailed, StartFailed},
	{Starting, OpExit, Exiting},

	{StartFailed, OpDelete, Deleted},

	{Running, OpKill, Running},
	{Running, OpExit, Exiting},

	{Exiting, OpExited, Stopped},
	{Exiting, OpDelete, Deleted},

	{Stopped, OpDelete, Deleted},
}

// gone is where a refusal is NotFound rather than FailedPrecondition.
func gone(s State, op Op) bool {
	return s == Deleted || (op == OpKill && (s == Exiting || s == Stopped))
}

func TestLifecycleEveryPair(t *testing.T) {
	for name, tt := range map[string]struct {
		table lifecycle
		want  []edge
	}{
		"init": {initLifecycle, wantInit},
		"exec": {execLifecycle, wantExec},
	} {
		allowed := map[State]map[Op]State{}
		for _, e := range tt.want {
			if allowed[e.from] == nil {
				allowed[e.from] = map[Op]State{}
			}
			allowed[e.from][e.op] = e.to
		}
		for _, s := range allStates {
			for _, op := range allOps {
				t.Run(fmt.Sprintf("%s/%s/%s", name, s, op), func(t *testing.T) {
					got, err := tt.table.next(s, op)
					if want, ok := allowed[s][op]; ok {
						if err != nil || got != want {
							t.Fatalf("next(%s, %s) = %s, %v; want %s", s, op, got, err, want)
						}
						return
					}
					var te *TransitionError
					if !errors.As(err, &te) {
						t.Fatalf("next(%s, %s) = %s, %v (%T); want a *TransitionError", s, op, got, err, err)
					}
					if te.From != s || te.Op != op {
						t.Errorf("TransitionError{From: %s, Op: %s}, want {%s, %s}", te.From, te.Op, s, op)
					}
					if got != s {
						t.Errorf("refused next(%s, %s) returned state %s, want it unchanged", s, op, got)
					}
					var wantClass, otherClass error = errdefs.ErrFailedPrecondition, errdefs.ErrNotFound
					if gone(s, op) {
						wantClass, otherClass = errdefs.ErrNotFound, errdefs.ErrFailedPrecondition
					}
					if !errors.Is(err, wantClass) {
						t.Errorf("next(%s, %s) error %q is not %v", s, op, err, wantClass)
					}
					if errors.Is(err, otherClass) {
						t.Errorf("next(%s, %s) error %q is also %v", s, op, err, otherClass)
					}
					// Wrapped by a caller the class survives.
					if !errors.Is(fmt.Errorf("kill c1: %w", err), wantClass) {
						t.Errorf("wrapped error lost its class")
					}
				})
			}
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
		{Exiting, OpKill, "cannot kill: process already finished"},
		{Deleted, OpStart, "cannot start: process already finished"},
		{Deleted, OpDelete, "cannot delete: process already finished"},
		{Running, OpStart, "cannot start a running process"},
		{Starting, OpDelete, "cannot delete a starting process"},
		{Deleting, OpStart, "cannot start a deleting process"},
		{Created, OpPause, "cannot pause a created process"},
		{Paused, OpDelete, "cannot delete a paused process"},
		{Exiting, OpExecStart, "cannot start an exec in an exiting process"},
		{Stopped, OpExec, "cannot exec a stopped process"},
		{Running, OpResume, "cannot resume a running process"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := initLifecycle.next(tt.from, tt.op)
			if err == nil {
				t.Fatalf("next(%s, %s) allowed", tt.from, tt.op)
			}
			if err.Error() != tt.want {
				t.Fatalf("Error() = %q, want %q", err.Error(), tt.want)
			}
		})
	}
}

func TestStateAndOpStrings(t *testing.T) {
	states := map[State]string{
		Created: "created", Starting: "starting", StartFailed: "start failed", Running: "running", Paused: "paused",
		Exiting: "exiting", Stopped: "stopped", Deleting: "deleting", Deleted: "deleted",
		State(42): "state(42)",
	}
	for s, want := range states {
		if s.String() != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), s.String(), want)
		}
	}
	for _, o := range allOps {
		if s := o.String(); s == fmt.Sprintf("op(%d)", int(o)) {
			t.Errorf("Op %d has no name", int(o))
		}
	}
	if s := Op(-1).String(); s != "op(-1)" {
		t.Errorf("Op(-1).String() = %q", s)
	}
}

func TestNextUnknownStateIsRefused(t *testing.T) {
	_, err := initLifecycle.next(State(99), OpStart)
	var te *TransitionError
	if !errors.As(err, &te) || !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("next(state(99), start) = %v, want a FailedPrecondition *TransitionError", err)
	}
}

// nopSink drops events.
type nopSink struct{}

func (nopSink) Publish(string, proto.Message) {}

// testProcess is a process of kind k in state s, with no container behind
// it: for the state machine alone.
func testProcess(k kind, s State) *Process {
	p := newProcess("c1", "c1", k, stdio.Config{}, nopSink{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.state = s
	return p
}

// TestConcurrentStartAndDelete: a Start and a Delete of a created process
// race; exactly one takes the process, the other gets a *TransitionError
// (FailedPrecondition, or NotFound once an exec's delete ended). Before Starting and Deleting existed both
// passed their checks.
func TestConcurrentStartAndDelete(t *testing.T) {
	for _, k := range []kind{initKind{}, &execKind{}} {
		for range 200 {
			p := testProcess(k, Created)
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i, op := range []Op{OpStart, OpDelete} {
				wg.Go(func() { errs[i] = p.transition(op) })
			}
			wg.Wait()
			var failed []error
			for _, err := range errs {
				if err != nil {
					failed = append(failed, err)
				}
			}
			if len(failed) != 1 {
				t.Fatalf("%T: start and delete: errors %v, want exactly one refusal", k, errs)
			}
			// An exec's delete ends at once: a start after it finds the
			// exec gone.
			var te *TransitionError
			var wantClass error = errdefs.ErrFailedPrecondition
			if p.state == Deleted {
				wantClass = errdefs.ErrNotFound
			}
			if !errors.As(failed[0], &te) || !errors.Is(failed[0], wantClass) {
				t.Fatalf("%T: refusal %v, want a *TransitionError that is %v", k, failed[0], wantClass)
			}
			if st := p.state; st != Starting && st != Deleting && st != Deleted {
				t.Fatalf("%T: state %s after the race", k, st)
			}
		}
	}
}

// TestConcurrentExecStartAndInitExit: an exec's start asks the init while
// the init's exit is recorded; the start is either allowed (the exit came
// after) or refused with a FailedPrecondition *TransitionError, and an exec
// added meanwhile is accepted until the exit is handed on.
func TestConcurrentExecStartAndInitExit(t *testing.T) {
	for range 200 {
		init := testProcess(initKind{}, Running)
		var wg sync.WaitGroup
		var startErr, addErr error
		wg.Go(func() { startErr = init.transition(OpExecStart) })
		wg.Go(func() { init.settle(OpExit) })
		wg.Wait()
		if startErr != nil {
			var te *TransitionError
			if !errors.As(startErr, &te) || te.From != Exiting || !errdefs.IsFailedPrecondition(startErr) {
				t.Fatalf("exec start racing the exit: %v, want a FailedPrecondition *TransitionError from exiting", startErr)
			}
		}
		addErr = init.transition(OpExec)
		if addErr != nil {
			t.Fatalf("exec create while the exit is pending: %v, want accepted", addErr)
		}
		init.settle(OpExited)
		if err := init.transition(OpExec); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("exec create after the exit was handed on: %v, want FailedPrecondition", err)
		}
	}
}

// TestDeleteAbsorbsExitAndAborts: the forced delete of a created container
// kills its init; the exit comes while it is Deleting, Status reports the
// state the delete came from, moved along by the exit, and a failed delete
// returns there.
func TestDeleteAbsorbsExitAndAborts(t *testing.T) {
	p := testProcess(initKind{}, Created)
	if err := p.transition(OpDelete); err != nil {
		t.Fatal(err)
	}
	if st := p.Status().State; st != Created {
		t.Fatalf("Status of a deleting created process = %s, want created", st)
	}
	p.mu.Lock()
	if p.exitRecordedLocked() {
		t.Error("exit recorded before it came")
	}
	p.mu.Unlock()
	p.onExitForTest(exits.Exit{Pid: 7, Status: 137})
	if st := p.Status().State; st != Stopped {
		t.Fatalf("Status after the exit = %s, want stopped", st)
	}
	p.mu.Lock()
	if !p.exitRecordedLocked() || p.state != Deleting {
		t.Errorf("after the exit: state %s, exit recorded %v; want deleting, true", p.state, p.exitRecordedLocked())
	}
	p.mu.Unlock()
	p.abortDelete()
	if p.state != Stopped {
		t.Fatalf("after a failed delete: %s, want stopped", p.state)
	}
	if err := p.transition(OpDelete); err != nil {
		t.Fatalf("delete again: %v", err)
	}
	p.settle(OpDeleted)
	if err := p.transition(OpDelete); !errdefs.IsNotFound(err) {
		t.Fatalf("delete of a deleted process: %v, want NotFound", err)
	}
}

// onExitForTest records an exit as onExit does, without the kind's hooks
// (there is no container).
func (p *Process) onExitForTest(e exits.Exit) {
	p.mu.Lock()
	p.exit = e
	_ = p.transitionLocked(OpExit)
	p.mu.Unlock()
	p.settle(OpExited)
}
