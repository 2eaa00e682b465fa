//go:build tethervm

package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2/stats"
	apievents "github.com/containerd/containerd/api/events"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/testkit"
)

const mib = 1 << 20

// combo is one cell of the matrix: a containerd, a runtime, a cgroup driver,
// and the namespace its containers live in.
type combo struct {
	d       *daemon
	c       *containerd.Client
	runtime string
	driver  string
	ns      string
	ctx     context.Context // in ns, no deadline: cancelled at cleanup
}

// TestCgroupV2 runs the checks of checkCombo for every containerd version ×
// runtime × cgroup driver selected (one containerd per version).
func TestCgroupV2(t *testing.T) {
	for _, v := range versions {
		t.Run("containerd-"+v.name, func(t *testing.T) {
			d := startDaemon(t, v, "cg")
			c := d.client(t)
			for _, rt := range runtimes {
				for _, drv := range drivers {
					short := "tether"
					if rt == stockRuntime {
						short = "runc"
					}
					t.Run(short+"/"+drv, func(t *testing.T) {
						ns := fmt.Sprintf("vm-%s-%s-%s", v.tag, short, drv)
						ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), ns))
						cb := &combo{d: d, c: c, runtime: rt, driver: drv, ns: ns, ctx: ctx}
						off := d.LogSize()
						t.Cleanup(func() {
							cb.cleanup(t)
							cancel()
							if t.Failed() {
								t.Log(d.LogTail(off, 80))
							}
						})
						checkCombo(t, cb)
					})
				}
			}
		})
	}
}

// checkCombo: run with an exit code; the container's cgroup (and for the
// systemd driver its scope); exec; metrics; pause/resume; Update; OOM; kill
// and delete with the cgroup gone afterwards.
func checkCombo(t *testing.T, cb *combo) {
	t.Run("run-exit-code", func(t *testing.T) {
		cont, task := cb.create(t, "r1", nil, "/bin/sh", "-c", "echo started; exit 3")
		ctx, cancel := opCtx(cb.ctx)
		defer cancel()
		wait, err := task.Wait(ctx)
		if err != nil {
			t.Fatalf("Wait r1: %v", err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatalf("Start r1: %v", err)
		}
		st := <-wait
		if code, _, err := st.Result(); err != nil || code != 3 {
			t.Errorf("r1 exit status %d (%v), want 3", code, err)
		}
		ds, err := task.Delete(ctx)
		if err != nil {
			t.Fatalf("Delete task r1: %v", err)
		}
		if ds.ExitCode() != 3 {
			t.Errorf("Delete of r1 reports exit %d, want 3", ds.ExitCode())
		}
		if err := cont.Delete(ctx); err != nil {
			t.Errorf("Delete container r1: %v", err)
		}
	})

	// c1 runs a little shell loop (so its cpu usage is not nil), then sleeps.
	cont, task := cb.create(t, "c1", nil, "/bin/sh", "-c",
		`i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000000`)
	{
		ctx, cancel := opCtx(cb.ctx)
		err := task.Start(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Start c1: %v", err)
		}
	}
	cg := cb.expectedCgroup("c1")
	dir := filepath.Join("/sys/fs/cgroup", cg)

	t.Run("cgroup", func(t *testing.T) {
		got, err := procCgroup(int(task.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		if got != cg {
			t.Fatalf("c1 (pid %d) is in cgroup %q, want %q", task.Pid(), got, cg)
		}
		ctrl, err := readTrim(filepath.Join(dir, "cgroup.controllers"))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []string{"memory", "cpu", "pids"} {
			if !contains(strings.Fields(ctrl), c) {
				t.Errorf("controller %s not enabled in %s (cgroup.controllers %q)", c, dir, ctrl)
			}
		}
		if cb.driver == "systemd" {
			unit := filepath.Base(cg)
			out, err := exec.Command("systemctl", "is-active", unit).CombinedOutput()
			if strings.TrimSpace(string(out)) != "active" {
				t.Errorf("systemctl is-active %s: %q (%v), want active", unit, out, err)
			}
		}
	})

	t.Run("exec", func(t *testing.T) {
		ctx, cancel := opCtx(cb.ctx)
		defer cancel()
		spec, err := cont.Spec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pspec := *spec.Process
		pspec.Terminal = false
		pspec.Args = []string{"/bin/sh", "-c", "echo hi; cat /proc/self/cgroup; exit 5"}
		var out testkit.LockedBuffer
		p, err := task.Exec(ctx, "e1", &pspec, cio.NewCreator(cio.WithStreams(nil, &out, &out)))
		if err != nil {
			t.Fatalf("Exec e1: %v", err)
		}
		wait, err := p.Wait(ctx)
		if err != nil {
			t.Fatalf("Wait e1: %v", err)
		}
		if err := p.Start(ctx); err != nil {
			t.Fatalf("Start e1: %v", err)
		}
		st := <-wait
		waitIO(t, p.IO())
		if code, _, err := st.Result(); err != nil || code != 5 {
			t.Errorf("exec e1 exit status %d (%v), want 5", code, err)
		}
		if _, err := p.Delete(ctx); err != nil {
			t.Errorf("Delete e1: %v", err)
		}
		s := out.String()
		if !strings.Contains(s, "hi\n") || !strings.Contains(s, "0::"+cg+"\n") {
			t.Errorf("exec e1 printed %q, want hi and 0::%s (the container's cgroup)", s, cg)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		ctx, cancel := opCtx(cb.ctx)
		defer cancel()
		checkV2Metrics(ctx, t, task)
	})

	t.Run("pause-resume", func(t *testing.T) {
		ctx, cancel := opCtx(cb.ctx)
		defer cancel()
		if err := task.Pause(ctx); err != nil {
			t.Fatalf("Pause c1: %v", err)
		}
		cb.expectStatus(t, task, containerd.Paused)
		expectFile(t, filepath.Join(dir, "cgroup.freeze"), "1")
		waitFor(t, 30*time.Second, "cgroup.events frozen 1", func() (bool, string) {
			s, _ := readTrim(filepath.Join(dir, "cgroup.events"))
			return strings.Contains(s, "frozen 1"), s
		})
		if err := task.Resume(ctx); err != nil {
			t.Fatalf("Resume c1: %v", err)
		}
		cb.expectStatus(t, task, containerd.Running)
		expectFile(t, filepath.Join(dir, "cgroup.freeze"), "0")
		waitFor(t, 30*time.Second, "cgroup.events frozen 0", func() (bool, string) {
			s, _ := readTrim(filepath.Join(dir, "cgroup.events"))
			return strings.Contains(s, "frozen 0"), s
		})
	})

	t.Run("update", func(t *testing.T) {
		update := func(what string, r *specs.LinuxResources) bool {
			ctx, cancel := opCtx(cb.ctx)
			defer cancel()
			if err := task.Update(ctx, containerd.WithResources(r)); err != nil {
				t.Errorf("Update %s: %v", what, err)
				return false
			}
			return true
		}
		i64 := func(v int64) *int64 { return &v }
		u64 := func(v uint64) *uint64 { return &v }
		if update("memory 256 MiB", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(256 * mib)}}) {
			expectFile(t, filepath.Join(dir, "memory.max"), fmt.Sprint(256*mib))
		}
		if update("memory 128 MiB", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(128 * mib)}}) {
			expectFile(t, filepath.Join(dir, "memory.max"), fmt.Sprint(128*mib))
		}
		if update("cpu 50000/100000", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)}}) {
			expectFile(t, filepath.Join(dir, "cpu.max"), "50000 100000")
		}
		if update("unified pids.max", &specs.LinuxResources{Unified: map[string]string{"pids.max": "77"}}) {
			expectFile(t, filepath.Join(dir, "pids.max"), "77")
		}
		// OCI's swap is memory+swap: 192 MiB with a 128 MiB limit is 64 MiB of swap.
		if update("memory 128 MiB + swap 64 MiB", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(128 * mib), Swap: i64(192 * mib)}}) {
			expectFile(t, filepath.Join(dir, "memory.max"), fmt.Sprint(128*mib))
			expectFile(t, filepath.Join(dir, "memory.swap.max"), fmt.Sprint(64*mib))
		}
	})

	// The OOM-killed init races with the removal of its cgroup (systemd
	// removes an empty scope at once), so it runs several times, each a
	// subtest of its own: the log shows how often a TaskOOM was missed.
	for i := 1; i <= oomRuns(); i++ {
		id := fmt.Sprintf("o%d", i)
		t.Run("oom-"+id, func(t *testing.T) { cb.checkOOM(t, id) })
	}

	t.Run("kill-delete", func(t *testing.T) {
		ctx, cancel := opCtx(cb.ctx)
		defer cancel()
		wait, err := task.Wait(ctx)
		if err != nil {
			t.Fatalf("Wait c1: %v", err)
		}
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
			t.Fatalf("Kill c1: %v", err)
		}
		st := <-wait
		if code, _, err := st.Result(); err != nil || code != 137 {
			t.Errorf("c1 exit status %d (%v) after SIGKILL, want 137", code, err)
		}
		if _, err := task.Delete(ctx); err != nil {
			t.Fatalf("Delete task c1: %v", err)
		}
		if err := cont.Delete(ctx); err != nil {
			t.Errorf("Delete container c1: %v", err)
		}
		waitFor(t, 30*time.Second, "the cgroup of c1 removed", func() (bool, string) {
			_, err := os.Stat(dir)
			return os.IsNotExist(err), fmt.Sprintf("%s: stat: %v", dir, err)
		})
		if cb.driver == "systemd" {
			unit := filepath.Base(cg)
			waitFor(t, 30*time.Second, "the scope of c1 gone", func() (bool, string) {
				out, _ := exec.Command("systemctl", "is-active", unit).CombinedOutput()
				s := strings.TrimSpace(string(out))
				return s == "inactive" || s == "failed" || strings.Contains(s, "could not be found"), "systemctl is-active " + unit + ": " + s
			})
		}
	})
}

// checkV2Metrics fails the test unless task's metrics are
// io.containerd.cgroups.v2.Metrics with non-zero memory usage, cpu
// usage_usec and pids.current; it returns them.
func checkV2Metrics(ctx context.Context, t *testing.T, task containerd.Task) *stats.Metrics {
	t.Helper()
	m, err := task.Metrics(ctx)
	if err != nil {
		t.Fatalf("Metrics of %.12s: %v", task.ID(), err)
	}
	if m.Data == nil || m.Data.GetTypeUrl() != "io.containerd.cgroups.v2.Metrics" {
		t.Fatalf("Metrics of %.12s: type %q, want io.containerd.cgroups.v2.Metrics", task.ID(), m.Data.GetTypeUrl())
	}
	var s stats.Metrics
	if err := proto.Unmarshal(m.Data.GetValue(), &s); err != nil {
		t.Fatalf("Metrics of %.12s: %v", task.ID(), err)
	}
	t.Logf("%.12s: memory.usage %d, memory.usage_limit %d, cpu.usage_usec %d, pids.current %d", task.ID(),
		s.GetMemory().GetUsage(), s.GetMemory().GetUsageLimit(), s.GetCPU().GetUsageUsec(), s.GetPids().GetCurrent())
	if s.GetMemory().GetUsage() == 0 {
		t.Errorf("memory usage 0 in %v", s.GetMemory())
	}
	if s.GetCPU().GetUsageUsec() == 0 {
		t.Errorf("cpu usage 0 in %v", s.GetCPU())
	}
	if s.GetPids().GetCurrent() == 0 {
		t.Errorf("pids.current 0 in %v", s.GetPids())
	}
	return &s
}

// oomRuns is how many times checkOOM runs per combo: TETHER_VM_OOM_RUNS, default 3.
func oomRuns() int {
	n, err := strconv.Atoi(os.Getenv(envOOMRuns))
	if err != nil || n < 1 {
		return 3
	}
	return n
}

// checkOOM: container id limited to 32 MiB allocating 256 MiB is OOM-killed;
// TaskOOM comes before its TaskExit, the exit status is 137.
func (cb *combo) checkOOM(t *testing.T, id string) {
	ev := cb.watch(t)
	cont, task := cb.create(t, id, []oci.SpecOpts{oci.WithMemoryLimit(32 * mib)},
		"/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1")
	ctx, cancel := opCtx(cb.ctx)
	defer cancel()
	dir := filepath.Join("/sys/fs/cgroup", cb.expectedCgroup(id))
	// memory.events is hierarchical: the parent's oom_kill counts the
	// container's kills even once its cgroup is gone (systemd removes an
	// empty scope at once).
	parentBefore := oomKills(filepath.Dir(dir))
	wait, err := task.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait %s: %v", id, err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("Start %s: %v", id, err)
	}
	st := <-wait
	if code, _, err := st.Result(); err != nil || code != 137 {
		t.Errorf("%s exit status %d (%v), want 137", id, code, err)
	}
	_, statErr := os.Stat(dir)
	t.Logf("after the exit: the cgroup of %s exists: %v; oom_kill of the parent %s: %d → %d",
		id, statErr == nil, filepath.Dir(dir), parentBefore, oomKills(filepath.Dir(dir)))
	if after := oomKills(filepath.Dir(dir)); after <= parentBefore {
		t.Errorf("oom_kill in %s/memory.events did not grow (%d → %d): the kernel did not OOM-kill %s", filepath.Dir(dir), parentBefore, after, id)
	}
	if cb.driver == "cgroupfs" {
		// The cgroup stays until the task is deleted: the kernel counted the kill.
		if n := oomKills(dir); n < 1 {
			t.Errorf("memory.events of %s shows no OOM kill (oom_kill %d)", id, n)
		}
	}
	var exitAt, oomAt int
	waitFor(t, 30*time.Second, "TaskExit of "+id, func() (bool, string) {
		exitAt = ev.index(func(e any) bool {
			x, ok := e.(*apievents.TaskExit)
			return ok && x.ContainerID == id && x.ID == id
		})
		return exitAt >= 0, "events: " + ev.String()
	})
	oomAt = ev.index(func(e any) bool { x, ok := e.(*apievents.TaskOOM); return ok && x.ContainerID == id })
	switch {
	case oomAt < 0:
		// Look again a little later, to tell "late" from "never".
		time.Sleep(2 * time.Second)
		if oomAt = ev.index(func(e any) bool { x, ok := e.(*apievents.TaskOOM); return ok && x.ContainerID == id }); oomAt >= 0 {
			t.Errorf("TaskOOM of %s (#%d) came after its TaskExit (#%d); events: %s", id, oomAt, exitAt, ev.String())
		} else {
			t.Errorf("no TaskOOM for %s; events: %s", id, ev.String())
		}
	case oomAt > exitAt:
		t.Errorf("TaskOOM of %s (#%d) came after its TaskExit (#%d); events: %s", id, oomAt, exitAt, ev.String())
	default:
		t.Logf("TaskOOM #%d before TaskExit #%d", oomAt, exitAt)
	}
	if _, err := task.Delete(ctx); err != nil {
		t.Errorf("Delete task %s: %v", id, err)
	}
	if err := cont.Delete(ctx); err != nil {
		t.Errorf("Delete container %s: %v", id, err)
	}
}

// oomKills is oom_kill of dir/memory.events, -1 if unreadable.
func oomKills(dir string) int64 {
	s, err := readTrim(filepath.Join(dir, "memory.events"))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// expectedCgroup is the cgroup (relative to /sys/fs/cgroup, with a leading
// slash) container id should be in: cgroupsPath as given for cgroupfs, the
// scope <prefix>-<name>.scope in the slice for systemd.
func (cb *combo) expectedCgroup(id string) string {
	if cb.driver == "systemd" {
		return "/" + systemdSlice + "/" + scopePrefix + "-" + cb.ns + "-" + id + ".scope"
	}
	return "/" + cgroupRoot + "/" + cb.ns + "/" + id
}

// cgroupsPath is linux.cgroupsPath for container id.
func (cb *combo) cgroupsPath(id string) string {
	if cb.driver == "systemd" {
		return systemdSlice + ":" + scopePrefix + ":" + cb.ns + "-" + id
	}
	return "/" + cgroupRoot + "/" + cb.ns + "/" + id
}

// create makes container id on the busybox rootfs running args with the
// combo's runtime and driver (runc options SystemdCgroup), and its task with
// null IO, not started.
func (cb *combo) create(t *testing.T, id string, extra []oci.SpecOpts, args ...string) (containerd.Container, containerd.Task) {
	t.Helper()
	ctx, cancel := opCtx(cb.ctx)
	defer cancel()
	sopts := append([]oci.SpecOpts{oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(args...), oci.WithCgroup(cb.cgroupsPath(id))}, extra...)
	opts := &runcoptions.Options{SystemdCgroup: cb.driver == "systemd"}
	cont, err := cb.c.NewContainer(ctx, id, containerd.WithRuntime(cb.runtime, opts), containerd.WithNewSpec(sopts...))
	if err != nil {
		t.Fatalf("NewContainer %s: %v", id, err)
	}
	task, err := cont.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatalf("NewTask %s: %v", id, err)
	}
	return cont, task
}

func (cb *combo) expectStatus(t *testing.T, task containerd.Task, want containerd.ProcessStatus) {
	t.Helper()
	ctx, cancel := opCtx(cb.ctx)
	defer cancel()
	st, err := task.Status(ctx)
	if err != nil || st.Status != want {
		t.Errorf("status of %s: %q (%v), want %q", task.ID(), st.Status, err, want)
	}
}

// cleanup kills and deletes whatever the combo's namespace still holds.
func (cb *combo) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), cb.ns), 2*time.Minute)
	defer cancel()
	conts, err := cb.c.Containers(ctx)
	if err != nil {
		t.Errorf("cleanup of %s: %v", cb.ns, err)
		return
	}
	for _, c := range conts {
		if task, err := c.Task(ctx, nil); err == nil {
			if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
				t.Errorf("cleanup: delete task %s: %v", c.ID(), err)
			}
		}
		if err := c.Delete(ctx); err != nil {
			t.Errorf("cleanup: delete container %s: %v", c.ID(), err)
		}
	}
	_ = cb.c.NamespaceService().Delete(ctx, cb.ns)
}

// events collects the decoded events of one namespace, in order.
type events struct {
	mu   sync.Mutex
	list []any
}

// watch subscribes to the task events of the combo's namespace until the
// test ends (the collecting goroutine is waited for at cleanup).
func (cb *combo) watch(t *testing.T) *events {
	ctx, cancel := context.WithCancel(cb.ctx)
	ch, errs := cb.c.EventService().Subscribe(ctx, fmt.Sprintf(`namespace==%q,topic~="^/tasks/"`, cb.ns))
	ev := &events{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case e := <-ch:
				if e == nil || e.Event == nil {
					continue
				}
				v, err := typeurl.UnmarshalAny(e.Event)
				if err != nil {
					v = fmt.Sprintf("%s (undecodable: %v)", e.Topic, err)
				}
				ev.mu.Lock()
				ev.list = append(ev.list, v)
				ev.mu.Unlock()
			case <-errs:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	// Events published before the server has registered the stream are not
	// seen; a TaskCreate of the container in the list shows it was live.
	return ev
}

func (e *events) index(match func(any) bool) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, v := range e.list {
		if match(v) {
			return i
		}
	}
	return -1
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for i, v := range e.list {
		fmt.Fprintf(&b, "\n  #%d %T %v", i, v, v)
	}
	return b.String()
}

// procCgroup is the cgroup v2 path of pid (the 0:: line of /proc/<pid>/cgroup).
func procCgroup(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("/proc/%d/cgroup has no 0:: line: %q", pid, data)
}

func expectFile(t *testing.T, path, want string) {
	t.Helper()
	got, err := readTrim(path)
	if err != nil || got != want {
		t.Errorf("%s = %q (%v), want %q", path, got, err, want)
	}
}

// waitIO waits up to 30s for io's copying to end (the process has exited),
// then cancels it and waits for the end.
func waitIO(t *testing.T, io cio.IO) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Wait()
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Errorf("the exec's output was still being copied 30s after its exit; cancelling")
		io.Cancel()
		<-done
	}
}
