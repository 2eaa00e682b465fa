package events

import (
	"context"
	"fmt"
	"testing"

	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-shim/tether/internal/testutil"
)

// TestPublisherStats: the queue's topics while containerd is away, then
// the counts once it came: every event published, all but the rejected one
// delivered, that one dropped after its retries, and the retries counted.
func TestPublisherStats(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.before = func(_ context.Context, _ int, env *types.Envelope) error {
		if seqOrNeg(env) == 3 {
			return status.Error(codes.InvalidArgument, "bad event")
		}
		return nil
	}
	p, _ := startPublisher(t, f.path, fastConfig())
	for i := range 5 {
		p.Publish(TopicExit, exitEvent(i))
	}
	p.Publish(TopicDelete, exitEvent(5))
	st := p.Stats(2)
	// The sender may have taken none off the queue: containerd is not up.
	if st.Queued != 6 || fmt.Sprint(st.Pending) != fmt.Sprint([]string{TopicExit, TopicExit}) || st.Published != 6 || st.Delivered != 0 {
		t.Errorf("before containerd: %+v", st)
	}
	f.start()
	f.waitRecorded(5)
	closePublisher(t, p)
	st = p.Stats(10)
	if st.Queued != 0 || len(st.Pending) != 0 || st.Published != 6 || st.Delivered != 5 || st.Dropped != 1 {
		t.Errorf("after: %+v, want 6 published, 5 delivered, 1 dropped", st)
	}
	// The rejected event's failures but its last, plus the dial failures
	// before containerd came.
	if st.Retried < defaultMaxAppAttempts-1 {
		t.Errorf("retried %d, want at least %d", st.Retried, defaultMaxAppAttempts-1)
	}
}
