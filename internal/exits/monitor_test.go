package exits

import (
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
