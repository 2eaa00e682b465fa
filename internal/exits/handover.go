package exits

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/handover"
)

// maxHandedFD bounds the descriptor numbers a Handed may name.
const maxHandedFD = 1 << 20

// Handed describes the Reaper across a live upgrade: the watched pids and
// the numbers of their pidfds in the hand-over's handover.Files. JSON. A
// pid whose exit happened during the hand-over is a zombie child of the
// new image: the kernel keeps it, with its status, across execve.
type Handed struct {
	// Pids are the watched pids (HandOver writes them in increasing order;
	// any order is read).
	Pids []HandedPid `json:"pids"`
}

// HandedPid is one watched pid.
type HandedPid struct {
	// Pid is a child of the shim, > 0.
	Pid int `json:"pid"`
	// Pidfd is the number of its pidfd in the new image (>= 3), or -1 if
	// the old image watched it with the wait4 fallback (no pidfd).
	Pidfd int `json:"pidfd"`
}

// Validate checks a Handed read back from a state document: every pid > 0
// and handed once, every pidfd -1 or a descriptor number >= 3, no number
// twice. It never panics, whatever h holds.
func (h Handed) Validate() error {
	pids := make(map[int]bool, len(h.Pids))
	fds := make(map[int]bool, len(h.Pids))
	for i, p := range h.Pids {
		switch {
		case p.Pid <= 0:
			return fmt.Errorf("exits: handed pid #%d: invalid pid %d", i, p.Pid)
		case pids[p.Pid]:
			return fmt.Errorf("exits: handed pid %d twice", p.Pid)
		case p.Pidfd != -1 && (p.Pidfd < 3 || p.Pidfd > maxHandedFD):
			return fmt.Errorf("exits: handed pid %d: invalid pidfd %d (want -1 or 3..%d)", p.Pid, p.Pidfd, maxHandedFD)
		case p.Pidfd != -1 && fds[p.Pidfd]:
			return fmt.Errorf("exits: handed pid %d: pidfd %d handed twice", p.Pid, p.Pidfd)
		}
		pids[p.Pid] = true
		if p.Pidfd != -1 {
			fds[p.Pidfd] = true
		}
	}
	return nil
}

// Pause stops collecting exits: no watcher reaps and the sweep is held, so
// a child that exits from now on stays a zombie for the new image. It waits,
// bounded by ctx, until no onExit is under way, and pauses only then: an
// onExit may itself wait for other exits (an init's waits for its execs'
// to be published first), which must still be collected meanwhile. Once
// Pause returned nil, no onExit runs until Unpause. Unpause undoes it.
//
// A pidfd watcher waiting in the netpoller is not woken: it reaps only
// under the Reaper's mutex, where it finds the pause, and then waits for
// Unpause (or Close). If ctx ends first, Pause returns an error wrapping
// ctx's and the Reaper is not paused. Pausing a paused Reaper does
// nothing. A closed Reaper cannot be paused.
func (r *Reaper) Pause(ctx context.Context) error {
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return errors.New("exits: pause: reaper is closed")
		}
		n := r.reporting
		if n == 0 || r.paused {
			// Under mu, where every reap counts itself in reporting:
			// no onExit can begin after this.
			if !r.paused {
				r.paused = true
				r.resume = make(chan struct{})
			}
			r.mu.Unlock()
			return nil
		}
		if r.idle == nil {
			r.idle = make(chan struct{})
		}
		idle := r.idle
		r.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("exits: pause: %d exits still being handled: %w", n, ctx.Err())
		}
	}
}

// Unpause resumes collecting exits after a failed hand-over: the watchers
// look again and collect the exits that happened meanwhile (each reported
// once), and a sweep held by the pause runs. It does nothing on a Reaper
// that is not paused.
func (r *Reaper) Unpause() {
	r.mu.Lock()
	if !r.paused {
		r.mu.Unlock()
		return
	}
	r.paused = false
	close(r.resume)
	r.resume = nil
	// The fallback watchers wait on chld.
	close(r.chld)
	r.chld = make(chan struct{})
	sweep := r.pending && r.holds == 0 && !r.closed
	if sweep {
		r.pending = false
	}
	r.mu.Unlock()
	if sweep {
		r.kickSweep()
	}
}

// HandOver, on a paused Reaper, duplicates the pidfds of the watched pids
// into files and returns the description. The Reaper is unchanged: after a
// failed hand-over, files.Close and Unpause and it goes on.
func (r *Reaper) HandOver(files *handover.Files) (Handed, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Handed{}, errors.New("exits: hand over: reaper is closed")
	}
	if !r.paused {
		return Handed{}, errors.New("exits: hand over: reaper is not paused")
	}
	h := Handed{Pids: make([]HandedPid, 0, len(r.watched))}
	for pid, f := range r.watched {
		p := HandedPid{Pid: pid, Pidfd: -1}
		if f != nil {
			fd, err := files.Add(f)
			if err != nil {
				return Handed{}, fmt.Errorf("exits: hand over the pidfd of %d: %w", pid, err)
			}
			p.Pidfd = fd
		}
		h.Pids = append(h.Pids, p)
	}
	slices.SortFunc(h.Pids, func(a, b HandedPid) int { return a.Pid - b.Pid })
	return h, nil
}

// NewAdopted is New for the image a live upgrade started: it takes the
// pids and pidfds h describes before its sweeper starts (an earlier sweep
// would reap a handed pid that exited during the hand-over, status and
// all). A later Watch of a handed pid uses its handed pidfd (and still
// checks that pid is a child); the sweep leaves a handed pid alone until
// Watch claims it or ForgetAdopted gives it up. It fails, taking nothing,
// if h does not Validate, and fails if a handed descriptor is not open or
// is not a pidfd of its pid; then every descriptor it took is closed.
func NewAdopted(logger *slog.Logger, busy func() (end func()), h Handed) (*Reaper, error) {
	return newReaper(logger, options{busy: busy}, &h)
}

// adopt takes the pidfds of h into r.adopted; r is not shared yet.
func (r *Reaper) adopt(h Handed) error {
	if err := h.Validate(); err != nil {
		return err
	}
	adopted := make(map[int]*os.File, len(h.Pids))
	var errs []error
	for _, p := range h.Pids {
		if p.Pidfd == -1 {
			adopted[p.Pid] = nil
			continue
		}
		f, err := handover.Take(p.Pidfd, "pidfd:"+strconv.Itoa(p.Pid))
		if err == nil {
			err = checkPidfd(p.Pidfd, p.Pid)
			if err != nil {
				f.Close()
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("exits: adopt pid %d: %w", p.Pid, err))
			continue
		}
		adopted[p.Pid] = f
	}
	if len(errs) > 0 {
		for _, f := range adopted {
			if f != nil {
				f.Close()
			}
		}
		return errors.Join(errs...)
	}
	r.adopted = adopted
	return nil
}

// checkPidfd checks, in /proc/self/fdinfo, that fd is a pidfd of pid.
func checkPidfd(fd, pid int) error {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("pidfd %d: %w", fd, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			if got, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && got == pid {
				return nil
			}
			return fmt.Errorf("descriptor %d is the pidfd of %s, not of %d", fd, strings.TrimSpace(v), pid)
		}
	}
	return fmt.Errorf("descriptor %d is not a pidfd", fd)
}

// claimLocked is Watch's child check for a handed pid, through its adopted
// pidfd f (nil: the wait4 fallback's check). On error f is closed.
func (r *Reaper) claimLocked(pid int, f *os.File) (*os.File, error) {
	if f == nil {
		return nil, r.checkChildLocked(pid)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("adopted pidfd: %w", err)
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		var info siginfo
		werr = waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT)
	}); err != nil {
		werr = err
	}
	if werr != nil {
		f.Close()
		if errors.Is(werr, unix.ECHILD) {
			return nil, fmt.Errorf("adopted pidfd: not a child of this process (pid %d): %w", r.self, werr)
		}
		return nil, fmt.Errorf("adopted pidfd: waitid: %w", werr)
	}
	return f, nil
}

// ForgetAdopted closes the adopted pidfds no Watch claimed, once every
// process the new image knows is watched again. The pids become orphans
// like any other: the sweep (run now, or when the last Hold is released)
// reaps them once they exit.
func (r *Reaper) ForgetAdopted() {
	r.mu.Lock()
	adopted := r.adopted
	r.adopted = nil
	sweep := false
	if len(adopted) > 0 && !r.closed {
		if r.holds > 0 || r.paused {
			r.pending = true
		} else {
			sweep = true
		}
	}
	r.mu.Unlock()
	pids := make([]int, 0, len(adopted))
	for pid, f := range adopted {
		pids = append(pids, pid)
		if f != nil {
			f.Close()
		}
	}
	if len(pids) > 0 {
		slices.Sort(pids)
		r.logger.Info("exits: handed pids nobody watched again, left to the sweep", "pids", pids)
	}
	if sweep {
		r.kickSweep()
	}
}
