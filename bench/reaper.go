package main

// The bench is a child subreaper: a shim server, once its `start` process has
// exited, is reparented to the nearest subreaper among its ancestors, and
// containerd (our child) is not one. So every shim server ends as our zombie,
// and its final CPU time can be read before it is reaped: from its
// process CPU-time clock (clock_gettime of MAKE_PROCESS_CPUCLOCK(pid,
// CPUCLOCK_SCHED)), which is the exact sum_exec_runtime of all its threads in
// nanoseconds, without its children (runc, the container). /proc/<pid>/stat
// has the same in 10 ms ticks, truncated per process: for a process whose
// whole life costs about that much, that is a bias, not noise.
//
// The `start` processes are containerd's children; their times are in
// containerd's cutime+cstime once it has reaped them (accumulated in
// nanoseconds, truncated only when read).

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const prSetChildSubreaper = 36

// reapedShim is a shim server that exited and was reaped by the bench.
type reapedShim struct {
	seq   int
	pid   int
	cpuNS uint64 // own CPU, without its waited-for children (runc)
	exact bool   // from the CPU-time clock; else from /proc/<pid>/stat ticks
}

type reaper struct {
	mu       sync.Mutex
	seq      int
	reaped   []reapedShim
	zombieAt map[int]time.Time // non-shim zombies first seen

	stop chan struct{}
	done chan struct{}
}

func startReaper() (*reaper, error) {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return nil, fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
	r := &reaper{zombieAt: map[int]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	sig := make(chan os.Signal, 16)
	signal.Notify(sig, syscall.SIGCHLD)
	go func() {
		defer close(r.done)
		defer signal.Stop(sig)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.stop:
				r.sweep()
				return
			case <-sig:
			case <-tick.C:
			}
			r.sweep()
		}
	}()
	return r, nil
}

func (r *reaper) close() {
	close(r.stop)
	<-r.done
}

// children lists the bench's child pids, from every thread's children file.
func children() []int {
	self := os.Getpid()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", self))
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", self, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

// sweep records and reaps zombie shim servers among our children. Other
// zombies (orphaned container processes after a shim was killed) are reaped
// once they have been zombies for 2 s: our own commands (ctr, runc, ...) are
// waited for by os/exec long before that, and must not be reaped here.
func (r *reaper) sweep() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	zombies := map[int]bool{}
	for _, pid := range children() {
		st, err := readStat(pid)
		if err != nil || st.state != 'Z' {
			continue
		}
		zombies[pid] = true
		if strings.HasPrefix(st.comm, "containerd-shim") {
			cpu, err := processCPU(pid)
			exact := err == nil
			if !exact {
				cpu = (st.utime + st.stime) * (1e9 / clockTick)
			}
			if debug {
				logf("reaper: shim %d: clock %.2f ms (%v), stat %d ticks", pid, float64(cpu)/1e6, err, st.utime+st.stime)
			}
			var ws syscall.WaitStatus
			if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && got == pid {
				r.seq++
				r.reaped = append(r.reaped, reapedShim{seq: r.seq, pid: pid, cpuNS: cpu, exact: exact})
			}
			continue
		}
		if ownCommands[st.comm] {
			continue // os/exec waits for these
		}
		first, ok := r.zombieAt[pid]
		if !ok {
			r.zombieAt[pid] = now
			continue
		}
		if now.Sub(first) > 2*time.Second {
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			delete(r.zombieAt, pid)
		}
	}
	// Forget zombies reaped by someone else, so a reused pid starts afresh.
	for pid := range r.zombieAt {
		if !zombies[pid] {
			delete(r.zombieAt, pid)
		}
	}
}

// ownCommands are the comms of what the bench runs itself (os/exec waits for them).
var ownCommands = map[string]bool{"ctr": true, "runc": true, "crun": true, "containerd": true, "go": true, "git": true, "busybox": true, floorComm: true}

// mark returns a position; cpuSince sums the shims reaped after it.
func (r *reaper) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seq
}

// cpuSince returns the CPU time of the shim servers reaped after mark, how
// many they were and how many of them were measured only in ticks.
func (r *reaper) cpuSince(mark int) (cpu time.Duration, n, inexact int) {
	r.sweep()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.reaped {
		if s.seq > mark {
			cpu += time.Duration(s.cpuNS)
			n++
			if !s.exact {
				inexact++
			}
		}
	}
	return cpu, n, inexact
}

// processCPU reads the CPU-time clock of process pid (also a zombie's, until
// it is reaped): the sum of its threads' runtime, in nanoseconds.
func processCPU(pid int) (uint64, error) {
	const cpuclockSched = 2
	clock := int64((^pid)<<3 | cpuclockSched)
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, uintptr(clock), uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		return 0, errno
	}
	return uint64(ts.Sec)*1e9 + uint64(ts.Nsec), nil
}
