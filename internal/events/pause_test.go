package events

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-shim/tether/internal/testutil"
)

// waitUntil polls cond until it holds; it fails the test if it does not
// within waitLimit.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s within %v", what, waitLimit)
		}
		time.Sleep(time.Millisecond)
	}
}

// heldForward is a Forward call the fake containerd holds: it waits, once
// begun and before the event is recorded, until release is closed.
type heldForward struct {
	entered, release chan struct{}
}

// holdForward makes Forward call number call (counting from 1) wait for
// release, then refuse the event with refuse if that is not nil.
func holdForward(f *fakeContainerd, call int, refuse error) heldForward {
	h := heldForward{entered: make(chan struct{}), release: make(chan struct{})}
	f.before = func(_ context.Context, c int, _ *types.Envelope) error {
		if c != call {
			return nil
		}
		close(h.entered)
		select {
		case <-h.release:
		case <-time.After(waitLimit):
		}
		return refuse
	}
	return h
}

// waitEntered waits (bounded) until the held call began.
func (h heldForward) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-h.entered:
	case <-time.After(waitLimit):
		t.Fatalf("the held Forward did not begin within %v", waitLimit)
	}
}

// pauseCtx is the bound of a Pause that is expected to succeed.
func pauseCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// Events published while the Publisher is paused are queued, not sent; on
// Unpause they go out after the earlier ones, in order. Each Publish nudges
// the parked sender, which must stay parked.
func TestPublisherPausedSendsNothingUntilUnpause(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	var paused atomic.Bool
	var whilePaused atomic.Int32
	f.before = func(context.Context, int, *types.Envelope) error {
		if paused.Load() {
			whilePaused.Add(1)
		}
		return nil
	}
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())
	for i := range 3 {
		p.Publish(TopicExit, exitEvent(i))
	}
	f.waitRecorded(3)
	if err := p.Pause(pauseCtx(t)); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	paused.Store(true)
	const n = 1000
	for i := 3; i < n; i++ {
		p.Publish(TopicExit, exitEvent(i))
	}
	if err := p.Pause(pauseCtx(t)); err != nil {
		t.Fatalf("Pause of a paused publisher: %v", err)
	}
	st := p.Stats(1)
	if st.Queued != n-3 || st.Published != n || st.Delivered != 3 {
		t.Errorf("while paused: %+v, want %d queued, %d published, 3 delivered", st, n-3, n)
	}
	paused.Store(false)
	if c := whilePaused.Load(); c != 0 {
		t.Fatalf("%d Forward call(s) reached containerd while paused", c)
	}
	if calls, _ := f.counts(); calls != 3 {
		t.Fatalf("%d Forward calls before Unpause, want 3", calls)
	}
	p.Unpause()
	envs := f.waitRecorded(n)
	checkExactly(t, seqs(t, envs), n)
	for i := 1; i < n; i++ {
		if envs[i].GetTimestamp().AsTime().Before(envs[i-1].GetTimestamp().AsTime()) {
			t.Fatalf("timestamp of event %d is before that of event %d", i, i-1)
		}
	}
}

// A Forward in flight when Pause is called finishes (acknowledged) or fails
// (refused); Pause returns only after that, and the event is then off the
// queue or still at its head. After Unpause every event arrives exactly once,
// in order.
func TestPublisherPauseWaitsForForwardInFlight(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			testutil.CheckLeaks(t)
			f := newFakeContainerd(t)
			var refuse error
			if fail {
				refuse = status.Error(codes.Unavailable, "fake containerd: not now")
			}
			held := holdForward(f, 2, refuse) // the first attempt at event 1
			f.start()
			p, _ := startPublisher(t, f.path, fastConfig())
			for i := range 3 {
				p.Publish(TopicExit, exitEvent(i))
			}
			held.waitEntered(t)

			var released atomic.Bool
			type result struct {
				err          error
				afterRelease bool
			}
			paused := make(chan result, 1)
			ctx := pauseCtx(t)
			go func() {
				err := p.Pause(ctx)
				paused <- result{err, released.Load()}
			}()
			waitUntil(t, "paused", p.isPaused)
			released.Store(true)
			close(held.release)
			var r result
			select {
			case r = <-paused:
			case <-time.After(waitLimit):
				t.Fatalf("Pause did not return within %v", waitLimit)
			}
			if r.err != nil {
				t.Fatalf("Pause: %v", r.err)
			}
			if !r.afterRelease {
				t.Fatal("Pause returned while a Forward was in flight")
			}

			st := p.Stats(3)
			envs, _ := f.recorded()
			want := "[/tasks/exit]" // event 2 only
			wantDelivered := 2
			if fail {
				want = "[/tasks/exit /tasks/exit]" // event 1 stays at the head
				wantDelivered = 1
			}
			if fmt.Sprint(st.Pending) != want || int(st.Delivered) != wantDelivered || len(envs) != wantDelivered {
				t.Errorf("after Pause: %+v with %d recorded, want pending %s, %d delivered", st, len(envs), want, wantDelivered)
			}
			if calls, _ := f.counts(); calls != 2 {
				t.Errorf("%d Forward calls after Pause, want 2", calls)
			}
			p.Unpause()
			envs = f.waitRecorded(3)
			closePublisher(t, p)
			checkExactly(t, seqs(t, envs), 3)
		})
	}
}

// A Pause whose context ends while a Forward is in flight fails, and leaves
// the Publisher unpaused: the caller need not Unpause.
func TestPublisherPauseContextDone(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	held := holdForward(f, 1, nil)
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())
	for i := range 3 {
		p.Publish(TopicExit, exitEvent(i))
	}
	held.waitEntered(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Pause(ctx)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), TopicExit) {
		t.Errorf("Pause = %v, want the event under way and context.Canceled", err)
	}
	if p.isPaused() {
		t.Error("a failed Pause left the publisher paused")
	}
	close(held.release)
	envs := f.waitRecorded(3)
	closePublisher(t, p)
	checkExactly(t, seqs(t, envs), 3)
}

// A Pause during the backoff after a failed attempt does not wait it out;
// after Unpause the sender tries again at once.
func TestPublisherPauseCutsBackoff(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t) // not up: every dial fails
	cfg := fastConfig()
	cfg.backoffMin, cfg.backoffMax = 10*waitLimit, 10*waitLimit
	p, logs := startPublisher(t, f.path, cfg)
	for i := range 3 {
		p.Publish(TopicExit, exitEvent(i))
	}
	logs.WaitFor(t, waitLimit, "of a failed attempt", func(r testutil.LogRecord) bool {
		return r.Msg == "events: cannot forward event to containerd, will retry"
	})
	if err := p.Pause(pauseCtx(t)); err != nil {
		t.Fatalf("Pause during a backoff of %v: %v", cfg.backoffMin, err)
	}
	if st := p.Stats(0); st.Queued != 3 || st.Retried != 1 {
		t.Errorf("after Pause: %+v, want 3 queued and the one failure counted as retried", st)
	}
	f.start()
	p.Unpause()
	envs := f.waitRecorded(3)
	closePublisher(t, p)
	checkExactly(t, seqs(t, envs), 3)
}

// Close of a paused Publisher delivers nothing: with an empty queue it
// returns at once, otherwise it reports the queue when its context ends.
func TestPublisherClosePaused(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	t.Run("empty", func(t *testing.T) {
		p, _ := startPublisher(t, f.path, fastConfig())
		if err := p.Pause(pauseCtx(t)); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if err := p.Close(pauseCtx(t)); err != nil {
			t.Errorf("Close = %v", err)
		}
	})
	t.Run("queued", func(t *testing.T) {
		p := newPublisher(f.path, testNamespace, testLogger(t), fastConfig())
		if err := p.Pause(pauseCtx(t)); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		p.Publish(TopicExit, exitEvent(0))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := p.Close(ctx); err == nil || !strings.Contains(err.Error(), "1 event(s) undelivered") {
			t.Errorf("Close = %v, want 1 undelivered", err)
		}
	})
	if calls, _ := f.counts(); calls != 0 {
		t.Errorf("%d Forward calls, want none", calls)
	}
}

// Pause, HandOver and Unpause, again and again while events flow: each
// pause parks the sender with nothing in flight (what containerd recorded
// is exactly what left the queue, and the queue handed over is the rest,
// in order), and in the end every event arrived once, in order.
func TestPublisherPauseUnpauseRepeatedly(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())
	const n, cycles = 500, 100
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := range n {
			p.Publish(TopicExit, exitEvent(i))
		}
	}()
	for c := range cycles {
		if err := p.Pause(pauseCtx(t)); err != nil {
			t.Fatalf("cycle %d: Pause: %v", c, err)
		}
		recorded, _ := f.recorded()
		evs, err := p.HandOver()
		if err != nil {
			t.Fatalf("cycle %d: HandOver: %v", c, err)
		}
		for i, h := range evs {
			if s := seqOf(t, handedRequest(t, h).GetEnvelope()); s != len(recorded)+i {
				t.Fatalf("cycle %d: handed event %d is event %d, want %d (%d recorded)", c, i, s, len(recorded)+i, len(recorded))
			}
		}
		p.Unpause()
	}
	select {
	case <-published:
	case <-time.After(waitLimit):
		t.Fatalf("publishing did not finish within %v", waitLimit)
	}
	envs := f.waitRecorded(n)
	closePublisher(t, p)
	checkExactly(t, seqs(t, envs), n)
}
