package exits

import (
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

// TestWatchOrKill: a watched child runs on and its exit is reported; a
// child the monitor refuses to watch (already watched, or the monitor is
// closed) is killed, and the refusal is returned.
func TestWatchOrKill(t *testing.T) {
	testutil.CheckLeaks(t)
	r, _ := newTestReaper(t, options{})

	release := r.Hold()
	pid := spawn(t, "sleep", nil)
	exits := make(chan Exit, 1)
	if err := WatchOrKill(r, pid, func(e Exit) { exits <- e }); err != nil {
		t.Fatalf("WatchOrKill(%d): %v", pid, err)
	}
	release()
	if state, _, ok := procStat(pid); !ok || state == 'Z' {
		t.Fatalf("watched child %d: state %q, present %v; want it running", pid, state, ok)
	}
	// Refused: pid is watched already. The kill ends it, and the first
	// watch reports the SIGKILL.
	release = r.Hold()
	if err := WatchOrKill(r, pid, func(Exit) { t.Error("second onExit called") }); err == nil {
		t.Fatalf("WatchOrKill of a watched pid succeeded")
	}
	release()
	if e := waitExit(t, exits); e.Pid != pid || e.Status != 128+int(unix.SIGKILL) {
		t.Fatalf("exit = %+v, want pid %d killed by SIGKILL", e, pid)
	}

	// Refused: the monitor is closed. Nothing reaps the child now, so the
	// test does, and finds it killed.
	release = r.Hold()
	defer release()
	pid = spawn(t, "sleep", nil)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := WatchOrKill(r, pid, func(Exit) { t.Error("onExit called after Close") }); err == nil {
		t.Fatalf("WatchOrKill on a closed monitor succeeded")
	}
	if ws := reapDirect(t, pid); !ws.Signaled() || ws.Signal() != unix.SIGKILL {
		t.Fatalf("child %d ended with %v, want SIGKILL", pid, ws)
	}
}

// TestExitHandlingIsBusy: the handling of an exit (onExit) counts as work
// under way (New's busy, the trimmer's Begin): begun before onExit is
// called and ended after it returned, in both kinds of watch.
func TestExitHandlingIsBusy(t *testing.T) {
	for _, m := range testModes() {
		t.Run(m.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			var begun, active atomic.Int32
			opts := m.opts
			opts.busy = func() func() {
				begun.Add(1)
				active.Add(1)
				return func() { active.Add(-1) }
			}
			r, _ := newTestReaper(t, opts)
			release := r.Hold()
			defer release()
			pid := spawn(t, "exit:3", nil)
			during := make(chan int32, 1)
			exits := make(chan Exit, 1)
			if err := r.Watch(pid, func(e Exit) {
				during <- active.Load()
				exits <- e
			}); err != nil {
				t.Fatalf("Watch: %v", err)
			}
			release()
			if e := waitExit(t, exits); e.Status != 3 {
				t.Fatalf("exit = %+v, want status 3", e)
			}
			if got := <-during; got != 1 {
				t.Fatalf("work under way during onExit: %d, want 1", got)
			}
			waitFor(t, "the exit's work ended", func() bool { return active.Load() == 0 })
			if got := begun.Load(); got != 1 {
				t.Fatalf("work begun for one exit: %d, want 1", got)
			}
		})
	}
}
