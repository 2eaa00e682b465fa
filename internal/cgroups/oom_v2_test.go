package cgroups

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/tether-shim/tether/internal/testutil"
	"golang.org/x/sys/unix"
)

// writeCounters rewrites a fake memory.events in place with the given "max",
// "oom" and "oom_kill" counters.
func writeCounters(t *testing.T, p string, limitHits, ooms, kills int) {
	t.Helper()
	data := fmt.Sprintf("low 0\nhigh 0\nmax %d\noom %d\noom_kill %d\noom_group_kill 0\n", limitHits, ooms, kills)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// fakeScope makes a fake slice with a fake scope in it, as the systemd
// driver lays them out: <tmp>/test.slice/memory.events (unless noParent)
// and <tmp>/test.slice/c.scope/memory.events. The slice has counted 3 OOM
// kills of others already.
func fakeScope(t *testing.T, noParent bool) (parentEv, ev string, c *Cgroup) {
	t.Helper()
	slice := filepath.Join(t.TempDir(), "test.slice")
	scope := filepath.Join(slice, "c.scope")
	if err := os.MkdirAll(scope, 0o755); err != nil {
		t.Fatal(err)
	}
	parentEv, ev = filepath.Join(slice, "memory.events"), filepath.Join(scope, "memory.events")
	if !noParent {
		writeCounters(t, parentEv, 7, 3, 3)
	}
	writeCounters(t, ev, 0, 0, 0)
	return parentEv, ev, &Cgroup{mode: Unified, path: "/test.slice/c.scope", v2: scope}
}

// TestRegressionOOMLostWhenScopeRemoved: under the systemd cgroup driver the
// container's scope is removed as soon as it is empty, often before the
// shim reads its memory.events (and the kernel drops the rate-limited
// notification of oom_kill with it): TaskExit 137 came without TaskOOM,
// which Kubernetes reports as "Error" instead of "OOMKilled". At the exit
// the scope is gone, SIGKILL ended the init and the slice counted a kill
// since the watcher last read it: CheckExit reports it, once.
func TestRegressionOOMLostWhenScopeRemoved(t *testing.T) {
	testutil.CheckLeaks(t)
	parentEv, ev, c := fakeScope(t, false)
	log, logger := testutil.NewLog(t)
	rec := newRecorder()
	rec.unblock()
	w, err := c.WatchOOM(rec.onOOM, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	// The container hits its limit: "max" grows (the kernel notifies it
	// at once); Check reads as the watcher does when it wakes up.
	writeCounters(t, ev, 5, 0, 0)
	if w.Check() {
		t.Fatal("Check reported a kill at the limit alone")
	}
	// The kill; the scope is removed before anyone reads its counter
	// again, while the slice's hierarchical counter keeps the kill.
	if err := os.RemoveAll(filepath.Dir(ev)); err != nil {
		t.Fatal(err)
	}
	writeCounters(t, parentEv, 12, 4, 4)
	if w.Check() {
		t.Error("Check inferred a kill: only CheckExit may")
	}
	report, inferred := w.CheckExit(true)
	if !report || !inferred {
		t.Fatalf("CheckExit(sigkilled) = %v, %v; want an inferred OOM kill", report, inferred)
	}
	if report, _ := w.CheckExit(true); report {
		t.Error("CheckExit reported the inferred kill twice")
	}
	if _, ok := log.Find(slog.LevelInfo, "cgroups: OOM kill inferred"); !ok {
		t.Errorf("the inference was not logged: %v", log.Records())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rec.n.Load(); n != 0 {
		t.Errorf("onOOM called %d times", n)
	}
}

// TestCheckExitInference: when CheckExit infers an OOM kill from the parent's
// counter, and when it does not (see its doc).
func TestCheckExitInference(t *testing.T) {
	for _, tc := range []struct {
		name string
		// noParent: the parent has no memory.events (the root cgroup).
		noParent bool
		// siblingFirst: the parent counts a kill (of another cgroup)
		// before the watcher's last read of the cgroup's own counter.
		siblingFirst bool
		// limit: the cgroup's "max" grows before that read (no bearing on
		// the inference).
		limit bool
		// ownKill: that read shows a kill of the cgroup's own.
		ownKill bool
		// keep: the cgroup is not removed.
		keep bool
		// parentKill: the parent counts a kill after that read.
		parentKill bool
		sigkilled  bool
		want       bool // CheckExit reports an inferred kill
	}{
		// The case of the bug. It is also what a kill of another cgroup of
		// the same parent looks like when it falls between the watcher's
		// last read and the exit of a cgroup that someone else SIGKILLed:
		// the misattribution that docs/design.md weighs.
		{name: "inferred", limit: true, parentKill: true, sigkilled: true, want: true},
		{name: "the init did not die of SIGKILL", limit: true, parentKill: true},
		// The watcher may not run at all between the limit and the
		// removal (a busy host): the inference does not need it to.
		{name: "the watcher never saw the limit", parentKill: true, sigkilled: true, want: true},
		{name: "the parent counted no kill", limit: true, sigkilled: true},
		{name: "the cgroup is still there", limit: true, keep: true, parentKill: true, sigkilled: true},
		{name: "the parent's kill came before the last read", siblingFirst: true, limit: true, sigkilled: true},
		{name: "no parent counter", noParent: true, limit: true, parentKill: true, sigkilled: true},
		// The parent's count of the kill the watcher read is no new kill.
		{name: "the kill was read before the removal", limit: true, ownKill: true, sigkilled: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			parentEv, ev, c := fakeScope(t, tc.noParent)
			rec := newRecorder()
			rec.unblock()
			w, err := c.WatchOOM(rec.onOOM, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Close() })
			parentKills := 3
			if tc.siblingFirst {
				parentKills++
				writeCounters(t, parentEv, 7, parentKills, parentKills)
			}
			own := [3]int{0, 0, 0}
			if tc.limit {
				own[0] = 5
			}
			if tc.ownKill {
				own[1], own[2] = 1, 1
				parentKills++
				// The kernel counts the kill in the cgroup, then in the parent.
				writeCounters(t, ev, own[0], own[1], own[2])
				writeCounters(t, parentEv, 7, parentKills, parentKills)
			} else {
				writeCounters(t, ev, own[0], own[1], own[2])
			}
			reports := 0
			if w.Check() { // the watcher's read after a wake-up
				reports++
			}
			if !tc.keep {
				if err := os.RemoveAll(filepath.Dir(ev)); err != nil {
					t.Fatal(err)
				}
			}
			if tc.parentKill && !tc.noParent {
				parentKills++
				writeCounters(t, parentEv, 7, parentKills, parentKills)
			}
			report, inferred := w.CheckExit(tc.sigkilled)
			if report {
				reports++
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			reports += int(rec.n.Load())
			if inferred != tc.want {
				t.Errorf("CheckExit(%v) inferred %v, want %v", tc.sigkilled, inferred, tc.want)
			}
			want := 0
			if tc.want || tc.ownKill {
				want = 1
			}
			if reports != want {
				t.Errorf("%d OOM kills reported (onOOM, Check, CheckExit), want %d", reports, want)
			}
		})
	}
}

// TestWatchOOMV2Kernfs checks, on a real cgroup v2 file, what the v2
// watcher relies on. The host has no v2 memory controller, so it uses
// cgroup.events, which the kernel notifies the same way (cgroup_file_notify).
// kernfs accepts the file in an epoll set for EPOLLPRI and wakes it when
// the kernel notifies the file; after the cgroup's rmdir a read of the
// still open file answers ENODEV, which the watcher takes for "gone".
func TestWatchOOMV2Kernfs(t *testing.T) {
	testutil.CheckLeaks(t)
	cg := newTestCgroup(t, true)
	dir := cg.dir(t, "")
	ev := filepath.Join(dir, "cgroup.events")
	ch := spawn(t, "exit 0")

	fd, err := unix.Open(ev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLPRI | unix.EPOLLET, Fd: int32(fd)}); err != nil {
		t.Fatalf("epoll EPOLLPRI on %s: %v", ev, err)
	}
	var buf [256]byte
	if _, err := unix.Pread(fd, buf[:], 0); err != nil {
		t.Fatal(err)
	}

	rec := newRecorder()
	rec.unblock()
	w, err := watchV2File(ev, rec.onOOM, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	if !w.polled || w.popfd < 0 {
		t.Errorf("the watcher did not poll the kernfs files (polled %v, cgroup.events fd %d)", w.polled, w.popfd)
	}

	// A process joins: "populated 1", and the poller wakes.
	writeFile(t, filepath.Join(dir, "cgroup.procs"), strconv.Itoa(ch.pid()))
	var evs [1]unix.EpollEvent
	n, err := unix.EpollWait(epfd, evs[:], int(guard.Milliseconds()))
	for errors.Is(err, unix.EINTR) {
		n, err = unix.EpollWait(epfd, evs[:], int(guard.Milliseconds()))
	}
	if err != nil || n != 1 || evs[0].Events&unix.EPOLLPRI == 0 {
		t.Fatalf("epoll_wait after the notification: %d events %#x, %v; want EPOLLPRI", n, evs[0].Events, err)
	}
	ch.run(t)
	if err := ch.cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	removeCgroupDir(t, dir)

	_, err = unix.Pread(fd, buf[:], 0)
	if !errors.Is(err, unix.ENODEV) {
		t.Errorf("read of the open %s after rmdir: %v, want ENODEV", ev, err)
	}
	if report, inferred := w.CheckExit(true); report || inferred {
		t.Errorf("CheckExit after rmdir = %v, %v: no kill happened (and no parent counter)", report, inferred)
	}
	w.mu.Lock()
	gone := w.gone
	w.mu.Unlock()
	if !gone {
		t.Error("the watcher did not take ENODEV for a removed cgroup")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rec.n.Load(); n != 0 {
		t.Errorf("onOOM called %d times", n)
	}
}
