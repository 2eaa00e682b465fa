package taskservice

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"google.golang.org/grpc/codes"

	"github.com/tether-shim/tether/internal/container"
)

// TestConcurrentStartAndDeleteOfCreatedTask: a Start and a Delete of a
// created task race through the service against the stub runtime. Before
// Starting and Deleting were states, both passed their checks and the
// runtime ran start and a forced delete at once. Now exactly one wins; the
// other is FailedPrecondition (the lifecycle's *TransitionError), or
// NotFound when the Delete already forgot the task.
func TestConcurrentStartAndDeleteOfCreatedTask(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	for i := range 5 {
		id := fmt.Sprintf("race%d", i)
		if _, err := h.create(ctx, id, map[string]string{}, ""); err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
		var wg sync.WaitGroup
		var startErr, deleteErr error
		wg.Go(func() { _, startErr = h.svc.Start(ctx, &taskv2.StartRequest{ID: id}) })
		wg.Go(func() { _, deleteErr = h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: id}) })
		wg.Wait()
		switch {
		case startErr == nil && deleteErr == nil:
			t.Fatalf("%s: start and delete both succeeded", id)
		case startErr == nil:
			if codeOfErr(deleteErr) != codes.FailedPrecondition {
				t.Fatalf("%s: delete lost to start with %v, want FailedPrecondition", id, deleteErr)
			}
			// The started task is cleaned up as usual.
			if _, err := h.svc.Kill(ctx, &taskv2.KillRequest{ID: id, Signal: 9}); err != nil {
				t.Fatalf("%s: kill: %v", id, err)
			}
			if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: id}); err != nil {
				t.Fatalf("%s: wait: %v", id, err)
			}
			if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: id}); err != nil {
				t.Fatalf("%s: delete after stop: %v", id, err)
			}
		case deleteErr == nil:
			if c := codeOfErr(startErr); c != codes.FailedPrecondition && c != codes.NotFound {
				t.Fatalf("%s: start lost to delete with %v, want FailedPrecondition or NotFound", id, startErr)
			}
			var te *container.TransitionError
			if codeOfErr(startErr) == codes.FailedPrecondition && !errors.As(startErr, &te) {
				t.Fatalf("%s: start refused with %T %v, want a *TransitionError", id, startErr, startErr)
			}
		default:
			t.Fatalf("%s: start %v and delete %v both failed", id, startErr, deleteErr)
		}
		if _, err := h.svc.State(ctx, &taskv2.StateRequest{ID: id}); codeOfErr(err) != codes.NotFound {
			t.Fatalf("%s: state after the race and the cleanup: %v, want NotFound", id, err)
		}
	}
}
