package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// fragmentClass is a fragment of an OCI runtime's error message and the
// errdefs class it means. "{id}" in a fragment stands for the container id
// the command was about.
type fragmentClass struct {
	fragment string
	class    error
}

// The fragments come from runc 1.1 and crun 1.8 output; errors_test.go pins
// each one against the message it was taken from, and live_test.go against
// live runc and crun runs. They are read only through classesOf.
//
// A fragment means its class only for the subcommands it is listed for: a
// message that happens to contain it elsewhere (a failing hook that prints
// "already exists", say) is not that class. Create's cleanup depends on it:
// an AlreadyExists create leaves the runtime state alone, since it is
// another container's.
func classesOf(op string) []fragmentClass {
	gone := []fragmentClass{
		{"container does not exist", errdefs.ErrNotFound},                      // runc
		{"/{id}/status`: no such file or directory", errdefs.ErrNotFound},      // crun: no state
		{"cannot open directory", errdefs.ErrNotFound},                         // crun: no state directory
		{"container not running", errdefs.ErrFailedPrecondition},               // runc
		{"container `{id}` is not running", errdefs.ErrFailedPrecondition},     // crun
		{"the container `{id}` is not running", errdefs.ErrFailedPrecondition}, // crun
	}
	switch op {
	case "create", "run", "restore":
		return []fragmentClass{
			{"container with given id already exists", errdefs.ErrAlreadyExists}, // runc
			{"container `{id}` already exists", errdefs.ErrAlreadyExists},        // crun
		}
	case "start":
		return append(gone,
			fragmentClass{"cannot start a container that has stopped", errdefs.ErrFailedPrecondition},   // runc
			fragmentClass{"cannot start an already running container", errdefs.ErrFailedPrecondition},   // runc
			fragmentClass{"/{id}/exec.fifo`: no such file or directory", errdefs.ErrFailedPrecondition}, // crun: started already
		)
	case "kill":
		return append(gone,
			fragmentClass{"process already finished", errdefs.ErrNotFound},        // runc
			fragmentClass{"kill container: no such process", errdefs.ErrNotFound}, // crun
			fragmentClass{"open pidfd: no such process", errdefs.ErrNotFound},     // crun: init already reaped
		)
	case "pause", "resume":
		return append(gone,
			fragmentClass{"container not paused", errdefs.ErrFailedPrecondition}, // runc resume
		)
	default: // delete, exec, update, ps, state, checkpoint, events
		return gone
	}
}

// Classify returns the errdefs class that the error message of the OCI
// runtime subcommand op about container id belongs to, or nil when the
// message is not recognised. Matching is case-insensitive.
func Classify(op, id, msg string) error {
	m := strings.ToLower(msg)
	for _, c := range classesOf(op) {
		if strings.Contains(m, strings.ToLower(strings.ReplaceAll(c.fragment, "{id}", id))) {
			return c.class
		}
	}
	return nil
}

// Error is a failed OCI runtime command. It unwraps to the errdefs class of
// its message for its subcommand (see Classify), or to errdefs.ErrUnknown.
type Error struct {
	// Op is the runtime subcommand, e.g. "create".
	Op string
	// ID is the container id the command was about.
	ID string
	// Message is what the runtime said, trimmed; it may be empty.
	Message string
	// Err is the underlying error (usually an exit status).
	Err error
	// TimedOut is set when the command was killed at its deadline; the
	// error then is context.DeadlineExceeded.
	TimedOut bool
}

// Error implements error.
func (e *Error) Error() string {
	if e.TimedOut && e.Message != "" {
		return fmt.Sprintf("runtime %s %s: timed out (%s): %v", e.Op, e.ID, e.Message, e.Err)
	}
	if e.TimedOut {
		return fmt.Sprintf("runtime %s %s: timed out: %v", e.Op, e.ID, e.Err)
	}
	if e.Message != "" {
		return fmt.Sprintf("runtime %s %s: %s", e.Op, e.ID, e.Message)
	}
	return fmt.Sprintf("runtime %s %s: %v", e.Op, e.ID, e.Err)
}

// Unwrap returns the errdefs class and the underlying error; a command
// killed at its deadline is context.DeadlineExceeded (a ttrpc
// DeadlineExceeded at the service boundary), whatever it said before.
func (e *Error) Unwrap() []error {
	if e.TimedOut {
		return []error{context.DeadlineExceeded, e.Err}
	}
	class := Classify(e.Op, e.ID, e.Message)
	if class == nil {
		class = errdefs.ErrUnknown
	}
	return []error{class, e.Err}
}

// IsNotFound reports whether err says the container or process is gone.
func IsNotFound(err error) bool { return errors.Is(err, errdefs.ErrNotFound) }
