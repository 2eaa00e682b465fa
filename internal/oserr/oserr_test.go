package oserr

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestClass(t *testing.T) {
	_, notExist := os.Open("/nonexistent/x")
	tests := []struct {
		err  error
		want error
	}{
		{notExist, errdefs.ErrNotFound},
		{unix.ENOENT, errdefs.ErrNotFound},
		{unix.ESRCH, errdefs.ErrNotFound},
		{unix.ENODEV, errdefs.ErrNotFound},
		{unix.EACCES, errdefs.ErrPermissionDenied},
		{unix.EPERM, errdefs.ErrPermissionDenied},
		{unix.EINVAL, errdefs.ErrInvalidArgument},
		{unix.EEXIST, errdefs.ErrAlreadyExists},
		{unix.ENOMEM, errdefs.ErrResourceExhausted},
		{unix.EMFILE, errdefs.ErrResourceExhausted},
		{unix.ENOSPC, errdefs.ErrFailedPrecondition},
		{unix.EBUSY, errdefs.ErrFailedPrecondition},
		{unix.EOPNOTSUPP, errdefs.ErrFailedPrecondition},
		{unix.EIO, errdefs.ErrUnknown},
		{errors.New("x"), errdefs.ErrUnknown},
	}
	for _, tt := range tests {
		if got := Class(fmt.Errorf("op: %w", tt.err)); got != tt.want {
			t.Errorf("Class(%v) = %v, want %v", tt.err, got, tt.want)
		}
		w := Wrap(tt.err, "mount %s", "x")
		if !errors.Is(w, tt.want) || !errors.Is(w, tt.err) {
			t.Errorf("Wrap(%v) = %v: not both the class and the cause", tt.err, w)
		}
	}
}
