package cgroups

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/testutil"
)

// The in-process hand-over: a test cannot execve, so the new image's
// watcher (AdoptOOM) runs beside the old, paused one, which is then closed.
// Close is the old watcher's abandonment: it reports nothing and closes
// only its own descriptors (its eventfd registration, its epoll and inotify
// fds); the new watcher registered its own.

// pollUntil polls cond until it holds; the test fails after guard.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// roundTripOOM encodes h and decodes it strictly, as the state document is.
func roundTripOOM(t *testing.T, h OOMHanded) OOMHanded {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var out OOMHanded
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if err := out.Validate(); err != nil {
		t.Fatalf("validate %s: %v", b, err)
	}
	return out
}

// readOOMKill reads oom_kill of a v1 memory cgroup.
func readOOMKill(t *testing.T, dir string) uint64 {
	t.Helper()
	kv, ok, err := readFlatKeyed(filepath.Join(dir, "memory.oom_control"))
	if err != nil || !ok {
		t.Fatalf("read memory.oom_control in %s: %v (exists %v)", dir, err, ok)
	}
	return kv["oom_kill"]
}

// v1OOMWatch makes a v1 memory cgroup limited to 32 MiB, a child in it
// that will allocate without bound once run, and a watcher of the cgroup
// (counting notifications if asked) reporting to rec, which never blocks.
func v1OOMWatch(t *testing.T, notifications bool) (cg *testCgroup, c *Cgroup, ch *child, rec *recorder, w *OOMWatcher) {
	t.Helper()
	cg = newTestCgroup(t, false)
	cg.limitMemory(t, "33554432")
	ch = oomChild(t, cg)
	c, err := Load(ch.pid())
	if err != nil {
		t.Fatal(err)
	}
	rec = newRecorder()
	rec.unblock()
	w, err = watchV1(c.v1["memory"], rec.onOOM, testLogger(t), notifications, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return cg, c, ch, rec, w
}

// TestOOMHandOverV1 runs real OOM kills in a v1 memory cgroup: a kill
// reported before the hand-over is not reported again, a kill while the old
// watcher is paused is reported by the adopted watcher exactly once and
// never by the old one, and the adopted watcher goes on like any other.
func TestOOMHandOverV1(t *testing.T) {
	for _, tc := range []struct {
		name          string
		notifications bool
		source        string
	}{
		{"oom_kill counter", false, handedV1Counter},
		{"eventfd notifications", true, handedV1Events},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			cg, c, ch1, rec1, w1 := v1OOMWatch(t, tc.notifications)
			dir := c.v1["memory"]

			// Kill 1, reported by the old watcher.
			ch1.run(t)
			waitChan(t, rec1.calls, "onOOM for the first kill")
			ch1.waitKilled(t)
			k1 := readOOMKill(t, dir)

			if err := w1.Pause(context.Background()); err != nil {
				t.Fatal(err)
			}
			// Kill 2, while paused.
			ch2 := oomChild(t, cg)
			ch2.run(t)
			ch2.waitKilled(t)
			if w1.Check() {
				t.Fatal("Check reported a kill while paused")
			}
			h, err := w1.HandOver()
			if err != nil {
				t.Fatal(err)
			}
			h = roundTripOOM(t, h)
			if h.Source != tc.source {
				t.Errorf("handed source %q, want %q", h.Source, tc.source)
			}
			switch tc.source {
			case handedV1Counter:
				if h.Counted != k1 || h.Pending != 0 {
					t.Errorf("handed %+v, want counted %d (oom_kill after the reported kill)", h, k1)
				}
			case handedV1Events:
				if h.Pending == 0 || h.Counted != 0 {
					t.Errorf("handed %+v, want the notifications of the kill while paused pending", h)
				}
			}

			rec2 := newRecorder()
			rec2.unblock()
			w2, err := c.AdoptOOM(h, rec2.onOOM, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w2.Close() })
			// The old image vanishes.
			if err := w1.Close(); err != nil {
				t.Fatal(err)
			}
			if n := rec1.n.Load(); n != 1 {
				t.Errorf("the old watcher reported %d kills, want 1 (the one before the pause)", n)
			}
			waitChan(t, rec2.calls, "the adopted watcher's onOOM for the kill while paused")
			if w2.Check() {
				t.Error("Check reported the kill while paused a second time")
			}

			// Kill 3: the adopted watcher works as any.
			ch3 := oomChild(t, cg)
			ch3.run(t)
			ch3.waitKilled(t)
			waitChan(t, rec2.calls, "the adopted watcher's onOOM for the third kill")
			if err := w2.Close(); err != nil {
				t.Fatal(err)
			}
			if n := rec2.n.Load(); n != 2 {
				t.Errorf("the adopted watcher reported %d times, want 2", n)
			}
		})
	}
}

// TestOOMUnpauseV1: a real kill while paused is reported once after
// Unpause when no hand-over happened (HandOver ran, the hand-over failed).
func TestOOMUnpauseV1(t *testing.T) {
	for _, notifications := range []bool{false, true} {
		t.Run("notifications="+strconv.FormatBool(notifications), func(t *testing.T) {
			testutil.CheckLeaks(t)
			cg, _, ch1, rec, w := v1OOMWatch(t, notifications)
			if err := w.Pause(context.Background()); err != nil {
				t.Fatal(err)
			}
			ch1.run(t)
			ch1.waitKilled(t)
			if _, err := w.HandOver(); err != nil {
				t.Fatal(err)
			}
			w.Unpause()
			waitChan(t, rec.calls, "onOOM after Unpause")
			if w.Check() {
				t.Error("Check reported the kill again")
			}
			// As before the pause.
			ch2 := oomChild(t, cg)
			ch2.run(t)
			ch2.waitKilled(t)
			waitChan(t, rec.calls, "onOOM for a kill after Unpause")
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if n := rec.n.Load(); n != 2 {
				t.Errorf("onOOM called %d times, want 2", n)
			}
		})
	}
}

// TestOOMHandOverV2 is the hand-over of a v2 watcher, on a fake
// memory.events (this host has no v2 memory controller).
func TestOOMHandOverV2(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	ev := filepath.Join(dir, "memory.events")
	writeEvents(t, ev, 5)
	c := &Cgroup{mode: Unified, path: "/fake", v2: dir}
	rec1 := newRecorder()
	rec1.unblock()
	w1, err := c.WatchOOM(rec1.onOOM, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w1.Close() })
	writeEvents(t, ev, 6)
	waitChan(t, rec1.calls, "onOOM")
	if err := w1.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	writeEvents(t, ev, 7)
	if w1.Check() {
		t.Fatal("Check reported while paused")
	}
	h, err := w1.HandOver()
	if err != nil {
		t.Fatal(err)
	}
	if h = roundTripOOM(t, h); h != (OOMHanded{Source: handedV2Events, Counted: 6}) {
		t.Fatalf("handed %+v", h)
	}
	// A v1 cgroup cannot take a v2 watch.
	v1 := &Cgroup{mode: Hybrid, path: "/x", v1: map[string]string{"memory": t.TempDir()}}
	writeTemp(t, filepath.Join(v1.v1["memory"], "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
	if _, err := v1.AdoptOOM(h, func() {}, testLogger(t)); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("AdoptOOM of a v2 watch on v1: %v, want failed precondition", err)
	}
	rec2 := newRecorder()
	rec2.unblock()
	w2, err := c.AdoptOOM(h, rec2.onOOM, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w2.Close() })
	if err := w1.Close(); err != nil {
		t.Fatal(err)
	}
	waitChan(t, rec2.calls, "the adopted watcher's onOOM")
	if w2.Check() {
		t.Error("Check reported twice")
	}
	writeEvents(t, ev, 8)
	waitChan(t, rec2.calls, "the adopted watcher's onOOM for a later kill")
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	if n1, n2 := rec1.n.Load(), rec2.n.Load(); n1 != 1 || n2 != 2 {
		t.Errorf("old watcher reported %d (want 1), adopted %d (want 2)", n1, n2)
	}
}

// TestOOMPauseWaitsForOnOOM: Pause returns once an onOOM under way has; a
// ctx that ends first fails it and leaves the watcher unpaused. Unpause
// reports a kill recorded while paused.
func TestOOMPauseWaitsForOnOOM(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	ev := filepath.Join(dir, "memory.events")
	writeEvents(t, ev, 0)
	c := &Cgroup{mode: Unified, path: "/fake", v2: dir}
	rec := newRecorder()
	t.Cleanup(rec.unblock)
	w, err := c.WatchOOM(rec.onOOM, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	writeEvents(t, ev, 1)
	waitChan(t, rec.calls, "onOOM") // it blocks until rec.unblock

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Pause(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pause with an ended ctx during onOOM: %v, want context.Canceled", err)
	}
	w.mu.Lock()
	paused := w.paused
	w.mu.Unlock()
	if paused {
		t.Fatal("a failed Pause left the watcher paused")
	}
	errc := make(chan error, 1)
	go func() { errc <- w.Pause(context.Background()) }()
	pollUntil(t, "Pause to wait for onOOM", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.idle != nil
	})
	rec.unblock()
	if err := waitChan(t, errc, "Pause"); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	reporting := w.reporting
	w.mu.Unlock()
	if reporting {
		t.Error("Pause returned while onOOM ran")
	}
	writeEvents(t, ev, 2)
	w.Unpause()
	waitChan(t, rec.calls, "onOOM after Unpause")
	w.Unpause() // not paused: nothing
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rec.n.Load(); n != 2 {
		t.Errorf("onOOM called %d times, want 2", n)
	}
}

func TestOOMHandOverErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	writeEvents(t, filepath.Join(dir, "memory.events"), 0)
	c := &Cgroup{mode: Unified, path: "/fake", v2: dir}
	w, err := c.WatchOOM(func() {}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.HandOver(); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("HandOver of a running watcher: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Pause(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Pause of a closed watcher: %v", err)
	}
	if _, err := w.HandOver(); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("HandOver of a closed watcher: %v", err)
	}
	for _, h := range []OOMHanded{{}, {Source: "v3"}, {Source: handedV2Events, Pending: 1}, {Source: handedV1Events, Counted: 2}} {
		if _, err := c.AdoptOOM(h, func() {}, testLogger(t)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("AdoptOOM(%+v): %v, want invalid argument", h, err)
		}
	}
	h := OOMHanded{Source: handedV1Counter}
	if _, err := c.AdoptOOM(h, func() {}, testLogger(t)); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "handed source") {
		t.Errorf("AdoptOOM of a v1 watch on v2: %v, want failed precondition", err)
	}
	if _, err := c.AdoptOOM(OOMHanded{Source: handedV2Events}, nil, testLogger(t)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("AdoptOOM with a nil onOOM: %v", err)
	}
}

// FuzzOOMHandedValidate: the description comes from another build's state
// document; garbage is refused with an error, never a panic.
func FuzzOOMHandedValidate(f *testing.F) {
	f.Add([]byte(`{"source":"v2-events","counted":6,"pending":0}`))
	f.Add([]byte(`{"source":"v1-events","counted":0,"pending":2}`))
	f.Add([]byte(`{"source":"v1-counter","counted":-1}`))
	f.Add([]byte(`{"source":"v1-counter","x":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var h OOMHanded
		if err := dec.Decode(&h); err != nil {
			return
		}
		if err := h.Validate(); err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Validate(%+v): %v is not invalid argument", h, err)
			}
			return
		}
		switch h.Source {
		case handedV1Counter, handedV2Events:
			if h.Pending != 0 {
				t.Fatalf("Validate accepted %+v", h)
			}
		case handedV1Events:
			if h.Counted != 0 {
				t.Fatalf("Validate accepted %+v", h)
			}
		default:
			t.Fatalf("Validate accepted %+v", h)
		}
	})
}
