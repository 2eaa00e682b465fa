package container

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
)

// TestSignalErrorClass: a Kill of an exec used to be NotFound whatever
// failed; an invalid signal number is InvalidArgument, and a permission
// error keeps its cause.
func TestSignalErrorClass(t *testing.T) {
	tests := []struct {
		err  error
		want error // nil: no errdefs class added
	}{
		{fmt.Errorf("exits: signal pid 7: %w", syscall.ESRCH), errdefs.ErrNotFound},
		{fmt.Errorf("exits: signal pid 7: %w", syscall.EINVAL), errdefs.ErrInvalidArgument},
		{fmt.Errorf("exits: signal pid 7: %w", syscall.EPERM), nil},
	}
	for _, tt := range tests {
		got := signalErrorClass(tt.err)
		if !errors.Is(got, tt.err) {
			t.Errorf("signalErrorClass(%v) = %v: lost the cause", tt.err, got)
		}
		if tt.want != nil && !errors.Is(got, tt.want) {
			t.Errorf("signalErrorClass(%v) = %v, want class %v", tt.err, got, tt.want)
		}
		if tt.want == nil && (errdefs.IsNotFound(got) || errdefs.IsInvalidArgument(got)) {
			t.Errorf("signalErrorClass(%v) = %v: a class it should not have", tt.err, got)
		}
	}
}
