package bootstrap

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/testutil"
)

// countingTrimmer is a trimmer with short timings whose trim and retrim only
// count.
func countingTrimmer() (*trimmer, *atomic.Int32, *atomic.Int32) {
	var trims, retrims atomic.Int32
	t := newTrimmer()
	t.trim = func() { trims.Add(1) }
	t.retrim = func() { retrims.Add(1) }
	t.idle, t.delay, t.every = 100*time.Millisecond, 50*time.Millisecond, 0
	return t, &trims, &retrims
}

// waitCount waits (bounded) until c reaches want.
func waitCount(t *testing.T, what string, c *atomic.Int32, want int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d", what, c.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTrimmerRetrimsAfterCollectionsWhileIdle: the trimmer trims once idle;
// while still idle, a garbage collection (the runtime forces one every two
// minutes) is followed by a retrim; after a request, collections lead to no
// retrim until the next trim.
func TestTrimmerRetrimsAfterCollectionsWhileIdle(t *testing.T) {
	testutil.CheckLeaks(t)
	tr, trims, retrims := countingTrimmer()
	ctx, cancel := context.WithCancel(context.Background())
	go tr.run(ctx)
	defer func() {
		cancel()
		<-tr.done
	}()
	waitCount(t, "trims", trims, 1)
	runtime.GC()
	waitCount(t, "retrims after an idle collection", retrims, 1)
	runtime.GC()
	waitCount(t, "retrims after a second idle collection", retrims, 2)

	// Busy: pokes faster than the idle time; collections bring no retrim.
	before := retrims.Load()
	for range 10 {
		tr.Poke()
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	tr.Poke()
	if got := retrims.Load(); got != before {
		t.Fatalf("retrims while busy: %d, want %d", got, before)
	}
	waitCount(t, "trims after the burst", trims, 2)
}

// TestTrimmerStops: the trimmer's goroutine ends with ctx, and the
// collection notice stops re-arming.
func TestTrimmerStops(t *testing.T) {
	testutil.CheckLeaks(t)
	tr, _, _ := countingTrimmer()
	ctx, cancel := context.WithCancel(context.Background())
	go tr.run(ctx)
	cancel()
	select {
	case <-tr.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the trimmer did not stop")
	}
	if !tr.stopped.Load() {
		t.Fatal("stopped is not set after run returned")
	}
	runtime.GC()
	runtime.GC()
}
