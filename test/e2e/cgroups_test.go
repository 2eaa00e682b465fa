package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ticker is a container command that counts in a shell variable and writes
// "<token> <count>" to /dev/shm/tick every 50 ms. The token is the shell's
// start time (field 22 of /proc/1/stat), which a restored process keeps and
// a restarted one does not.
var ticker = []string{"/bin/sh", "-c",
	`tok=$(cut -d" " -f22 /proc/$$/stat); i=0; while :; do i=$((i+1)); echo "$tok $i" > /dev/shm/tick; usleep 50000; done`}

// readTick reads the token and count the ticker of the container whose init is pid wrote last.
func readTick(pid int) (tok string, n int, err error) {
	s, err := readTrim(fmt.Sprintf("/proc/%d/root/dev/shm/tick", pid))
	if err != nil {
		return "", 0, err
	}
	f := strings.Fields(s)
	if len(f) != 2 {
		return "", 0, fmt.Errorf("tick file holds %q", s)
	}
	n, err = strconv.Atoi(f[1])
	return f[0], n, err
}

// waitTickAbove waits until the ticker of pid has counted beyond n and returns what it wrote.
func waitTickAbove(t *testing.T, pid, n int, what string) (string, int) {
	t.Helper()
	var tok string
	var got int
	waitFor(t, 30*time.Second, what, func() (bool, string) {
		var err error
		tok, got, err = readTick(pid)
		return err == nil && got > n, fmt.Sprintf("tick %q %d (err %v), want > %d; pid %d state %s", tok, got, err, n, pid, procState(pid))
	})
	return tok, got
}

// ctr task metrics shows the container's cgroup v1 metrics with non-zero
// memory and cpu usage.
func TestTaskMetrics(t *testing.T) {
	forEachVersion(t, "metrics", func(t *testing.T, d *daemon, ns string) {
		// Some work first, so that the cpu usage is not a rounding error.
		d.runDetachedCmd(t, ns, "m1", nil, "/bin/sh", "-c",
			`i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec /bin/sleep 1000000`)
		tk := d.waitStatus(t, ns, "m1", "RUNNING")
		waitFor(t, 60*time.Second, "the container's loop to end in sleep", func() (bool, string) {
			return procName(tk.pid) == "sleep", fmt.Sprintf("pid %d is %q", tk.pid, procName(tk.pid))
		})
		out := d.mustCtr(t, ns, "task", "metrics", "m1")
		values := map[string]string{}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) >= 2 {
				values[f[0]] = f[1]
			}
		}
		// memory.usage_in_bytes and cpuacct.usage are what ctr prints for an
		// io.containerd.cgroups.v1.Metrics (v2 metrics have other names).
		for _, key := range []string{"memory.usage_in_bytes", "cpuacct.usage"} {
			v, ok := values[key]
			n, err := strconv.ParseUint(v, 10, 64)
			switch {
			case !ok:
				t.Errorf("ctr task metrics shows no %s (not cgroup v1 metrics?):\n%s", key, out)
			case err != nil || n == 0:
				t.Errorf("ctr task metrics: %s = %q, want a non-zero number:\n%s", key, v, out)
			default:
				t.Logf("%s = %d", key, n)
			}
		}
		// The numbers are the container's: its memory cgroup's usage is of the same order.
		if v, err := readTrim(d.cgroupFile(t, ns, "m1", "memory", "memory.usage_in_bytes")); err != nil {
			t.Errorf("the container's memory cgroup: %v", err)
		} else {
			t.Logf("memory.usage_in_bytes of the container's cgroup now: %s", v)
		}
	})
}

// A container limited to 32 MiB that allocates 256 MiB (busybox dd with a
// 256 MiB buffer, filled from /dev/zero) is OOM-killed: /tasks/oom comes
// before its /tasks/exit, and the exit status is 137.
func TestOOMKill(t *testing.T) {
	forEachVersion(t, "oom", func(t *testing.T, d *daemon, ns string) {
		ev := d.watchEvents(t)
		d.runDetachedCmd(t, ns, "o1", []string{"--memory-limit", "33554432"},
			"/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1")
		var exit taskEvent
		waitFor(t, 60*time.Second, "the /tasks/exit event of o1", func() (bool, string) {
			var ok bool
			exit, ok = ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("o1", "o1") })
			return ok, "events so far:\n" + ev.String()
		})
		if got := exit.exitStatus(); got != 137 {
			t.Errorf("exit_status %d for the OOM-killed o1, want 137: %s", got, exit.line)
		}
		// The kernel did kill it for memory: the cgroup (kept until task rm) counted an OOM kill.
		limit, errL := readTrim(d.cgroupFile(t, ns, "o1", "memory", "memory.limit_in_bytes"))
		oom, errO := readTrim(d.cgroupFile(t, ns, "o1", "memory", "memory.oom_control"))
		if errL != nil || errO != nil {
			t.Errorf("the memory cgroup of o1 after its exit: %v %v", errL, errO)
		} else {
			t.Logf("memory.limit_in_bytes %s; memory.oom_control %q", limit, oom)
			if limit != "33554432" {
				t.Errorf("memory.limit_in_bytes %s, want 33554432", limit)
			}
			if !strings.Contains(oom, "oom_kill ") || strings.Contains(oom, "oom_kill 0") {
				t.Errorf("memory.oom_control shows no OOM kill: %q", oom)
			}
		}
		oomEv, ok := ev.find(ns, 0, func(e taskEvent) bool {
			return e.topic == "/tasks/oom" && e.str("container_id") == "o1"
		})
		switch {
		case !ok:
			// Look again a little later, to tell "late" from "never".
			time.Sleep(2 * time.Second)
			if oomEv, ok = ev.find(ns, 0, func(e taskEvent) bool {
				return e.topic == "/tasks/oom" && e.str("container_id") == "o1"
			}); ok {
				t.Errorf("/tasks/oom of o1 (#%d) came after its /tasks/exit (#%d); events:\n%s", oomEv.index, exit.index, ev.String())
			} else {
				t.Errorf("no /tasks/oom for o1; events:\n%s", ev.String())
			}
		case oomEv.index > exit.index:
			t.Errorf("/tasks/oom of o1 (#%d) came after its /tasks/exit (#%d); events:\n%s", oomEv.index, exit.index, ev.String())
		default:
			t.Logf("/tasks/oom #%d before /tasks/exit #%d", oomEv.index, exit.index)
		}
		d.ctr(t, ns, "task", "rm", "o1") // exits non-zero: the task exited 137
		d.mustCtr(t, ns, "container", "rm", "o1")
	})
}

// ctr task pause freezes the container's processes (freezer FROZEN, each
// process in state D or T, the ticker stops) and publishes /tasks/paused;
// ctr task resume thaws them (the ticker goes on) and publishes /tasks/resumed.
func TestPauseResume(t *testing.T) {
	forEachVersion(t, "pause", func(t *testing.T, d *daemon, ns string) {
		ev := d.watchEvents(t)
		d.runDetachedCmd(t, ns, "p1", nil, ticker...)
		tk := d.waitStatus(t, ns, "p1", "RUNNING")
		waitTickAbove(t, tk.pid, 0, "the ticker to start")
		freezer := filepath.Dir(d.cgroupFile(t, ns, "p1", "freezer", "freezer.state"))

		d.mustCtr(t, ns, "task", "pause", "p1")
		d.waitStatus(t, ns, "p1", "PAUSED")
		waitFor(t, 30*time.Second, "the freezer cgroup FROZEN", func() (bool, string) {
			s, err := readTrim(filepath.Join(freezer, "freezer.state"))
			return s == "FROZEN", fmt.Sprintf("freezer.state %q (%v)", s, err)
		})
		pids, err := cgroupPids(freezer)
		if err != nil || len(pids) == 0 {
			t.Fatalf("processes of the freezer cgroup %s: %v %v", freezer, pids, err)
		}
		waitFor(t, 30*time.Second, "every process of p1 frozen (state D or T)", func() (bool, string) {
			var states []string
			ok := true
			for _, pid := range pids {
				s := procState(pid)
				states = append(states, fmt.Sprintf("%d:%s", pid, s))
				ok = ok && (s == "D" || s == "T")
			}
			return ok, strings.Join(states, " ")
		})
		_, frozenAt, err := readTick(tk.pid)
		if err != nil {
			t.Fatal(err)
		}
		// A frozen shell does not count: the value stays the same a while later.
		time.Sleep(time.Second)
		if _, n, _ := readTick(tk.pid); n != frozenAt {
			t.Errorf("the ticker moved from %d to %d while p1 was paused", frozenAt, n)
		}
		waitFor(t, 30*time.Second, "the /tasks/paused event of p1", func() (bool, string) {
			_, ok := ev.find(ns, 0, func(e taskEvent) bool { return e.topic == "/tasks/paused" && e.str("container_id") == "p1" })
			return ok, "events so far:\n" + ev.String()
		})

		d.mustCtr(t, ns, "task", "resume", "p1")
		d.waitStatus(t, ns, "p1", "RUNNING")
		if s, err := readTrim(filepath.Join(freezer, "freezer.state")); s != "THAWED" {
			t.Errorf("freezer.state %q (%v) after resume, want THAWED", s, err)
		}
		waitTickAbove(t, tk.pid, frozenAt, "the ticker to go on after resume")
		var paused, resumed taskEvent
		waitFor(t, 30*time.Second, "the /tasks/resumed event of p1", func() (bool, string) {
			var ok bool
			resumed, ok = ev.find(ns, 0, func(e taskEvent) bool { return e.topic == "/tasks/resumed" && e.str("container_id") == "p1" })
			return ok, "events so far:\n" + ev.String()
		})
		paused, _ = ev.find(ns, 0, func(e taskEvent) bool { return e.topic == "/tasks/paused" && e.str("container_id") == "p1" })
		if paused.index > resumed.index {
			t.Errorf("/tasks/paused (#%d) after /tasks/resumed (#%d); events:\n%s", paused.index, resumed.index, ev.String())
		}
	})
}

// An Update with a new memory limit, sent with the containerd Go client
// (ctr has no update command), changes memory.limit_in_bytes of the
// container's v1 memory cgroup.
func TestUpdateMemoryLimit(t *testing.T) {
	forEachVersion(t, "update", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "u1")
		limitFile := d.cgroupFile(t, ns, "u1", "memory", "memory.limit_in_bytes")
		before, err := readTrim(limitFile)
		if err != nil {
			t.Fatal(err)
		}
		c := d.goClient(t, ns)
		ctx, cancel := clientCtx(ns)
		defer cancel()
		cont, err := c.LoadContainer(ctx, "u1")
		if err != nil {
			t.Fatal(err)
		}
		task, err := cont.Task(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		prev := before
		for _, limit := range []int64{100 << 20, 48 << 20} {
			if err := task.Update(ctx, containerd.WithResources(&specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: &limit},
			})); err != nil {
				t.Fatalf("Update memory limit %d: %v", limit, err)
			}
			got, err := readTrim(limitFile)
			if err != nil || got != strconv.FormatInt(limit, 10) {
				t.Errorf("after Update to %d: %s holds %q (%v), before %s", limit, limitFile, got, err, prev)
			} else {
				t.Logf("memory.limit_in_bytes %s -> %s", prev, got)
			}
			prev = got
		}
		d.waitStatus(t, ns, "u1", "RUNNING")
	})
}

// ctr task ps lists an exec's pid with its exec id (ctr prints the
// containerd.runc.v1.ProcessDetails in the INFO column); the init has none.
func TestTaskPsExecID(t *testing.T) {
	forEachVersion(t, "psexec", func(t *testing.T, d *daemon, ns string) {
		const execID = "tether-exec-7"
		d.runDetached(t, ns, "c1")
		tk := d.waitStatus(t, ns, "c1", "RUNNING")
		ev := d.watchEvents(t)
		d.mustCtr(t, ns, "task", "exec", "-d", "--exec-id", execID, "c1", "/bin/sleep", "1000000")
		var started taskEvent
		waitFor(t, 30*time.Second, "the /tasks/exec-started event of "+execID, func() (bool, string) {
			var ok bool
			started, ok = ev.find(ns, 0, func(e taskEvent) bool {
				return e.topic == "/tasks/exec-started" && e.str("exec_id") == execID
			})
			return ok, "events so far:\n" + ev.String()
		})
		pid := started.num("pid")
		out := d.mustCtr(t, ns, "task", "ps", "c1")
		info := map[int]string{}
		for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if i == 0 || len(f) == 0 {
				continue
			}
			if n, err := strconv.Atoi(f[0]); err == nil {
				info[n] = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), f[0]))
			}
		}
		if got, ok := info[pid]; !ok {
			t.Errorf("ctr task ps does not list the exec's pid %d:\n%s", pid, out)
		} else if !strings.Contains(got, execID) {
			t.Errorf("ctr task ps: the INFO of exec pid %d is %q, want it to name %s:\n%s", pid, got, execID, out)
		}
		if got, ok := info[tk.pid]; !ok {
			t.Errorf("ctr task ps does not list the init's pid %d:\n%s", tk.pid, out)
		} else if strings.Contains(got, execID) {
			t.Errorf("ctr task ps: the init's INFO %q names the exec id:\n%s", got, out)
		}
		d.mustCtr(t, ns, "task", "kill", "--exec-id", execID, "-s", "SIGKILL", "c1")
		waitFor(t, 30*time.Second, "the exec to exit", func() (bool, string) {
			return !alive(pid), fmt.Sprintf("pid %d alive", pid)
		})
	})
}
