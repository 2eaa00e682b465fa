// Package oserr gives errors from the operating system their errdefs class.
// It is the one place where errnos become classes: every package that
// wraps a system call's error asks Class (or Wrap).
package oserr

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Class is the errdefs class of an error from the OS: ErrNotFound for a
// missing file, process or device (ENOENT, ESRCH, ENODEV: a file of a
// cgroup removed while open), ErrPermissionDenied (EACCES, EPERM),
// ErrInvalidArgument (EINVAL), ErrAlreadyExists (EEXIST),
// ErrResourceExhausted (ENOMEM, EMFILE, ENFILE, ENOSPC), ErrFailedPrecondition
// (EBUSY; EOPNOTSUPP, as for a v2 cgroup that is not a leaf), else
// ErrUnknown.
func Class(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ESRCH):
		return errdefs.ErrNotFound
	case errors.Is(err, fs.ErrPermission):
		return errdefs.ErrPermissionDenied
	case errors.Is(err, unix.EINVAL):
		return errdefs.ErrInvalidArgument
	case errors.Is(err, fs.ErrExist):
		return errdefs.ErrAlreadyExists
	case errors.Is(err, unix.ENOMEM), errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		return errdefs.ErrResourceExhausted
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EBUSY), errors.Is(err, unix.EOPNOTSUPP):
		// ENOSPC is also what a v1 cpuset without cpus or mems answers a
		// process joining it: a precondition, not exhaustion.
		return errdefs.ErrFailedPrecondition
	}
	return errdefs.ErrUnknown
}

// Wrap returns err with the message format and args before it, and its
// class (Class) in the chain.
func Wrap(err error, format string, args ...any) error {
	return fmt.Errorf(format+": %w: %w", append(args, err, Class(err))...)
}
