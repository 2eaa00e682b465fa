package exits

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// runSweeper is the sweeper goroutine: one sweep at start, then one on every
// SIGCHLD and on every deferred-sweep request, until Close.
func (r *Reaper) runSweeper() {
	defer r.wg.Done()
	r.sweep()
	for {
		select {
		case <-r.done:
			return
		case <-r.sigCh:
			r.wakeFallbackWatchers()
			r.sweep()
		case <-r.kick:
			r.sweep()
		}
	}
}

// wakeFallbackWatchers tells the wait4 fallback watchers that a child
// changed state. r.chld is closed, under mu, only here and in Unpause.
func (r *Reaper) wakeFallbackWatchers() {
	r.mu.Lock()
	close(r.chld)
	r.chld = make(chan struct{})
	r.mu.Unlock()
}

// sweep reaps every zombie child that is not watched, unless a Hold is
// active, in which case it only records that a sweep is pending. It never
// blocks. The Hold check and each reap happen under mu, so a Hold taken
// during a sweep stops it before its next reap.
func (r *Reaper) sweep() {
	if !r.sweepAllowed() {
		return
	}
	pids, err := r.children()
	if err != nil {
		r.logger.Warn("exits: list children for orphan sweep", "error", err)
		return
	}
	for _, pid := range pids {
		r.mu.Lock()
		if !r.sweepAllowedLocked() {
			r.mu.Unlock()
			return
		}
		if _, ok := r.watched[pid]; ok {
			r.mu.Unlock()
			continue
		}
		if _, ok := r.adopted[pid]; ok {
			r.mu.Unlock()
			continue
		}
		// WNOHANG: reaps pid only if it is a zombie, never waits.
		var ws unix.WaitStatus
		wpid, err := wait4(pid, &ws, unix.WNOHANG)
		r.mu.Unlock()
		switch {
		case err == nil && wpid == pid:
			r.logger.Debug("exits: reaped orphan", "pid", pid, "status", exitStatus(ws))
		case err != nil && !errors.Is(err, unix.ECHILD):
			// ECHILD: the child was reaped by its own waiter (os/exec)
			// since the listing; nothing to do.
			r.logger.Warn("exits: reap orphan", "pid", pid, "error", err)
		}
	}
}

func (r *Reaper) sweepAllowed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sweepAllowedLocked()
}

// sweepAllowedLocked reports whether the sweep may reap now; if a Hold is
// active or the Reaper is paused it records the sweep as pending, to run at
// the last release or at Unpause.
func (r *Reaper) sweepAllowedLocked() bool {
	if r.closed {
		return false
	}
	if r.holds > 0 || r.paused {
		r.pending = true
		return false
	}
	return true
}

// children lists the candidates of the sweep: the children of every thread of
// this process from /proc/self/task/*/children (reparented orphans may hang
// under any thread), or, if that file does not exist, the zombies whose ppid
// is this process from /proc/*/stat.
func (r *Reaper) children() ([]int, error) {
	if !r.childrenFile {
		return r.zombiesFromStat()
	}
	taskDir := fmt.Sprintf("/proc/%d/task", r.self)
	tasks, err := os.ReadDir(taskDir)
	if err != nil {
		return nil, fmt.Errorf("exits: read %s: %w", taskDir, err)
	}
	var pids []int
	for _, task := range tasks {
		b, err := os.ReadFile(taskDir + "/" + task.Name() + "/children")
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue // the thread exited; its children moved to another thread
		}
		if err != nil {
			return nil, fmt.Errorf("exits: read children of task %s: %w", task.Name(), err)
		}
		for _, field := range bytes.Fields(b) {
			if pid, err := strconv.Atoi(string(field)); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// zombiesFromStat scans /proc/*/stat for zombies whose parent is this process.
func (r *Reaper) zombiesFromStat() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("exits: read /proc: %w", err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited and reaped meanwhile
		}
		state, ppid, ok := parseStat(b)
		if ok && ppid == r.self && state == 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// parseStat returns the state and ppid fields of a /proc/<pid>/stat line:
// "pid (comm) S ppid ...". comm may contain spaces and parentheses, so the
// fields are taken after the last ')'.
func parseStat(b []byte) (state byte, ppid int, ok bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := bytes.Fields(b[i+1:])
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], ppid, true
}
