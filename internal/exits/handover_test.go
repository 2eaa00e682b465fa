package exits

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/handover"
	"github.com/tether-shim/tether/internal/testutil"
)

// The in-process hand-over (the test seam): a live upgrade hands over to a
// new image, where the old Reaper's goroutines are gone; a test cannot
// execve, so it builds the new Reaper in the same process with newReaper
// and the Handed (NewAdopted's path). Only one Reaper of a process should
// sweep; here two run, which is sound because the old one is paused (its
// sweep is held, its watchers reap nothing) until it is closed, and Close
// reaps nothing and closes only the old Reaper's own pidfds, not the
// duplicates the new one adopted.

// lookCount is how many times the watcher of pid tried to reap it, -1
// once it did (the count goes with the pid). A watcher tries once when it
// starts, then whenever it is woken: its pidfd is readable (the exit), or
// (fallback) a SIGCHLD.
func (r *Reaper) lookCount(pid int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.watched[pid]; !ok {
		return -1
	}
	return r.looks[pid]
}

// firstLook waits for the first look of the watcher of pid: from then on
// it waits in the netpoller (or for SIGCHLD). Call it before Pause: a
// watcher whose first look finds the Reaper paused waits for Unpause and
// looks no more.
func firstLook(t *testing.T, r *Reaper, pid int) {
	t.Helper()
	waitFor(t, "the watcher's first look", func() bool { return r.lookCount(pid) > 0 })
}

// lookedAgain waits until the watcher of pid, past its first look, tries
// again after exit, which makes pid exit: so the watcher saw the exit.
func lookedAgain(t *testing.T, r *Reaper, pid int, exit func()) {
	t.Helper()
	n := r.lookCount(pid)
	exit()
	waitFor(t, "the watcher to look at the exit", func() bool {
		c := r.lookCount(pid)
		return c > n || c < 0
	})
}

// pauseWaiting reports whether a Pause waits for an onExit.
func (r *Reaper) pauseWaiting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.idle != nil
}

func (r *Reaper) isPaused() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paused
}

// stdinChild starts a child that exits with code once w is closed.
func stdinChild(t *testing.T, code string) (pid int, w *os.File) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pid = spawn(t, "stdin:"+code, pr)
	pr.Close()
	t.Cleanup(func() { pw.Close() })
	return pid, pw
}

// roundTrip encodes h and decodes it strictly, as the state document is.
func roundTrip(t *testing.T, h Handed) Handed {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var out Handed
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if err := out.Validate(); err != nil {
		t.Fatalf("validate %s: %v", b, err)
	}
	return out
}

// An exit while paused stays a zombie, the sweep is held, and after
// Unpause (a failed hand-over: HandOver, files.Close) the exit is reported
// once with its status, the held sweep runs and the Reaper works as before.
func TestPausedExitReportedOnceAfterUnpause(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			exits := make(chan Exit, 4)
			release := r.Hold()
			pid, in := stdinChild(t, "5")
			if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
				t.Fatal(err)
			}
			release()
			gpid, gin := startOrphan(t, r, "stdin:0")
			defer gin.Close()
			firstLook(t, r, pid)

			if err := r.Pause(context.Background()); err != nil {
				t.Fatal(err)
			}
			// The watcher wakes up (pidfd readable, or SIGCHLD for the
			// fallback) and does not reap.
			lookedAgain(t, r, pid, func() { in.Close() })
			if !zombieChild(pid) {
				t.Fatalf("pid %d was reaped while paused", pid)
			}
			gin.Close()
			waitFor(t, "the orphan to exit", func() bool { return zombieChild(gpid) })
			forceDeferredSweep(t, r) // a SIGCHLD's sweep is held
			if !zombieChild(pid) || !zombieChild(gpid) {
				t.Fatalf("reaped while paused: watched %d zombie %v, orphan %d zombie %v", pid, zombieChild(pid), gpid, zombieChild(gpid))
			}
			if len(exits) != 0 {
				t.Fatalf("exit reported while paused: %+v", <-exits)
			}

			var files handover.Files
			h, err := r.HandOver(&files)
			if err != nil {
				t.Fatal(err)
			}
			if len(h.Pids) != 1 || h.Pids[0].Pid != pid {
				t.Fatalf("handed %+v, want pid %d", h, pid)
			}
			if fd := h.Pids[0].Pidfd; (m.opts.noPidfd && fd != -1) || (!m.opts.noPidfd && !slices.Contains(files.FDs(), fd)) {
				t.Errorf("handed pidfd %d (files %v)", fd, files.FDs())
			}
			files.Close() // the hand-over failed

			r.Unpause()
			if e := waitExit(t, exits); e.Pid != pid || e.Status != 5 {
				t.Errorf("exit %+v, want pid %d status 5", e, pid)
			}
			waitFor(t, "the held sweep to reap the orphan", func() bool { return gone(gpid) })

			// As if nothing had happened.
			release = r.Hold()
			pid2 := spawn(t, "exit:6", nil)
			if err := r.Watch(pid2, func(e Exit) { exits <- e }); err != nil {
				t.Fatal(err)
			}
			release()
			if e := waitExit(t, exits); e.Pid != pid2 || e.Status != 6 {
				t.Errorf("exit %+v, want pid %d status 6", e, pid2)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if len(exits) != 0 {
				t.Errorf("exit reported twice: %+v", <-exits)
			}
		})
	}
}

// Pause waits for an onExit under way; a ctx that ends first fails it and
// leaves the Reaper unpaused.
func TestPauseWaitsForOnExit(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			started := make(chan struct{})
			unblock := make(chan struct{})
			var finished atomic.Bool
			release := r.Hold()
			pid := spawn(t, "exit:4", nil)
			if err := r.Watch(pid, func(Exit) {
				close(started)
				<-unblock
				finished.Store(true)
			}); err != nil {
				t.Fatal(err)
			}
			release()
			waitExit := func() {
				select {
				case <-started:
				case <-r.done:
				}
			}
			waitExit()

			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := r.Pause(ctx); !errors.Is(err, context.Canceled) {
				t.Fatalf("Pause with an ended ctx during onExit: %v, want context.Canceled", err)
			}
			if r.isPaused() {
				t.Fatal("a failed Pause left the Reaper paused")
			}

			errc := make(chan error, 1)
			go func() { errc <- r.Pause(context.Background()) }()
			waitFor(t, "Pause to wait for onExit", r.pauseWaiting)
			close(unblock)
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !finished.Load() {
				t.Error("Pause returned before onExit did")
			}
			r.Unpause()
			r.Unpause() // harmless
		})
	}
}

// The hand-over in one process (see the test seam above): an exit between
// HandOver and the new Reaper's Watch is reported by the new Reaper, with
// its real status, exactly once, and never by the old one; a handed pid is
// watched through the handed pidfd; one nobody watches again is forgotten
// and left to the sweep.
func TestHandOverAdopt(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			old, _ := newTestReaper(t, m.opts)
			oldExits := make(chan Exit, 8)
			release := old.Hold()
			pidA, inA := stdinChild(t, "7") // exits during the hand-over
			pidB, _ := stdinChild(t, "9")   // killed through the new Reaper
			pidC := spawn(t, "sleep", nil)  // never watched again
			t.Cleanup(func() {
				// If the test failed before it killed C; a pid no longer
				// our child may be someone else's now.
				if _, ppid, ok := procStat(pidC); ok && ppid == os.Getpid() {
					_ = unix.Kill(pidC, unix.SIGKILL)
				}
			})
			for _, pid := range []int{pidA, pidB, pidC} {
				if err := old.Watch(pid, func(e Exit) { oldExits <- e }); err != nil {
					t.Fatal(err)
				}
			}
			release()
			firstLook(t, old, pidA)

			if err := old.Pause(context.Background()); err != nil {
				t.Fatal(err)
			}
			var files handover.Files
			h, err := old.HandOver(&files)
			if err != nil {
				t.Fatal(err)
			}
			want := []int{pidA, pidB, pidC}
			slices.Sort(want)
			var got []int
			for _, p := range h.Pids {
				got = append(got, p.Pid)
				if m.opts.noPidfd != (p.Pidfd == -1) {
					t.Errorf("pid %d handed with pidfd %d", p.Pid, p.Pidfd)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("handed pids %v, want %v", got, want)
			}
			h = roundTrip(t, h)

			lookedAgain(t, old, pidA, func() { inA.Close() })
			if !zombieChild(pidA) {
				t.Fatalf("A (%d) was reaped while paused", pidA)
			}

			sink := &logSink{t: t}
			logger := slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
			adopted, err := newReaper(logger, m.opts, &h)
			if err != nil {
				files.Close()
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = adopted.Close() })
			// The old image vanishes: abandon the old Reaper.
			if err := old.Close(); err != nil {
				t.Fatal(err)
			}
			if !zombieChild(pidA) {
				t.Fatal("A was reaped before the new Reaper watched it")
			}
			adopted.sweep() // the new sweep skips handed pids
			if !zombieChild(pidA) {
				t.Fatal("the new Reaper's sweep reaped a handed pid")
			}

			newExits := make(chan Exit, 8)
			adopted.mu.Lock()
			fileB := adopted.adopted[pidB]
			fileC := adopted.adopted[pidC]
			adopted.mu.Unlock()
			if err := adopted.Signal(pidB, unix.SIGKILL); !errors.Is(err, unix.ESRCH) {
				t.Errorf("Signal of a handed pid not watched again: %v, want ESRCH", err)
			}
			if err := adopted.Watch(pidB, func(e Exit) { newExits <- e }); err != nil {
				t.Fatal(err)
			}
			adopted.mu.Lock()
			if adopted.watched[pidB] != fileB {
				t.Error("Watch of a handed pid did not use its handed pidfd")
			}
			adopted.mu.Unlock()
			if err := adopted.Watch(pidA, func(e Exit) { newExits <- e }); err != nil {
				t.Fatal(err)
			}
			if e := waitExit(t, newExits); e.Pid != pidA || e.Status != 7 {
				t.Errorf("exit %+v, want pid %d status 7", e, pidA)
			}
			// Signal goes through the handed pidfd (or kill on the
			// fallback).
			if err := adopted.Signal(pidB, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if e := waitExit(t, newExits); e.Pid != pidB || e.Status != 128+int(unix.SIGKILL) {
				t.Errorf("exit %+v, want pid %d status 137", e, pidB)
			}

			adopted.ForgetAdopted()
			if fileC != nil {
				rc, err := fileC.SyscallConn()
				if err == nil {
					err = rc.Control(func(uintptr) {})
				}
				if err == nil || !strings.Contains(err.Error(), "closed") {
					t.Errorf("ForgetAdopted left C's pidfd open: %v", err)
				}
			}
			if !strings.Contains(sink.String(), "nobody watched again") {
				t.Error("ForgetAdopted did not log the forgotten pid")
			}
			if err := unix.Kill(pidC, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the sweep to reap the forgotten pid", func() bool { return gone(pidC) })

			if err := adopted.Close(); err != nil {
				t.Fatal(err)
			}
			if len(newExits) != 0 {
				t.Errorf("exit reported twice: %+v", <-newExits)
			}
			if len(oldExits) != 0 {
				t.Errorf("the old Reaper reported %+v", <-oldExits)
			}
		})
	}
}

// HandOver needs a paused Reaper; Pause and HandOver refuse a closed one.
func TestHandOverErrors(t *testing.T) {
	testutil.CheckLeaks(t)
	r, _ := newTestReaper(t, options{})
	var files handover.Files
	defer files.Close()
	if _, err := r.HandOver(&files); err == nil || !strings.Contains(err.Error(), "not paused") {
		t.Errorf("HandOver of a running Reaper: %v", err)
	}
	r.Unpause() // not paused: nothing
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Pause(context.Background()); err == nil {
		t.Error("Pause of a closed Reaper succeeded")
	}
	if _, err := r.HandOver(&files); err == nil {
		t.Error("HandOver of a closed Reaper succeeded")
	}
}

func TestHandedValidate(t *testing.T) {
	for _, tc := range []struct {
		h    Handed
		want string // "" for valid
	}{
		{Handed{}, ""},
		{Handed{Pids: []HandedPid{{Pid: 10, Pidfd: 3}, {Pid: 11, Pidfd: -1}}}, ""},
		{Handed{Pids: []HandedPid{{Pid: 0, Pidfd: 3}}}, "invalid pid 0"},
		{Handed{Pids: []HandedPid{{Pid: -4, Pidfd: -1}}}, "invalid pid -4"},
		{Handed{Pids: []HandedPid{{Pid: 10, Pidfd: 2}}}, "invalid pidfd 2"},
		{Handed{Pids: []HandedPid{{Pid: 10}}}, "invalid pidfd 0"},
		{Handed{Pids: []HandedPid{{Pid: 10, Pidfd: maxHandedFD + 1}}}, "invalid pidfd"},
		{Handed{Pids: []HandedPid{{Pid: 10, Pidfd: 5}, {Pid: 10, Pidfd: 6}}}, "pid 10 twice"},
		{Handed{Pids: []HandedPid{{Pid: 10, Pidfd: 5}, {Pid: 11, Pidfd: 5}}}, "pidfd 5 handed twice"},
	} {
		err := tc.h.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.h, err, tc.want)
		}
	}
}

// NewAdopted refuses a Handed that does not validate, and a descriptor that
// is not the pidfd of its pid; it closes what it took.
func TestNewAdoptedRefuses(t *testing.T) {
	testutil.CheckLeaks(t)
	pid := spawn(t, "sleep", nil)
	other := spawn(t, "sleep", nil)
	t.Cleanup(func() {
		for _, p := range []int{pid, other} {
			_ = unix.Kill(p, unix.SIGKILL)
			reapDirect(t, p)
		}
	})
	if _, err := NewAdopted(nil, nil, Handed{Pids: []HandedPid{{Pid: pid, Pidfd: 1}}}); err == nil {
		t.Error("NewAdopted took pidfd 1")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	pfd, err := unix.PidfdOpen(other, unix.PIDFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd)
	for name, c := range map[string]struct {
		fd   func() int
		want string
	}{
		"pipe": {func() int {
			var files handover.Files
			fd, err := files.Add(pr)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}, "not a pidfd"},
		"another pid's pidfd": {func() int {
			var files handover.Files
			fd, err := files.AddFD(pfd)
			if err != nil {
				t.Fatal(err)
			}
			return fd
		}, "not of"},
	} {
		fd := c.fd()
		_, err := NewAdopted(nil, nil, Handed{Pids: []HandedPid{{Pid: pid, Pidfd: fd}}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			t.Errorf("%s: the refused descriptor %d is still open", name, fd)
			unix.Close(fd)
		}
	}
}

// FuzzHandedValidate: the description is read from another build's state
// document; decoding and validating garbage fails with an error, never a
// panic, and what validates holds the invariants.
func FuzzHandedValidate(f *testing.F) {
	f.Add([]byte(`{"pids":[{"pid":12,"pidfd":5},{"pid":13,"pidfd":-1}]}`))
	f.Add([]byte(`{"pids":null}`))
	f.Add([]byte(`{"pids":[{"pid":12,"pidfd":5},{"pid":12,"pidfd":6}]}`))
	f.Add([]byte(`{"pids":[{"pid":-1,"pidfd":0}],"x":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var h Handed
		if err := dec.Decode(&h); err != nil {
			return
		}
		if err := h.Validate(); err != nil {
			return
		}
		pids := map[int]bool{}
		fds := map[int]bool{}
		for _, p := range h.Pids {
			if p.Pid <= 0 || pids[p.Pid] || (p.Pidfd != -1 && (p.Pidfd < 3 || fds[p.Pidfd])) {
				t.Fatalf("Validate accepted %+v", h)
			}
			pids[p.Pid] = true
			if p.Pidfd != -1 {
				fds[p.Pidfd] = true
			}
		}
	})
}

// Exits that race with Pause and Unpause: each is reported exactly once,
// with its status, whether it was collected before the pause, parked by it
// or collected after Unpause.
func TestPauseAmidExits(t *testing.T) {
	const n = 30
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			exits := make(chan Exit, 2*n)
			want := map[int]int{}
			release := r.Hold()
			for i := range n {
				code := 10 + i
				pid := spawn(t, "exit:"+strconv.Itoa(code), nil)
				want[pid] = code
				if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
					t.Fatal(err)
				}
				if i == n/2 {
					// Some have exited already, some are being
					// reported, some are still starting.
					if err := r.Pause(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
			}
			release()
			var files handover.Files
			if _, err := r.HandOver(&files); err != nil {
				t.Fatal(err)
			}
			files.Close()
			r.Unpause()
			for range n {
				e := waitExit(t, exits)
				code, ok := want[e.Pid]
				if !ok {
					t.Fatalf("exit of %d reported twice, or of a pid never watched: %+v", e.Pid, e)
				}
				if e.Status != code {
					t.Errorf("pid %d: status %d, want %d", e.Pid, e.Status, code)
				}
				delete(want, e.Pid)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if len(exits) != 0 {
				t.Errorf("exit reported twice: %+v", <-exits)
			}
		})
	}
}

// TestRegressionPauseStoppedExitAnOnExitWaitsFor: an init's onExit waits
// for its execs' exits to be reported first (container.awaitExecs). Pause
// used to stop reaping at once and then wait for that onExit, which thus
// waited for an exit nobody would collect: the init's exit went out
// without its execs', after a timeout. Pause now lets the exits be
// collected until no onExit is under way, and only then stops reaping.
func TestRegressionPauseStoppedExitAnOnExitWaitsFor(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			release := r.Hold()
			execPid, execW := stdinChild(t, "3")
			execReported := make(chan Exit, 1)
			initStarted := make(chan struct{})
			var initSawExec atomic.Bool
			initPid := spawn(t, "exit:0", nil)
			if err := r.Watch(initPid, func(Exit) {
				close(initStarted)
				select {
				case e := <-execReported:
					execReported <- e
					initSawExec.Store(true)
				case <-r.done:
				}
			}); err != nil {
				t.Fatal(err)
			}
			if err := r.Watch(execPid, func(e Exit) { execReported <- e }); err != nil {
				t.Fatal(err)
			}
			release()
			<-initStarted
			errc := make(chan error, 1)
			// Bounded, so that the bug fails the test rather than hangs it.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			go func() { errc <- r.Pause(ctx) }()
			waitFor(t, "Pause to wait for the init's onExit", r.pauseWaiting)
			execW.Close() // the exec exits while Pause waits
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !initSawExec.Load() {
				t.Fatal("Pause returned before the init's onExit saw the exec's exit")
			}
			if e := <-execReported; e.Status != 3 {
				t.Errorf("exec exit %+v, want status 3", e)
			}
			r.Unpause()
		})
	}
}
