package exits

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// CLD_* values of siginfo.si_code for a child that terminated.
const (
	cldExited = 1 // exited; si_status is the exit code
	cldKilled = 2 // killed by signal si_status
	cldDumped = 3 // killed by signal si_status, dumped core
)

// collected is the outcome of one attempt to collect a watched exit.
type collected int

const (
	notYet    collected = iota // still running; wait for readiness
	gotExit                    // exit collected; report it
	cancelled                  // the Reaper is closed; report nothing
	parked                     // the Reaper is paused; wait for Unpause, reap nothing
)

// watchPidfd is the watcher goroutine of pid: it waits for the pidfd f to
// become readable in the netpoller, reaps pid through f and calls onExit.
func (r *Reaper) watchPidfd(pid int, f *os.File, onExit func(Exit)) {
	defer r.wg.Done()
	ex, state, err := r.awaitPidfd(pid, f)
	for err == nil && state == parked {
		// Paused: wait for Unpause, then look again (rc.Read tries
		// before it waits, so an exit that happened meanwhile, whose
		// readiness was consumed by the try that parked, is seen).
		if !r.waitUnpaused() {
			state = cancelled
			break
		}
		ex, state, err = r.awaitPidfd(pid, f)
	}
	// Closing f evicts it from the netpoller; Close may have done it already.
	_ = f.Close()
	if err != nil {
		// Not a cancellation: the netpoller refused the pidfd. pid is still
		// our unreaped child and stays in watched, so the sweep leaves it
		// alone, it cannot be reused, and wait4(pid) reaps the right process.
		r.logger.Warn("exits: pidfd wait failed, falling back to wait4", "pid", pid, "error", err)
		// f is closed: Signal must not use it any more.
		r.mu.Lock()
		if _, ok := r.watched[pid]; ok {
			r.watched[pid] = nil
		}
		r.mu.Unlock()
		r.watchWait4Loop(pid, onExit)
		return
	}
	if state == gotExit {
		r.report(ex, onExit)
	}
}

// report calls onExit with ex, counted as work under way (New's busy). The
// reap that collected ex counted it in reporting; report ends that.
func (r *Reaper) report(ex Exit, onExit func(Exit)) {
	defer r.reported()
	end := r.opts.busy()
	defer end()
	onExit(ex)
}

// reported ends the count of an exit being reported, and tells a Pause
// waiting for the last one.
func (r *Reaper) reported() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reporting--
	if r.reporting == 0 && r.idle != nil {
		close(r.idle)
		r.idle = nil
	}
}

// waitUnpaused waits until the Reaper is not paused; false if it was closed.
func (r *Reaper) waitUnpaused() bool {
	r.mu.Lock()
	paused, resume := r.paused, r.resume
	r.mu.Unlock()
	if !paused {
		return true
	}
	select {
	case <-resume:
		return true
	case <-r.done:
		return false
	}
}

// awaitPidfd collects the exit of pid through its pidfd f. err is non-nil
// only if waiting failed for another reason than Close.
func (r *Reaper) awaitPidfd(pid int, f *os.File) (Exit, collected, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return Exit{}, notYet, err
	}
	var ex Exit
	state := notYet
	var reapErr error
	rerr := rc.Read(func(fd uintptr) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		ex, state, reapErr = r.reapPidfdLocked(pid, int(fd))
		return state != notYet
	})
	if reapErr != nil {
		r.logger.Warn("exits: watched process was reaped elsewhere, status lost",
			"pid", pid, "status", ex.Status, "error", reapErr)
	}
	if state != notYet {
		return ex, state, nil
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed || errors.Is(rerr, os.ErrClosed) {
		return Exit{}, cancelled, nil
	}
	if rerr == nil {
		rerr = errors.New("pidfd wait ended without an exit")
	}
	return Exit{}, notYet, rerr
}

// reapPidfdLocked tries once, without blocking, to reap pid through its
// pidfd. A non-nil error means the exit was lost (reported as lostStatus).
func (r *Reaper) reapPidfdLocked(pid, pidfd int) (Exit, collected, error) {
	if r.closed {
		return Exit{}, cancelled, nil
	}
	r.looks[pid]++
	if r.paused {
		return Exit{}, parked, nil
	}
	var info siginfo
	err := waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|unix.WNOHANG)
	if err == nil && info.Pid == 0 {
		return Exit{}, notYet, nil
	}
	delete(r.watched, pid)
	delete(r.looks, pid)
	r.reporting++
	ex := Exit{Pid: pid, Status: lostStatus, At: time.Now()}
	if err != nil {
		return ex, gotExit, err
	}
	ex.Status = siginfoStatus(&info)
	return ex, gotExit, nil
}

// siginfoStatus converts the siginfo of a terminated child to the shim's
// convention: the exit code, or 128+signal if a signal killed it.
func siginfoStatus(info *siginfo) int {
	switch info.Code {
	case cldKilled, cldDumped:
		return 128 + int(info.Status)
	default: // cldExited
		return int(info.Status)
	}
}

// watchWait4 is the watcher goroutine of pid when pidfd_open is not
// available (ENOSYS).
func (r *Reaper) watchWait4(pid int, onExit func(Exit)) {
	defer r.wg.Done()
	r.watchWait4Loop(pid, onExit)
}

// watchWait4Loop collects the exit of pid with wait4(pid, WNOHANG), retried
// on every SIGCHLD (the sweeper closes r.chld), and calls onExit. No thread
// is blocked and Close (r.done) stops it. While the Reaper is paused it
// reaps nothing and waits for the next wake-up (Unpause closes r.chld too).
// pid cannot be reused meanwhile: it is our child, it stays in watched so
// the sweep skips it, and only this loop reaps it.
func (r *Reaper) watchWait4Loop(pid int, onExit func(Exit)) {
	for {
		r.mu.Lock()
		// Taken before trying wait4, so a SIGCHLD after the try wakes us.
		wake := r.chld
		ex, state, err := r.reapWait4Locked(pid)
		r.mu.Unlock()
		if err != nil {
			r.logger.Warn("exits: watched process was reaped elsewhere, status lost",
				"pid", pid, "status", ex.Status, "error", err)
		}
		switch state {
		case gotExit:
			r.report(ex, onExit)
			return
		case cancelled:
			return
		}
		// notYet or parked.
		select {
		case <-wake:
		case <-r.done:
		}
	}
}

// reapWait4Locked tries once, without blocking, to reap pid with wait4. A
// non-nil error means the exit was lost (reported as lostStatus).
func (r *Reaper) reapWait4Locked(pid int) (Exit, collected, error) {
	if r.closed {
		return Exit{}, cancelled, nil
	}
	r.looks[pid]++
	if r.paused {
		return Exit{}, parked, nil
	}
	var ws unix.WaitStatus
	wpid, err := wait4(pid, &ws, unix.WNOHANG)
	if err == nil && wpid == 0 {
		return Exit{}, notYet, nil
	}
	delete(r.watched, pid)
	delete(r.looks, pid)
	r.reporting++
	ex := Exit{Pid: pid, Status: lostStatus, At: time.Now()}
	if err != nil {
		return ex, gotExit, err
	}
	ex.Status = exitStatus(ws)
	return ex, gotExit, nil
}

// wait4 is unix.Wait4 retried on EINTR.
func wait4(pid int, ws *unix.WaitStatus, options int) (int, error) {
	for {
		wpid, err := unix.Wait4(pid, ws, options, nil)
		if !errors.Is(err, unix.EINTR) {
			return wpid, err
		}
	}
}
