// Package exits collects the exit status of the shim's child processes.
//
// The shim is a child subreaper: container processes left behind by
// `runc create` and `runc exec --detach` are reparented to it, and so is every
// orphaned descendant. This package reaps all of them without stealing exits
// from os/exec and without ever attributing an exit to the wrong process.
//
// Invariants:
//
//   - Holds. While any Hold is active the orphan sweep does not reap anything.
//     Every os/exec command (runc create, exec, kill, ...) and every launch
//     whose pid is learnt afterwards must run under a Hold, from before the
//     process is started until its pid is passed to Watch or its cmd.Wait has
//     returned. A sweep asked for during a Hold runs when the last Hold is
//     released.
//   - Watch. A watched pid is reaped only by its own watcher, through a pidfd
//     (waitid(P_PIDFD)), so a pid that is reused cannot be misattributed. The
//     watcher waits in Go's netpoller: no OS thread is blocked per process.
//     onExit is called exactly once per successful Watch, from the watcher
//     goroutine, without any lock held, unless Close cancels the watch first.
//   - Sweep. On every SIGCHLD (and once at start), if no Hold is active, every
//     zombie child of the process that is not watched is reaped with
//     wait4(pid, WNOHANG). The sweep never blocks and never touches a watched
//     pid.
//   - Close stops every goroutine the Reaper started and waits for it. No exit
//     is collected after Close has begun; onExit calls for exits collected
//     before that are allowed to finish, and Close waits for them.
//   - Pause (live upgrade, handover.go). From Pause until Unpause no watcher
//     reaps and no sweep runs: every exit stays a zombie, which the kernel
//     keeps across execve. Pause returns once every onExit of an exit
//     collected before it has returned. After Unpause an exit that happened
//     meanwhile is collected and reported exactly once, as if nothing had
//     happened. A Reaper made by NewAdopted watches a handed pid through
//     the handed pidfd and its sweep never reaps a handed pid before Watch
//     claims it or ForgetAdopted gives it up.
package exits

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// lostStatus is reported when a watched process was reaped by someone else
// (a bug outside this package) and its real status is unknown. It matches
// what containerd reports for an exit it could not collect.
const lostStatus = 255

// Exit is how a process ended.
type Exit struct {
	Pid int
	// Status is the exit code, or 128+signal number if a signal killed the
	// process. It is 255 if the status was lost because something else reaped
	// the process (logged at Warn).
	Status int
	At     time.Time // when the shim collected it
}

// options are internal switches; the tests use them to exercise the fallback
// paths on a kernel that does not need them.
type options struct {
	// noPidfd makes Watch behave as if pidfd_open answered ENOSYS.
	noPidfd bool
	// statScan makes the sweep list children by scanning /proc/*/stat, as if
	// /proc/self/task/*/children did not exist.
	statScan bool
	// busy is New's busy; never nil in a Reaper.
	busy func() (end func())
}

// notBusy is the busy of a Reaper made without one.
func notBusy() (end func()) { return func() {} }

// Reaper reaps the children of this process: watched ones through their own
// watcher goroutine, which reports the exit to a callback, and every other one
// (orphans) through the SIGCHLD-driven sweep, which is suspended while a Hold
// is active. A Reaper must be created with New and is safe for concurrent use.
// Create at most one per process: the sweep reaps every unwatched zombie child.
type Reaper struct {
	logger *slog.Logger
	opts   options
	self   int // os.Getpid()
	// childrenFile is true if /proc/<pid>/task/<tid>/children exists.
	childrenFile bool

	sigCh chan os.Signal // SIGCHLD notifications; sent by os/signal, never closed
	kick  chan struct{}  // buffered 1; the last Hold release asks for a deferred sweep
	done  chan struct{}  // closed by Close; stops the sweeper and fallback watchers

	// wg counts the goroutines the Reaper started (the sweeper and one watcher
	// per watched pid). Add is only called with mu held and closed false.
	wg sync.WaitGroup

	// mu guards holds, pending, closed, watched and chld. Reaping (waitid,
	// wait4) is done with mu held so that a sweep can never reap a pid that is
	// being watched or reap anything while a Hold is active.
	mu sync.Mutex
	// holds is the number of active Holds.
	holds int
	// pending is true if a sweep was skipped because of a Hold.
	pending bool
	// closed is set by Close.
	closed bool
	// watched maps each watched pid to its pidfd (nil on the wait4 fallback).
	// A pid is removed when its exit is collected.
	watched map[int]*os.File
	// chld is closed and replaced by the sweeper on every SIGCHLD, and by
	// Unpause; it wakes the fallback watchers, which have no pidfd to wait
	// on.
	chld chan struct{}

	// Live upgrade (handover.go). paused is set by Pause: no watcher reaps
	// and the sweep is held (it records pending), so every exit from then
	// on stays a zombie. resume is made by Pause and closed by Unpause: the
	// pidfd watchers that found the Reaper paused wait on it. reporting
	// counts the exits collected whose onExit has not returned yet (taken
	// in the critical section that reaps); idle, made by a Pause that found
	// reporting > 0, is closed when it drops to 0. looks counts, per pid,
	// the times its watcher tried to reap (the tests observe it); an entry
	// goes when the exit is collected. adopted maps the pids a NewAdopted
	// Reaper was handed and no Watch has claimed yet to their pidfds (nil:
	// the wait4 fallback); the sweep skips them like watched pids, until
	// ForgetAdopted.
	paused    bool
	resume    chan struct{}
	reporting int
	idle      chan struct{}
	looks     map[int]int
	adopted   map[int]*os.File
}

// New makes this process a child subreaper, starts listening for SIGCHLD and
// runs a first sweep. A nil logger discards logs. busy, if not nil, is
// called before each onExit and the func it returns after onExit returned,
// so that the idle trimmer (trim.Trimmer.Begin) counts the handling of an
// exit as work under way; it must not block. The caller must Close the
// Reaper. The subreaper attribute is not cleared by Close.
func New(logger *slog.Logger, busy func() (end func())) (*Reaper, error) {
	return newReaper(logger, options{busy: busy}, nil)
}

// newReaper makes a Reaper; if from is not nil it adopts the pids and
// pidfds it describes before the sweeper starts (NewAdopted).
func newReaper(logger *slog.Logger, opts options, from *Handed) (*Reaper, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.busy == nil {
		opts.busy = notBusy
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("exits: set child subreaper: %w", err)
	}
	self := os.Getpid()
	_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d/children", self, self))
	r := &Reaper{
		logger:       logger,
		opts:         opts,
		self:         self,
		childrenFile: err == nil && !opts.statScan,
		sigCh:        make(chan os.Signal, 1),
		kick:         make(chan struct{}, 1),
		done:         make(chan struct{}),
		watched:      make(map[int]*os.File),
		looks:        make(map[int]int),
		chld:         make(chan struct{}),
	}
	if from != nil {
		// Before the sweeper starts: its first sweep would reap a handed
		// pid that exited during the hand-over, and its status with it.
		if err := r.adopt(*from); err != nil {
			return nil, err
		}
	}
	signal.Notify(r.sigCh, syscall.SIGCHLD)
	r.wg.Add(1)
	go r.runSweeper()
	return r, nil
}

// Hold suspends the orphan sweep until the returned release func is called.
// Holds nest: the sweep resumes when the last one is released, and a sweep
// requested meanwhile runs then. Calling release more than once is harmless.
// Take a Hold before starting any process that os/exec will Wait for, or
// whose pid will be passed to Watch, and release it after cmd.Wait returned
// or Watch was called.
func (r *Reaper) Hold() (release func()) {
	r.mu.Lock()
	r.holds++
	r.mu.Unlock()
	var once sync.Once
	return func() { once.Do(r.release) }
}

func (r *Reaper) release() {
	r.mu.Lock()
	r.holds--
	sweep := r.holds == 0 && r.pending && !r.closed && !r.paused
	if sweep {
		r.pending = false
	}
	r.mu.Unlock()
	if sweep {
		r.kickSweep()
	}
}

// kickSweep asks the sweeper for a sweep (the one deferred by a Hold or a
// pause, or one for pids given up), without blocking.
func (r *Reaper) kickSweep() {
	select {
	case r.kick <- struct{}{}:
	default: // a sweep is already queued
	}
}

// Watch reports the exit of pid, a child of this process, by calling onExit
// exactly once from a goroutine owned by the Reaper (unless Close cancels the
// watch first). Call it while a Hold taken before the process was started is
// active, so that the process, even if it has already exited, cannot be reaped
// by the sweep before Watch. The process may already be a zombie.
//
// Watch fails if pid does not exist, is not a child of this process, is
// already watched, or if the Reaper is closed. onExit must not call Close.
func (r *Reaper) Watch(pid int, onExit func(Exit)) error {
	if pid <= 0 {
		return fmt.Errorf("exits: watch pid %d: invalid pid", pid)
	}
	if onExit == nil {
		return fmt.Errorf("exits: watch pid %d: nil onExit", pid)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("exits: watch pid %d: reaper is closed", pid)
	}
	if _, ok := r.watched[pid]; ok {
		return fmt.Errorf("exits: watch pid %d: already watched", pid)
	}
	// The child check and the insertion into watched happen under mu, so no
	// sweep can reap pid in between. A pid handed over by a live upgrade
	// is watched through the pidfd the old image opened.
	var f *os.File
	var err error
	if af, ok := r.adopted[pid]; ok {
		delete(r.adopted, pid)
		f, err = r.claimLocked(pid, af)
	} else {
		f, err = r.openLocked(pid)
	}
	if err != nil {
		return fmt.Errorf("exits: watch pid %d: %w", pid, err)
	}
	r.watched[pid] = f
	r.wg.Add(1)
	if f != nil {
		go r.watchPidfd(pid, f, onExit)
	} else {
		go r.watchWait4(pid, onExit)
	}
	return nil
}

// openLocked checks that pid is a child of this process and returns a
// pollable pidfd for it, or nil if pidfd_open is not available (the caller
// then uses the wait4 fallback).
func (r *Reaper) openLocked(pid int) (*os.File, error) {
	fd := -1
	var err error = unix.ENOSYS
	if !r.opts.noPidfd {
		fd, err = unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	}
	if errors.Is(err, unix.ENOSYS) {
		return nil, r.checkChildLocked(pid)
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open: %w", err)
	}
	var info siginfo
	if err := waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ECHILD) {
			return nil, fmt.Errorf("not a child of this process (pid %d): %w", r.self, err)
		}
		return nil, fmt.Errorf("waitid: %w", err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)), nil
}

// checkChildLocked is the child check of the wait4 fallback: waitid(P_PID)
// with WNOWAIT answers ECHILD for a process that is not our child.
func (r *Reaper) checkChildLocked(pid int) error {
	var info siginfo
	err := waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.ECHILD) {
		if kerr := unix.Kill(pid, 0); errors.Is(kerr, unix.ESRCH) {
			return kerr
		}
		return fmt.Errorf("not a child of this process (pid %d): %w", r.self, err)
	}
	return fmt.Errorf("waitid: %w", err)
}

// Close stops the sweep, cancels every watch whose exit has not been
// collected (their onExit is never called), closes every pidfd (the adopted
// ones no Watch claimed too) and waits for every goroutine the Reaper
// started, including running onExit calls. It is idempotent and always
// returns nil. Cancelled processes are left unreaped. Close reaps nothing
// and closes only the Reaper's own descriptors, so on a paused Reaper whose
// pids were handed over it abandons them without side effects: duplicates
// of its pidfds (HandOver's) stay valid.
func (r *Reaper) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.wg.Wait()
		return nil
	}
	r.closed = true
	files := make([]*os.File, 0, len(r.watched)+len(r.adopted))
	for _, f := range r.watched {
		if f != nil {
			files = append(files, f)
		}
	}
	for _, f := range r.adopted {
		if f != nil {
			files = append(files, f)
		}
	}
	r.adopted = nil
	r.mu.Unlock()

	signal.Stop(r.sigCh)
	close(r.done)
	for _, f := range files {
		// Wakes the watcher's rc.Read. The watcher may have closed f
		// already (os.ErrClosed), which is fine.
		_ = f.Close()
	}
	r.wg.Wait()
	return nil
}

// exitStatus converts a wait status to the shim's convention: the exit code,
// or 128+signal if a signal killed the process.
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
