package runtime

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
)

// TestClassify pins every message fragment against the full message runc 1.1
// (the "msg" of its JSON log) or crun 1.8 (its log and stderr) really prints,
// for the subcommand that prints it, about container c1.
func TestClassify(t *testing.T) {
	tests := []struct {
		runtime, op string
		msg         string
		want        error
	}{
		// runc 1.1
		{"runc", "kill", "container does not exist", errdefs.ErrNotFound},
		{"runc", "create", "runc create failed: container with given ID already exists", errdefs.ErrAlreadyExists},
		{"runc", "kill", "container not running", errdefs.ErrFailedPrecondition},
		{"runc", "exec", "container not running", errdefs.ErrFailedPrecondition},
		{"runc", "start", "cannot start a container that has stopped", errdefs.ErrFailedPrecondition},
		{"runc", "start", "cannot start an already running container", errdefs.ErrFailedPrecondition},
		{"runc", "resume", "container not paused", errdefs.ErrFailedPrecondition},
		{"runc", "kill", "process already finished", errdefs.ErrNotFound},
		// crun 1.8
		{"crun", "kill", "error opening file `/run/x/c1/status`: No such file or directory", errdefs.ErrNotFound},
		{"crun", "delete", "cannot open directory '/run/x/nope': No such file or directory", errdefs.ErrNotFound},
		{"crun", "create", "container `c1` already exists", errdefs.ErrAlreadyExists},
		{"crun", "kill", "kill container: No such process", errdefs.ErrNotFound},
		{"crun", "kill", "open pidfd: No such process", errdefs.ErrNotFound},
		{"crun", "pause", "container `c1` is not running", errdefs.ErrFailedPrecondition},
		{"crun", "kill", "the container `c1` is not running", errdefs.ErrFailedPrecondition},
		{"crun", "start", "cannot open `/run/x/c1/exec.fifo`: No such file or directory", errdefs.ErrFailedPrecondition},
		// Case does not matter.
		{"runc", "state", "CONTAINER DOES NOT EXIST", errdefs.ErrNotFound},
		// Not recognised.
		{"", "kill", "", nil},
		{"runc", "create", "exec: \"runc\": executable file not found in $PATH", nil},
		{"runc", "update", "unable to apply cgroup configuration: permission denied", nil},
		{"crun", "start", "open `/run/x/c1/config.json`: Permission denied", nil},
		// A fragment means its class only for its subcommands, and only
		// about this container.
		{"runc", "create", "container does not exist", nil},
		{"crun", "create", "container `c2` already exists", nil},
		{"crun", "kill", "error opening file `/run/x/c2/status`: No such file or directory", nil},
		{"runc", "kill", "container with given ID already exists", nil},
		{"runc", "start", "process already finished", nil},
	}
	for _, tt := range tests {
		t.Run(tt.runtime+"/"+tt.op+"/"+tt.msg, func(t *testing.T) {
			got := Classify(tt.op, "c1", tt.msg)
			if got != tt.want {
				t.Fatalf("Classify(%s, c1, %q) = %v, want %v", tt.op, tt.msg, got, tt.want)
			}
		})
	}
}

// TestRegressionHookMessageAlreadyExists: a runtime error was classed by
// any fragment in any message, so a create whose hook failed with a message
// mentioning "already exists" was AlreadyExists, and Create skipped the
// forced delete it owes a failed create: the half-created container stayed
// in the runtime root.
func TestRegressionHookMessageAlreadyExists(t *testing.T) {
	msgs := []string{
		"runc create failed: unable to start container process: error during container init: error running hook #0: exit status 1, stdout: , stderr: mkdir /var/lib/x: file already exists",
		"error executing hook `/usr/bin/hook` (exit code: 1): link already exists",
	}
	for _, msg := range msgs {
		err := &Error{Op: "create", ID: "c1", Message: msg, Err: errors.New("exit status 1")}
		if errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Errorf("create failing with %q is AlreadyExists", msg)
		}
	}
}

func TestErrorUnwrapsToClass(t *testing.T) {
	exit := &runc.ExitError{Status: 1}
	tests := []struct {
		name, op string
		message  string
		want     error
		notWant  []error
	}{
		{"not found", "kill", "container does not exist", errdefs.ErrNotFound,
			[]error{errdefs.ErrUnknown, errdefs.ErrAlreadyExists, errdefs.ErrFailedPrecondition}},
		{"already exists", "create", "runc create failed: container with given ID already exists", errdefs.ErrAlreadyExists,
			[]error{errdefs.ErrUnknown, errdefs.ErrNotFound}},
		{"failed precondition", "start", "cannot start a container that has stopped", errdefs.ErrFailedPrecondition,
			[]error{errdefs.ErrUnknown, errdefs.ErrNotFound}},
		{"unclassified", "kill", "something odd happened", errdefs.ErrUnknown,
			[]error{errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrFailedPrecondition}},
		{"empty message", "kill", "", errdefs.ErrUnknown,
			[]error{errdefs.ErrNotFound}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error = &Error{Op: tt.op, ID: "c1", Message: tt.message, Err: exit}
			if !errors.Is(err, tt.want) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.want)
			}
			for _, nw := range tt.notWant {
				if errors.Is(err, nw) {
					t.Errorf("errors.Is(%v, %v) = true", err, nw)
				}
			}
			// The underlying error stays reachable.
			var ee *runc.ExitError
			if !errors.As(err, &ee) || ee.Status != 1 {
				t.Errorf("errors.As(*runc.ExitError) lost the exit status: %v", ee)
			}
			if got := IsNotFound(err); got != (tt.want == errdefs.ErrNotFound) {
				t.Errorf("IsNotFound = %v", got)
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	exit := &runc.ExitError{Status: 1}
	withMsg := &Error{Op: "start", ID: "c1", Message: "container not running", Err: exit}
	if got, want := withMsg.Error(), "runtime start c1: container not running"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	noMsg := &Error{Op: "delete", ID: "c2", Err: exit}
	if got, want := noMsg.Error(), "runtime delete c2: exit status 1"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	// Wrapped by callers, the class is still visible.
	wrapped := errors.Join(errors.New("context"), withMsg)
	if !errors.Is(wrapped, errdefs.ErrFailedPrecondition) {
		t.Errorf("wrapped *Error lost its class: %v", wrapped)
	}
	if !strings.Contains(wrapped.Error(), "container not running") {
		t.Errorf("wrapped error text %q lost the runtime message", wrapped)
	}
}

func TestIsNotFoundOfOtherErrors(t *testing.T) {
	if IsNotFound(nil) {
		t.Error("IsNotFound(nil) = true")
	}
	if IsNotFound(errors.New("container does not exist")) {
		t.Error("a plain error is not classified by its text")
	}
	if !IsNotFound(errdefs.ErrNotFound) {
		t.Error("IsNotFound(ErrNotFound) = false")
	}
}

// TestRegressionClassifyCrunKillOfReapedContainer: crun 1.8 answers a kill
// of a container whose init was already reaped (as the shim's exit monitor
// does) with "open pidfd: No such process". Classify does not know the
// message, so the kill is ErrUnknown instead of ErrNotFound (found by
// TestLiveLifecycle/crun).
func TestRegressionClassifyCrunKillOfReapedContainer(t *testing.T) {
	const msg = "open pidfd: No such process"
	if got := Classify("kill", "c1", msg); got != errdefs.ErrNotFound {
		t.Fatalf("Classify(kill, c1, %q) = %v, want %v", msg, got, errdefs.ErrNotFound)
	}
}
