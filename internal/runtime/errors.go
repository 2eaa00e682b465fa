package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// messageClasses maps fragments of OCI runtime error messages to errdefs
// classes. It is read-only. The fragments come from runc 1.1 and crun 1.8
// output; errors_test.go pins each one against the message it was taken
// from, and against live runc and crun runs.
var messageClasses = []struct {
	fragment string
	class    error
}{
	// runc
	{"container does not exist", errdefs.ErrNotFound},
	{"container with given id already exists", errdefs.ErrAlreadyExists},
	{"container not running", errdefs.ErrFailedPrecondition},
	{"container not paused", errdefs.ErrFailedPrecondition},
	{"cannot start a container that has stopped", errdefs.ErrFailedPrecondition},
	{"cannot start an already running container", errdefs.ErrFailedPrecondition},
	{"process already finished", errdefs.ErrNotFound},
	// crun
	{"/status`: no such file or directory", errdefs.ErrNotFound},
	{"cannot open directory", errdefs.ErrNotFound},
	{"already exists", errdefs.ErrAlreadyExists},
	{"is not running", errdefs.ErrFailedPrecondition},
	{"kill container: no such process", errdefs.ErrNotFound},
	{"open pidfd: no such process", errdefs.ErrNotFound},
	{"exec.fifo`: no such file or directory", errdefs.ErrFailedPrecondition},
}

// Classify returns the errdefs class that an OCI runtime's error message
// belongs to, or nil when the message is not recognised. Matching is
// case-insensitive on the fragments of messageClasses.
func Classify(msg string) error {
	m := strings.ToLower(msg)
	for _, c := range messageClasses {
		if strings.Contains(m, c.fragment) {
			return c.class
		}
	}
	return nil
}

// Error is a failed OCI runtime command. It unwraps to the errdefs class of
// its message (see Classify), or to errdefs.ErrUnknown.
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
	class := Classify(e.Message)
	if class == nil {
		class = errdefs.ErrUnknown
	}
	return []error{class, e.Err}
}

// IsNotFound reports whether err says the container or process is gone.
func IsNotFound(err error) bool { return errors.Is(err, errdefs.ErrNotFound) }
