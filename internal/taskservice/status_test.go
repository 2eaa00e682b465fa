package taskservice

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestStatusCoversEveryClass: every errdefs class, and the context errors,
// becomes the code containerd's errgrpc.ToNative maps back to that class,
// wrapped or not. ErrInternal used to reach containerd as Unknown.
func TestStatusCoversEveryClass(t *testing.T) {
	tests := []struct {
		class error
		want  codes.Code
	}{
		{errdefs.ErrUnknown, codes.Unknown},
		{errdefs.ErrInvalidArgument, codes.InvalidArgument},
		{errdefs.ErrNotFound, codes.NotFound},
		{errdefs.ErrAlreadyExists, codes.AlreadyExists},
		{errdefs.ErrPermissionDenied, codes.PermissionDenied},
		{errdefs.ErrResourceExhausted, codes.ResourceExhausted},
		{errdefs.ErrFailedPrecondition, codes.FailedPrecondition},
		{errdefs.ErrConflict, codes.FailedPrecondition},    // ToNative tells it by the message's suffix
		{errdefs.ErrNotModified, codes.FailedPrecondition}, // likewise
		{errdefs.ErrAborted, codes.Aborted},
		{errdefs.ErrOutOfRange, codes.OutOfRange},
		{errdefs.ErrNotImplemented, codes.Unimplemented},
		{errdefs.ErrInternal, codes.Internal},
		{errdefs.ErrUnavailable, codes.Unavailable},
		{errdefs.ErrDataLoss, codes.DataLoss},
		{errdefs.ErrUnauthenticated, codes.Unauthenticated},
		{context.Canceled, codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{errors.New("no class"), codes.Unknown},
	}
	for _, tt := range tests {
		for _, err := range []error{tt.class, fmt.Errorf("op: %w", tt.class), fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", tt.class))} {
			st, ok := status.FromError(toStatus(err))
			if !ok || st.Code() != tt.want {
				t.Errorf("toStatus(%v) = %v, want code %v", err, st, tt.want)
			}
			if st.Message() != err.Error() {
				t.Errorf("toStatus(%v) message %q, want the error's text", err, st.Message())
			}
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) is not nil")
	}
	already := status.Error(codes.Aborted, "x")
	if toStatus(already) != already {
		t.Error("a status error was not passed through")
	}
}
