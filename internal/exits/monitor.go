package exits

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Monitor is the shim's process monitor, as every package that starts,
// watches or signals a process sees it. *Reaper implements it; a test may
// put a fake in its place, and `delete`, which runs no monitor, one that
// holds nothing and watches nothing.
//
// The contract:
//
//   - Hold suspends the orphan sweep until the returned release is called.
//     Holds nest, and calling release more than once is harmless. Every
//     process the shim starts runs under a Hold taken before it is started,
//     until os/exec has waited for it or its pid was passed to Watch: so no
//     sweep can reap it first, and its pid cannot be reused meanwhile.
//   - Watch reports the exit of pid, a child of the shim, by calling onExit
//     exactly once, from a goroutine the monitor owns and without a lock of
//     the monitor held, unless the monitor is closed first. It fails if pid
//     is not a child, is watched already, or the monitor is closed; then
//     onExit is never called. Call it under the Hold of the process's start.
//     onExit must not close the monitor.
//   - Signal signals a watched pid in a way that cannot reach another
//     process that reused the pid (a pidfd). A pid that is not watched, or
//     whose exit was collected, is an error wrapping ESRCH.
type Monitor interface {
	Hold() (release func())
	Watch(pid int, onExit func(Exit)) error
	Signal(pid int, sig syscall.Signal) error
}

var _ Monitor = (*Reaper)(nil)

// WatchOrKill watches pid with m, and if m refuses, kills pid with SIGKILL
// and returns m's error: a child whose exit nobody would report must not run
// on. It is the one register-then-watch step of every launch (the runtime's
// create, exec and restore, a logging binary). Call it under the Hold taken
// before pid was started, which keeps pid the shim's own child, so the kill
// cannot reach another process. A pid <= 0 (which kill(2) would take for a
// process group, or every process) is never signalled.
func WatchOrKill(m Monitor, pid int, onExit func(Exit)) error {
	if err := m.Watch(pid, onExit); err != nil {
		if pid > 0 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		return err
	}
	return nil
}
