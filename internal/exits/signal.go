package exits

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Signal sends sig to a watched pid. It goes through the pid's pidfd, and
// on the wait4 fallback through kill(2) with mu held: reaping also happens
// with mu held, so the pid cannot be reaped, let alone reused, while it is
// signalled. A pid that is not watched (never was, or its exit was
// collected) is an error wrapping ESRCH.
func (r *Reaper) Signal(pid int, sig syscall.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.watched[pid]
	if !ok {
		return fmt.Errorf("exits: signal pid %d: not a watched process: %w", pid, unix.ESRCH)
	}
	if f == nil {
		if err := unix.Kill(pid, sig); err != nil {
			return fmt.Errorf("exits: signal pid %d: %w", pid, err)
		}
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("exits: signal pid %d: %w", pid, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	}); err != nil {
		return fmt.Errorf("exits: signal pid %d: %w", pid, err)
	}
	if serr != nil {
		return fmt.Errorf("exits: signal pid %d: %w", pid, serr)
	}
	return nil
}
