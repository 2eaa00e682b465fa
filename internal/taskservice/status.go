package taskservice

import (
	"context"
	"errors"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// toStatus turns an error wrapped with an errdefs class into the status
// containerd's client maps back to that class (errdefs/pkg/errgrpc's
// ToNative). Errors without a class are Unknown. The class is
// errdefs.Resolve's: the first one found in the chain.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.New(codeOf(err), err.Error()).Err()
}

func codeOf(err error) codes.Code {
	switch errdefs.Resolve(err) {
	case errdefs.ErrInvalidArgument:
		return codes.InvalidArgument
	case errdefs.ErrNotFound:
		return codes.NotFound
	case errdefs.ErrAlreadyExists:
		return codes.AlreadyExists
	case errdefs.ErrPermissionDenied:
		return codes.PermissionDenied
	case errdefs.ErrResourceExhausted:
		return codes.ResourceExhausted
	case errdefs.ErrFailedPrecondition, errdefs.ErrConflict, errdefs.ErrNotModified:
		return codes.FailedPrecondition
	case errdefs.ErrUnavailable:
		return codes.Unavailable
	case errdefs.ErrNotImplemented:
		return codes.Unimplemented
	case errdefs.ErrAborted:
		return codes.Aborted
	case errdefs.ErrOutOfRange:
		return codes.OutOfRange
	case errdefs.ErrDataLoss:
		return codes.DataLoss
	case errdefs.ErrUnauthenticated:
		return codes.Unauthenticated
	case errdefs.ErrInternal:
		return codes.Internal
	}
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	return codes.Unknown
}
