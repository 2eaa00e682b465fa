package exits

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

func TestWatchExitCode(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			var allExits []chan Exit
			for _, code := range []int{0, 7, 255} {
				release := r.Hold()
				pid := spawn(t, fmt.Sprintf("exit:%d", code), nil)
				exits := make(chan Exit, 2)
				before := time.Now()
				if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
					t.Fatalf("Watch: %v", err)
				}
				release()
				e := waitExit(t, exits)
				if e.Pid != pid || e.Status != code {
					t.Errorf("exit = %+v, want pid %d status %d", e, pid, code)
				}
				if e.At.Before(before) {
					t.Errorf("exit time %v is before Watch (%v)", e.At, before)
				}
				if !gone(pid) {
					t.Errorf("pid %d still exists after its exit was reported", pid)
				}
				r.mu.Lock()
				_, watched := r.watched[pid]
				r.mu.Unlock()
				if watched {
					t.Errorf("pid %d still in the watched set", pid)
				}
				allExits = append(allExits, exits)
			}
			// Close waits for every watcher: a second report would be queued.
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			for _, exits := range allExits {
				if len(exits) != 0 {
					t.Errorf("exit reported twice: %+v", <-exits)
				}
			}
		})
	}
}

func TestWatchSignal(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			for _, sig := range []unix.Signal{unix.SIGKILL, unix.SIGTERM} {
				release := r.Hold()
				pid := spawn(t, "sleep", nil)
				exits := make(chan Exit, 2)
				if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
					t.Fatalf("Watch: %v", err)
				}
				release()
				if err := unix.Kill(pid, sig); err != nil {
					t.Fatal(err)
				}
				e := waitExit(t, exits)
				if want := 128 + int(sig); e.Pid != pid || e.Status != want {
					t.Errorf("%v: exit = %+v, want pid %d status %d", sig, e, pid, want)
				}
				if !gone(pid) {
					t.Errorf("pid %d still exists after its exit was reported", pid)
				}
			}
		})
	}
}

// The runc exec /bin/true race: the process is a zombie before its pid is
// known. The Hold keeps the sweep from reaping it until Watch.
func TestWatchAlreadyExited(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			release := r.Hold()
			defer release()
			pid := spawn(t, "exit:3", nil)
			waitFor(t, "child to become a zombie", func() bool { return zombieChild(pid) })
			forceDeferredSweep(t, r)
			if !zombieChild(pid) {
				t.Fatalf("pid %d was reaped during a Hold", pid)
			}
			exits := make(chan Exit, 2)
			if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
				t.Fatalf("Watch: %v", err)
			}
			release()
			if e := waitExit(t, exits); e.Pid != pid || e.Status != 3 {
				t.Errorf("exit = %+v, want pid %d status 3", e, pid)
			}
			if !gone(pid) {
				t.Errorf("pid %d still exists", pid)
			}
		})
	}
}

func TestWatchMany(t *testing.T) {
	const n = 50
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)

			var mu sync.Mutex // guards got
			got := make(map[int][]Exit)
			all := make(chan struct{})
			onExit := func(e Exit) {
				mu.Lock()
				defer mu.Unlock()
				first := len(got[e.Pid]) == 0
				got[e.Pid] = append(got[e.Pid], e)
				if first && len(got) == n {
					close(all)
				}
			}

			release := r.Hold()
			want := make(map[int]int, n) // pid -> status
			var sleepers []int
			for i := 0; i < n; i++ {
				if i%5 == 0 {
					pid := spawn(t, "sleep", nil)
					want[pid] = 128 + int(unix.SIGKILL)
					sleepers = append(sleepers, pid)
				} else {
					pid := spawn(t, fmt.Sprintf("exit:%d", i), nil)
					want[pid] = i
				}
			}
			var wg sync.WaitGroup
			for pid := range want {
				wg.Go(func() {
					if err := r.Watch(pid, onExit); err != nil {
						t.Errorf("Watch %d: %v", pid, err)
					}
				})
			}
			wg.Wait()
			release()
			for _, pid := range sleepers {
				if err := unix.Kill(pid, unix.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			if t.Failed() {
				t.FailNow() // a Watch failed: its exit will never come
			}
			select {
			case <-all:
			case <-time.After(deadline):
				mu.Lock()
				t.Fatalf("only %d of %d exits reported", len(got), n)
			}
			// Close waits for every watcher: any duplicate would be in got now.
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for pid, status := range want {
				es := got[pid]
				if len(es) != 1 {
					t.Errorf("pid %d reported %d times: %+v", pid, len(es), es)
					continue
				}
				if es[0].Status != status {
					t.Errorf("pid %d status %d, want %d", pid, es[0].Status, status)
				}
				if !gone(pid) {
					t.Errorf("pid %d left behind", pid)
				}
			}
			if z := ourZombies(t); len(z) != 0 {
				t.Errorf("zombies left: %v", z)
			}
		})
	}
}

func TestOrphansReaped(t *testing.T) {
	for _, m := range []mode{
		{"children-file", options{}},
		{"stat-scan", options{statScan: true}},
		{"fallback", options{noPidfd: true, statScan: true}},
	} {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, logs := newTestReaper(t, m.opts)
			gpid, ctl := startOrphan(t, r, "stdin:9")
			if zombieChild(gpid) {
				t.Fatalf("grandchild %d exited early", gpid)
			}
			ctl.Close() // the grandchild exits 9, SIGCHLD, the sweep reaps it
			waitFor(t, fmt.Sprintf("orphan %d to be reaped", gpid), func() bool { return gone(gpid) })
			wantLog := fmt.Sprintf("pid=%d status=9", gpid)
			waitFor(t, "the orphan to be logged", func() bool { return strings.Contains(logs.String(), wantLog) })
			if z := ourZombies(t); len(z) != 0 {
				t.Errorf("zombies left: %v", z)
			}
		})
	}
}

// The sweep must skip a watched pid even when it is a zombie: here the
// watch is simulated (no watcher reaps it) so that the sweep has every
// chance to take it.
func TestSweepSkipsWatchedZombie(t *testing.T) {
	for _, m := range []mode{
		{"children-file", options{}},
		{"stat-scan", options{statScan: true}},
	} {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			release := r.Hold()
			pid := spawn(t, "exit:5", nil)
			waitFor(t, "child to become a zombie", func() bool { return zombieChild(pid) })
			r.mu.Lock()
			r.watched[pid] = nil // watched, without a watcher
			r.mu.Unlock()
			release()
			r.sweep()
			if !zombieChild(pid) {
				t.Fatalf("the sweep reaped watched pid %d", pid)
			}
			// A real watch now: the status must still be there.
			release = r.Hold()
			defer release()
			r.mu.Lock()
			delete(r.watched, pid)
			r.mu.Unlock()
			exits := make(chan Exit, 2)
			if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
				t.Fatalf("Watch: %v", err)
			}
			release()
			if e := waitExit(t, exits); e.Pid != pid || e.Status != 5 {
				t.Errorf("exit = %+v, want pid %d status 5", e, pid)
			}
		})
	}
}

// A watched child dies while orphans die around it and sweeps run: the sweep
// leaves it to its watcher, which reports the right status.
func TestWatchedChildAmidOrphans(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			type watched struct {
				pid   int
				ctl   *os.File
				exits chan Exit
			}
			var ws []watched
			for i := 0; i < 5; i++ {
				release := r.Hold()
				inR, inW, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				w := watched{pid: spawn(t, fmt.Sprintf("stdin:%d", 40+i), inR), ctl: inW, exits: make(chan Exit, 2)}
				inR.Close()
				if err := r.Watch(w.pid, func(e Exit) { w.exits <- e }); err != nil {
					t.Fatalf("Watch: %v", err)
				}
				release()
				ws = append(ws, w)
			}
			var orphans []int
			for i := 0; i < 5; i++ {
				gpid, ctl := startOrphan(t, r, "stdin:9")
				orphans = append(orphans, gpid)
				// The orphan and the watched child exit together.
				ctl.Close()
				ws[i].ctl.Close()
			}
			for i, w := range ws {
				if e := waitExit(t, w.exits); e.Pid != w.pid || e.Status != 40+i {
					t.Errorf("exit = %+v, want pid %d status %d", e, w.pid, 40+i)
				}
			}
			for _, gpid := range orphans {
				waitFor(t, fmt.Sprintf("orphan %d to be reaped", gpid), func() bool { return gone(gpid) })
			}
		})
	}
}

func TestSweepDeferredDuringHold(t *testing.T) {
	testutil.CheckLeaks(t)
	r, _ := newTestReaper(t, options{})
	gpid, ctl := startOrphan(t, r, "stdin:9")

	release1 := r.Hold()
	release2 := r.Hold()
	ctl.Close()
	waitFor(t, "orphan to become a zombie", func() bool { return zombieChild(gpid) })
	forceDeferredSweep(t, r)
	if !zombieChild(gpid) {
		t.Fatalf("orphan %d reaped during a Hold", gpid)
	}

	// Releasing one Hold twice must not release the other.
	release1()
	release1()
	r.mu.Lock()
	holds := r.holds
	r.mu.Unlock()
	if holds != 1 {
		t.Fatalf("holds = %d after releasing one of two Holds twice, want 1", holds)
	}
	r.sweep() // still held: must not reap
	if !zombieChild(gpid) {
		t.Fatalf("orphan %d reaped while a Hold is still active", gpid)
	}
	if !r.isPending() {
		t.Fatalf("sweep not pending after a sweep during a Hold")
	}

	// The last release runs the deferred sweep, without any new SIGCHLD.
	release2()
	waitFor(t, fmt.Sprintf("orphan %d reaped after the last release", gpid), func() bool { return gone(gpid) })
	release2()
	r.mu.Lock()
	holds = r.holds
	r.mu.Unlock()
	if holds != 0 {
		t.Fatalf("holds = %d, want 0", holds)
	}
}

// os/exec children started under a Hold keep their own exit status, while
// orphans die and get swept concurrently and watched children come and go.
func TestExecUnderHold(t *testing.T) {
	testutil.CheckLeaks(t)
	r, _ := newTestReaper(t, options{})
	exe := testExe(t)
	const (
		workers = 4
		rounds  = 25
	)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Go(func() { // os/exec children
			for i := 0; i < rounds; i++ {
				code := (w*rounds + i) % 200
				release := r.Hold()
				cmd := exec.Command(exe)
				cmd.Env = childEnviron(fmt.Sprintf("exit:%d", code))
				err := cmd.Run()
				release()
				var ee *exec.ExitError
				switch {
				case code == 0 && err == nil:
				case errors.As(err, &ee) && ee.ExitCode() == code:
				default:
					t.Errorf("exec exit:%d: err = %v, exit code %d", code, err, cmd.ProcessState.ExitCode())
					return
				}
			}
		})
		wg.Go(func() { // orphans: their deaths send SIGCHLD and trigger sweeps
			for i := 0; i < rounds; i++ {
				release := r.Hold()
				cmd := exec.Command(exe)
				cmd.Env = childEnviron("orphan:exit:9")
				err := cmd.Run()
				release()
				if err != nil {
					t.Errorf("orphan maker: %v", err)
					return
				}
			}
		})
		wg.Go(func() { // watched children
			for i := 0; i < rounds; i++ {
				release := r.Hold()
				pid, err := forkExec([]string{exe}, childEnviron(fmt.Sprintf("exit:%d", i)), nil, nil)
				if err != nil {
					release()
					t.Error(err)
					return
				}
				exits := make(chan Exit, 2)
				err = r.Watch(pid, func(e Exit) { exits <- e })
				release()
				if err != nil {
					t.Errorf("Watch: %v", err)
					return
				}
				select {
				case e := <-exits:
					if e.Pid != pid || e.Status != i {
						t.Errorf("exit = %+v, want pid %d status %d", e, pid, i)
					}
				case <-time.After(deadline):
					t.Errorf("no exit for pid %d within %v", pid, deadline)
					return
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, "every orphan to be reaped", func() bool { return len(ourZombies(t)) == 0 })
}

// If something else reaps a watched process (a bug elsewhere), the watch
// still ends: onExit gets status 255 and a warning is logged.
func TestLostExit(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, logs := newTestReaper(t, m.opts)
			release := r.Hold()
			pid := spawn(t, "sleep", nil)
			exits := make(chan Exit, 2)
			if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
				t.Fatalf("Watch: %v", err)
			}
			release()
			// The watcher needs mu to reap: holding it, steal the exit.
			r.mu.Lock()
			if err := unix.Kill(pid, unix.SIGKILL); err != nil {
				r.mu.Unlock()
				t.Fatal(err)
			}
			var ws unix.WaitStatus
			_, err := wait4(pid, &ws, 0)
			r.mu.Unlock()
			if err != nil {
				t.Fatalf("wait4: %v", err)
			}
			if e := waitExit(t, exits); e.Pid != pid || e.Status != lostStatus {
				t.Errorf("exit = %+v, want pid %d status %d", e, pid, lostStatus)
			}
			if want := fmt.Sprintf("pid=%d", pid); !strings.Contains(logs.String(), "status lost") || !strings.Contains(logs.String(), want) {
				t.Errorf("no warning about the lost status of %d in the log:\n%s", pid, logs.String())
			}
		})
	}
}

func TestWatchErrors(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			nop := func(Exit) {}
			for _, tc := range []struct {
				name string
				pid  int
				want error
			}{
				{"init", 1, unix.ECHILD},
				{"parent", os.Getppid(), unix.ECHILD},
				{"self", os.Getpid(), unix.ECHILD},
			} {
				err := r.Watch(tc.pid, nop)
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "not a child") {
					t.Errorf("Watch(%s %d) = %v, want a 'not a child' error wrapping %v", tc.name, tc.pid, err, tc.want)
				}
			}
			for _, pid := range []int{0, -1} {
				if err := r.Watch(pid, nop); err == nil {
					t.Errorf("Watch(%d) succeeded", pid)
				}
			}

			release := r.Hold()
			defer release()
			pid := spawn(t, "sleep", nil)
			if err := r.Watch(pid, nil); err == nil {
				t.Errorf("Watch with a nil onExit succeeded")
			}
			exits := make(chan Exit, 2)
			if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
				t.Fatalf("Watch: %v", err)
			}
			if err := r.Watch(pid, nop); err == nil || !strings.Contains(err.Error(), "already watched") {
				t.Errorf("second Watch(%d) = %v, want 'already watched'", pid, err)
			}
			if err := unix.Kill(pid, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if e := waitExit(t, exits); e.Status != 137 {
				t.Errorf("exit = %+v", e)
			}
			// pid is reaped now, so it does not exist (pid_max makes reuse
			// within the test practically impossible).
			if err := r.Watch(pid, nop); !errors.Is(err, unix.ESRCH) {
				t.Errorf("Watch(reaped %d) = %v, want ESRCH", pid, err)
			}
			release()

			r.mu.Lock()
			n := len(r.watched)
			r.mu.Unlock()
			if n != 0 {
				t.Errorf("failed Watch calls left %d entries in the watched set", n)
			}
		})
	}
}

func TestWatchAfterClose(t *testing.T) {
	testutil.CheckLeaks(t)
	r, _ := newTestReaper(t, options{})
	release := r.Hold()
	pid := spawn(t, "exit:0", nil)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Watch(pid, func(Exit) { t.Error("onExit called after Close") }); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Watch after Close = %v, want a 'closed' error", err)
	}
	release() // harmless after Close
	if ws := reapDirect(t, pid); ws.ExitStatus() != 0 {
		t.Errorf("child status %v", ws)
	}
}

func TestCloseCancelsWatches(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			release := r.Hold()
			var pids []int
			var mu sync.Mutex // guards called
			var called []Exit
			for i := 0; i < 3; i++ {
				pid := spawn(t, "sleep", nil)
				pids = append(pids, pid)
				if err := r.Watch(pid, func(e Exit) {
					mu.Lock()
					called = append(called, e)
					mu.Unlock()
				}); err != nil {
					t.Fatalf("Watch: %v", err)
				}
			}
			release()
			var wg sync.WaitGroup
			for i := 0; i < 3; i++ { // concurrent and repeated Close
				wg.Go(func() {
					if err := r.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				})
			}
			wg.Wait()
			if err := r.Close(); err != nil {
				t.Errorf("Close again: %v", err)
			}
			for _, pid := range pids {
				if gone(pid) {
					t.Errorf("Close killed or reaped %d", pid)
				}
				if err := unix.Kill(pid, unix.SIGKILL); err != nil {
					t.Fatal(err)
				}
				if ws := reapDirect(t, pid); ws.Signal() != unix.SIGKILL {
					t.Errorf("pid %d: status %v", pid, ws)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(called) != 0 {
				t.Errorf("onExit called for cancelled watches: %+v", called)
			}
		})
	}
}

// Watchers wait in the netpoller (or on SIGCHLD in the fallback): the thread
// count must not grow with the number of watched processes.
func TestThreadsBounded(t *testing.T) {
	const n = 100
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			r, _ := newTestReaper(t, m.opts)
			release := r.Hold()
			pids := make([]int, n)
			for i := range pids {
				pids[i] = spawnArgv(t, []string{"/bin/sleep", "1000"}, nil, nil, nil)
			}
			base := threads(t)
			exits := make(chan Exit, n)
			for _, pid := range pids {
				if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
					t.Fatalf("Watch: %v", err)
				}
			}
			release()
			watching := threads(t)
			t.Logf("threads: %d before watching, %d watching %d processes", base, watching, n)
			// The invariant: watching adds no threads. The absolute bound
			// catches a thread per watch even if base was already high;
			// base depends on GOMAXPROCS and on the earlier tests (every
			// cmd.Wait of os/exec blocks a thread for a while).
			if limit := 20 + runtime.GOMAXPROCS(0); watching > base+4 || watching >= limit {
				t.Errorf("%d threads while watching %d processes (%d before, limit %d)", watching, n, base, limit)
			}
			for _, pid := range pids {
				if err := unix.Kill(pid, unix.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			for range pids {
				if e := waitExit(t, exits); e.Status != 137 {
					t.Errorf("exit = %+v, want status 137", e)
				}
			}
			if after := threads(t); after > base+4 {
				t.Errorf("%d threads after %d exits", after, n)
			}
		})
	}
}

func TestNewNilLogger(t *testing.T) {
	testutil.CheckLeaks(t)
	r, err := New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	release := r.Hold()
	pid := spawn(t, "exit:4", nil)
	exits := make(chan Exit, 1)
	if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
		t.Fatal(err)
	}
	release()
	if e := waitExit(t, exits); e.Status != 4 {
		t.Errorf("exit = %+v", e)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSiginfoLayout(t *testing.T) {
	var si siginfo
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"size", unsafe.Sizeof(si), 128},
		{"si_signo", unsafe.Offsetof(si.Signo), 0},
		{"si_errno", unsafe.Offsetof(si.Errno), 4},
		{"si_code", unsafe.Offsetof(si.Code), 8},
		{"si_pid", unsafe.Offsetof(si.Pid), 16},
		{"si_uid", unsafe.Offsetof(si.UID), 20},
		{"si_status", unsafe.Offsetof(si.Status), 24},
	} {
		if f.got != f.want {
			t.Errorf("%s = %d, want %d", f.name, f.got, f.want)
		}
	}
}

func TestStatusConversion(t *testing.T) {
	for _, tc := range []struct {
		info siginfo
		want int
	}{
		{siginfo{Code: cldExited, Status: 0}, 0},
		{siginfo{Code: cldExited, Status: 42}, 42},
		{siginfo{Code: cldKilled, Status: int32(unix.SIGKILL)}, 137},
		{siginfo{Code: cldDumped, Status: int32(unix.SIGSEGV)}, 139},
	} {
		if got := siginfoStatus(&tc.info); got != tc.want {
			t.Errorf("siginfoStatus(code %d, status %d) = %d, want %d", tc.info.Code, tc.info.Status, got, tc.want)
		}
	}
	// Linux wait status: exit code in bits 8-15, terminating signal in 0-6,
	// core dump flag 0x80.
	for _, tc := range []struct {
		ws   unix.WaitStatus
		want int
	}{
		{0, 0},
		{3 << 8, 3},
		{unix.WaitStatus(unix.SIGKILL), 137},
		{unix.WaitStatus(unix.SIGABRT) | 0x80, 134},
	} {
		if got := exitStatus(tc.ws); got != tc.want {
			t.Errorf("exitStatus(%#x) = %d, want %d", uint32(tc.ws), got, tc.want)
		}
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		line  string
		state byte
		ppid  int
		ok    bool
	}{
		{"42 (sleep) S 7 42 42 0 -1", 'S', 7, true},
		{"42 (a) b) (c) Z 9 1 1", 'Z', 9, true},
		{"42 (with space) R 1 0", 'R', 1, true},
		{"42 (x", 0, 0, false},
		{"42 (x) Z", 0, 0, false},
		{"42 (x) Z notanumber", 0, 0, false},
	} {
		state, ppid, ok := parseStat([]byte(tc.line))
		if state != tc.state || ppid != tc.ppid || ok != tc.ok {
			t.Errorf("parseStat(%q) = %q %d %v, want %q %d %v", tc.line, state, ppid, ok, tc.state, tc.ppid, tc.ok)
		}
	}
}
