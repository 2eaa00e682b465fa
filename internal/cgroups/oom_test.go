package cgroups

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/tether-shim/tether/internal/testutil"
)

// oomScript makes the child allocate without bound: tail keeps every byte of
// a file without newlines in memory.
const oomScript = "exec tail /dev/zero"

// recorder is an onOOM that counts its calls, signals each on calls, and
// returns only once release is closed.
type recorder struct {
	n       atomic.Int64
	calls   chan struct{}
	release chan struct{}
	once    sync.Once
}

func newRecorder() *recorder {
	return &recorder{calls: make(chan struct{}, 64), release: make(chan struct{})}
}

func (r *recorder) onOOM() {
	r.n.Add(1)
	r.calls <- struct{}{}
	<-r.release
}

func (r *recorder) unblock() { r.once.Do(func() { close(r.release) }) }

// oomChild starts a child that will allocate without bound in cg.
func oomChild(t *testing.T, cg *testCgroup) *child {
	t.Helper()
	ch := spawn(t, oomScript)
	if err := AddProcess(cg.path, ch.pid()); err != nil {
		t.Fatal(err)
	}
	return ch
}

// TestWatchOOMV1 runs real OOM kills in a v1 memory cgroup limited to 32 MiB,
// with the oom_kill counter (Linux 4.13+) and with the notification count
// of older kernels.
func TestWatchOOMV1(t *testing.T) {
	for _, tc := range []struct {
		name          string
		notifications bool
		src           oomSource
	}{
		{"oom_kill counter", false, srcV1Counter},
		{"eventfd notifications", true, srcV1Events},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			cg := newTestCgroup(t, false)
			cg.limitMemory(t, "33554432")
			ch1 := oomChild(t, cg)
			c, err := Load(ch1.pid())
			if err != nil {
				t.Fatal(err)
			}
			rec := newRecorder()
			t.Cleanup(rec.unblock)
			w, err := watchV1(c.v1["memory"], rec.onOOM, slog.Default(), tc.notifications, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Close() })
			if w.src != tc.src {
				t.Fatalf("source %d, want %d", w.src, tc.src)
			}
			if w.Check() {
				t.Fatal("Check reported an OOM before any")
			}

			// 1. An OOM kill is notified asynchronously; onOOM stays busy.
			ch1.run(t)
			waitChan(t, rec.calls, "onOOM for the first kill")
			ch1.waitKilled(t)

			// 2. While the watcher goroutine is stuck in onOOM, a second
			// kill: Check, at exit time, must report it, once.
			ch2 := oomChild(t, cg)
			ch2.run(t)
			ch2.waitKilled(t)
			if !w.Check() {
				t.Fatal("Check did not report the second kill")
			}
			if w.Check() {
				t.Fatal("Check reported the second kill twice")
			}

			// 3. Once onOOM returns, the goroutine must not report the kill
			// Check consumed. A third kill, with onOOM free: reported by
			// exactly one of onOOM and Check.
			rec.unblock()
			ch3 := oomChild(t, cg)
			ch3.run(t)
			ch3.waitKilled(t)
			checked := w.Check()
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			t.Logf("third kill reported by Check: %v", checked)
			want := int64(2)
			if checked {
				want = 1
			}
			if n := rec.n.Load(); n != want {
				t.Errorf("onOOM called %d times (Check reported the third kill: %v), want %d", n, checked, want)
			}
			if w.Check() {
				t.Error("Check after Close reported")
			}
			if err := w.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			// The exported path: WatchOOM on the loaded cgroup.
			w2, err := c.WatchOOM(func() {}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if w2.src != srcV1Counter || w2.Check() {
				t.Errorf("WatchOOM: source %d, or Check reported an old kill", w2.src)
			}
			if err := w2.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestWatchOOMV1Removed: removing the cgroup signals the eventfd; that is no
// OOM, and the watcher's goroutine ends by itself.
func TestWatchOOMV1Removed(t *testing.T) {
	for _, notifications := range []bool{false, true} {
		t.Run(fmt.Sprintf("notifications=%v", notifications), func(t *testing.T) {
			testutil.CheckLeaks(t)
			cg := newTestCgroup(t, false)
			ch := spawn(t, "true")
			if err := AddProcess(cg.path, ch.pid()); err != nil {
				t.Fatal(err)
			}
			c, err := Load(ch.pid())
			if err != nil {
				t.Fatal(err)
			}
			rec := newRecorder()
			rec.unblock()
			w, err := watchV1(c.v1["memory"], rec.onOOM, slog.Default(), notifications, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Close() })
			ch.run(t)
			if err := ch.cmd.Wait(); err != nil {
				t.Fatal(err)
			}
			for _, d := range cg.dirs {
				removeCgroupDir(t, d)
			}
			waitChan(t, w.done, "the watcher goroutine to end")
			if w.Check() {
				t.Error("Check reported the removal as an OOM")
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if n := rec.n.Load(); n != 0 {
				t.Errorf("onOOM called %d times for a removal", n)
			}
			if _, err := c.WatchOOM(rec.onOOM, testLogger(t)); !errdefs.IsNotFound(err) {
				t.Errorf("WatchOOM on a removed cgroup: %v, want not found", err)
			}
		})
	}
}

// writeEvents rewrites a fake memory.events in place (as the kernel does,
// the inode stays the same, so the inotify watch sees IN_MODIFY).
func writeEvents(t *testing.T, p string, oomKill int) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(f, "low 0\nhigh 0\nmax 9\noom %d\noom_kill %d\noom_group_kill 0\n", oomKill, oomKill); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWatchOOMV2 runs the v2 watcher (inotify on memory.events, the oom_kill
// counter) on a fake memory.events: this host has no v2 memory controller.
func TestWatchOOMV2(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	ev := filepath.Join(dir, "memory.events")
	writeEvents(t, ev, 5) // kills before the watch are not reported
	c := &Cgroup{mode: Unified, path: "/fake", v2: dir}
	rec := newRecorder()
	t.Cleanup(rec.unblock)
	w, err := c.WatchOOM(rec.onOOM, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	if w.src != srcV2Events || w.base != 5 {
		t.Fatalf("source %d base %d", w.src, w.base)
	}
	if w.Check() {
		t.Fatal("Check reported a kill from before the watch")
	}
	writeEvents(t, ev, 6)
	waitChan(t, rec.calls, "onOOM")
	writeEvents(t, ev, 7) // the goroutine is busy in onOOM
	if !w.Check() {
		t.Fatal("Check did not report the second kill")
	}
	if w.Check() {
		t.Fatal("Check reported twice")
	}
	rec.unblock()
	writeEvents(t, ev, 9) // two kills seen at once: one report
	waitChan(t, rec.calls, "onOOM for the third and fourth kills")
	if w.Check() {
		t.Error("Check reported what onOOM did")
	}
	// The file goes away (the cgroup is removed): IN_IGNORED ends the
	// goroutine.
	if err := os.Remove(ev); err != nil {
		t.Fatal(err)
	}
	waitChan(t, w.done, "the watcher goroutine to end")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rec.n.Load(); n != 2 {
		t.Errorf("onOOM called %d times, want 2", n)
	}
}

// TestWatchOOMConcurrentClose closes a watcher from several goroutines while
// Check runs.
func TestWatchOOMConcurrentClose(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	writeEvents(t, filepath.Join(dir, "memory.events"), 0)
	c := &Cgroup{mode: Unified, path: "/fake", v2: dir}
	w, err := c.WatchOOM(func() {}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			w.Check()
			errs <- w.Close()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	select {
	case <-w.done:
	default:
		t.Error("Close returned before the goroutine ended")
	}
}

func TestWatchOOMErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	c := &Cgroup{mode: Unified, path: "/fake", v2: t.TempDir()}
	if _, err := c.WatchOOM(nil, testLogger(t)); !errdefs.IsInvalidArgument(err) {
		t.Errorf("nil onOOM: %v, want invalid argument", err)
	}
	// A v2 cgroup without the memory controller has no memory.events.
	if _, err := c.WatchOOM(func() {}, testLogger(t)); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("no memory.events: %v, want failed precondition", err)
	}
	c = &Cgroup{mode: Unified, path: "/gone", v2: filepath.Join(t.TempDir(), "gone")}
	if _, err := c.WatchOOM(func() {}, testLogger(t)); !errdefs.IsNotFound(err) {
		t.Errorf("missing cgroup: %v, want not found", err)
	}
	c = &Cgroup{mode: Hybrid, path: "/x", v1: map[string]string{"cpu": t.TempDir()}}
	if _, err := c.WatchOOM(func() {}, testLogger(t)); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("no memory hierarchy: %v, want failed precondition", err)
	}
	c = &Cgroup{mode: Legacy, path: "/gone", v1: map[string]string{"memory": filepath.Join(t.TempDir(), "gone")}}
	if _, err := c.WatchOOM(func() {}, testLogger(t)); !errdefs.IsNotFound(err) {
		t.Errorf("missing v1 cgroup: %v, want not found", err)
	}
	// A real cgroup of the unified hierarchy of this host: on a hybrid host
	// it has no memory controller.
	if HostMode() == Hybrid {
		cg := newTestCgroup(t, true)
		c = &Cgroup{mode: Unified, path: cg.path, v2: cg.dir(t, "")}
		if _, err := c.WatchOOM(func() {}, testLogger(t)); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("v2 cgroup without memory controller: %v, want failed precondition", err)
		}
	}
}

// TestRegressionOOMWatcherWarnsToDefault: the OOM watcher's warnings went to
// slog.Default, which goes nowhere in the server; they go to the logger it
// is given, with the cgroup. Here a memory.events that is no longer a
// counter makes Check warn.
func TestRegressionOOMWatcherWarnsToDefault(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	ev := filepath.Join(dir, "memory.events")
	writeEvents(t, ev, 0)
	c := &Cgroup{mode: Unified, path: "/fake", v2: dir}
	log, logger := testutil.NewLog(t)
	w, err := c.WatchOOM(func() {}, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	if err := os.WriteFile(ev, []byte("oom_kill x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.Check()
	r, ok := log.Find(slog.LevelWarn, "cgroups: OOM check")
	if !ok {
		t.Fatalf("Check's warning was not logged through the given logger: %v", log.Records())
	}
	if !slices.Contains(r.Attrs, "cgroup=/fake") {
		t.Errorf("the warning does not name the cgroup: %v", r.Attrs)
	}
}
