package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"

	"github.com/tether-shim/tether/testkit"
)

// soakGroup is the group of the soak's long-lived shim.
const soakGroup = "soak"

// soakLife is one lifecycle of the soak, number i. Two in ten run in a
// shim of their own, the rest in the long-lived group shim. The kinds, by
// i%5: ctr run --rm; run, exec without a tty, kill, delete; run, exec with
// a tty, pause, resume, kill, delete; run --rm again; run, exec, SIGTERM,
// delete.
func soakLife(d *daemon, c *containerd.Client, ns string, i int) error {
	id := fmt.Sprintf("s%d", i)
	group := i%10 != 0 && i%10 != 5
	code := i % 100
	ctx, cancel := clientCtx(ns)
	defer cancel()
	switch i % 5 {
	case 0, 3:
		args := []string{"run", "--rm", "--runtime", runtimeName}
		if group {
			args = append(args, "--label", groupLabel+"="+soakGroup)
		}
		args = append(args, "--rootfs", rootfsDir, id, "/bin/sh", "-c", fmt.Sprintf("echo soak-%d; exit %d", i, code))
		r := d.runCtr(ctx, ns, args...)
		if r.code != code || r.stdout != fmt.Sprintf("soak-%d\n", i) {
			return fmt.Errorf("ctr run --rm %s: want exit %d and its line: %s", id, code, r)
		}
		return nil
	}
	args := sleeper
	if i%5 == 4 {
		// The init of a pid namespace ignores a signal it has no handler
		// for: this one exits 143 on SIGTERM.
		args = []string{"/bin/sh", "-c", "trap 'exit 143' TERM; sleep 1000000 & wait"}
	}
	sopts := []oci.SpecOpts{oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(args...)}
	if group {
		sopts = append(sopts, oci.WithAnnotations(map[string]string{groupLabel: soakGroup}))
	}
	cont, err := c.NewContainer(ctx, id, containerd.WithNewSpec(sopts...))
	if err != nil {
		return fmt.Errorf("new container %s: %w", id, err)
	}
	task, err := cont.NewTask(ctx, cio.NullIO)
	if err != nil {
		_ = cont.Delete(ctx)
		return fmt.Errorf("new task %s: %w", id, err)
	}
	fail := func(err error) error {
		_, _ = task.Delete(ctx, containerd.WithProcessKill)
		_ = cont.Delete(ctx)
		return err
	}
	exitCh, err := task.Wait(ctx)
	if err != nil {
		return fail(fmt.Errorf("wait %s: %w", id, err))
	}
	if err := task.Start(ctx); err != nil {
		return fail(fmt.Errorf("start %s: %w", id, err))
	}
	tty := i%5 == 2
	if err := soakExec(ctx, cont, task, id+"-e", tty, code); err != nil {
		return fail(err)
	}
	if tty {
		if err := task.Pause(ctx); err != nil {
			return fail(fmt.Errorf("pause %s: %w", id, err))
		}
		st, err := task.Status(ctx)
		if err != nil || st.Status != containerd.Paused {
			return fail(fmt.Errorf("status of %s after pause: %+v, %v", id, st, err))
		}
		if err := task.Resume(ctx); err != nil {
			return fail(fmt.Errorf("resume %s: %w", id, err))
		}
	}
	sig, want := syscall.SIGKILL, uint32(137)
	if i%5 == 4 {
		sig, want = syscall.SIGTERM, 143
	}
	if err := task.Kill(ctx, sig); err != nil {
		return fail(fmt.Errorf("kill %s: %w", id, err))
	}
	select {
	case es := <-exitCh:
		if es.ExitCode() != want {
			return fail(fmt.Errorf("%s exited %d after %v, want %d (%v)", id, es.ExitCode(), sig, want, es.Error()))
		}
	case <-ctx.Done():
		return fail(fmt.Errorf("no exit of %s after %v: %w", id, sig, ctx.Err()))
	}
	es, err := task.Delete(ctx)
	if err != nil {
		return fail(fmt.Errorf("delete task %s: %w", id, err))
	}
	if es.ExitCode() != want {
		return fail(fmt.Errorf("delete of %s reports exit %d, want %d", id, es.ExitCode(), want))
	}
	if err := cont.Delete(ctx); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	return nil
}

// soakExec runs an exec in task that prints a line and exits with code,
// on a tty or on pipes, and checks both.
func soakExec(ctx context.Context, cont containerd.Container, task containerd.Task, execID string, tty bool, code int) error {
	spec, err := cont.Spec(ctx)
	if err != nil {
		return fmt.Errorf("spec of %s: %w", cont.ID(), err)
	}
	pspec := *spec.Process
	pspec.Terminal = tty
	script := fmt.Sprintf("echo exec-%s; exit %d", execID, code)
	if tty {
		script = fmt.Sprintf("tty; exit %d", code)
	}
	pspec.Args = []string{"/bin/sh", "-c", script}
	var out testkit.LockedBuffer
	opts := []cio.Opt{cio.WithStreams(nil, &out, &out)}
	if tty {
		opts = append(opts, cio.WithTerminal)
	}
	p, err := task.Exec(ctx, execID, &pspec, cio.NewCreator(opts...))
	if err != nil {
		return fmt.Errorf("exec %s: %w", execID, err)
	}
	defer p.Delete(context.WithoutCancel(ctx))
	exitCh, err := p.Wait(ctx)
	if err != nil {
		return fmt.Errorf("wait exec %s: %w", execID, err)
	}
	if err := p.Start(ctx); err != nil {
		return fmt.Errorf("start exec %s: %w", execID, err)
	}
	var es containerd.ExitStatus
	select {
	case es = <-exitCh:
	case <-ctx.Done():
		return fmt.Errorf("exec %s did not exit: %w", execID, ctx.Err())
	}
	p.IO().Wait()
	if es.ExitCode() != uint32(code) {
		return fmt.Errorf("exec %s exited %d, want %d (%v); output %q", execID, es.ExitCode(), code, es.Error(), out.String())
	}
	want := "exec-" + execID
	if tty {
		want = "/dev/pts/"
	}
	if !strings.Contains(out.String(), want) {
		return fmt.Errorf("exec %s (tty %v) printed %q, want %q in it", execID, tty, out.String(), want)
	}
	if _, err := p.Delete(ctx); err != nil {
		return fmt.Errorf("delete exec %s: %w", execID, err)
	}
	return nil
}

// soakBatch runs lifecycles from..to-1 at parallelism 4 and returns how
// many failed, logging the first errors.
func soakBatch(t *testing.T, d *daemon, c *containerd.Client, ns string, from, to int) int {
	t.Helper()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
	)
	startWorkers(&wg, 4, from, to, func(i int) {
		if err := soakLife(d, c, ns, i); err != nil {
			mu.Lock()
			failed++
			if failed <= 10 {
				t.Logf("lifecycle %d failed: %v", i, err)
			}
			mu.Unlock()
		}
	})
	wg.Wait()
	return failed
}

// shimFigures are a shim's resources once idle. profile is the kB its
// heap profile's buckets take (BuckHashSys): only a -debug shim samples
// its heap, and every new allocation site costs a bucket for good.
type shimFigures struct {
	fds, goroutines, rss, anon, profile int
}

func (d *daemon) idleShim(t *testing.T, pid int, bundle string) shimFigures {
	t.Helper()
	f := shimFigures{goroutines: -1, profile: -1}
	f.fds = fdCount(pid)
	if m := shimMetrics(t, pid, bundle); m != nil {
		f.goroutines, f.profile = int(m["goroutines"]), int(m["buckhash_sys"]>>10)
	}
	f.rss, f.anon = memKB(t, pid)
	return f
}

// idleMedian samples the idle shim three times, 3 s apart (the trimmer has
// run before each), and returns the sample of median anonymous memory: one
// sample alone swung by about 2 MB between two levels of the Go heap (1.7
// and 3.5 MB allocated after a GC, the sampled heap profile equal in both),
// and a low baseline made a shim whose memory had not grown fail.
func (d *daemon) idleMedian(t *testing.T, pid int, bundle string) shimFigures {
	t.Helper()
	var fs []shimFigures
	for range 3 {
		time.Sleep(3 * time.Second)
		fs = append(fs, d.idleShim(t, pid, bundle))
	}
	slices.SortFunc(fs, func(a, b shimFigures) int { return a.anon - b.anon })
	return fs[1]
}

// grown is how much more anonymous memory (kB) f holds than base, less
// what the heap profile's buckets grew by: a shim run as operators run it
// (without -debug) has none.
func (f shimFigures) grown(base shimFigures) int {
	return (f.anon - base.anon) - (f.profile - base.profile)
}

// TestStressSoak runs 100 x TETHER_STRESS_SCALE mixed lifecycles at
// parallelism 4, 80% of them in one long-lived group shim (the "anchor"
// container keeps it up). After a warm-up batch (a fifth), that shim's fds
// and goroutines and containerd's fds are taken as the baseline; after
// the rest they must be back at it, and the shim's anonymous memory within
// 1 MiB of it, less what its heap profile's buckets grew by (the shim runs
// with -debug under the harness's debug containerd, which its goroutine
// count needs, and only such a shim samples its heap). Once everything is deleted, nothing may be left: no shim,
// socket, mount, bundle, runtime state, cgroup, process or zombie.
func TestStressSoak(t *testing.T) {
	n := 100 * stressScale(t)
	warm := n / 5
	stressEach(t, "soak", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		c := d.goClient(t, ns)
		cdCold := fdCount(d.Pid())
		d.runDetached(t, ns, "anchor", "--label", groupLabel+"="+soakGroup)
		s := d.shimOf(t, ns, "anchor")
		bundle := d.bundle(ns, "anchor")
		cold := d.idleShim(t, s.pid, bundle)

		start := time.Now()
		failed := soakBatch(t, d, c, ns, 0, warm)
		base := d.idleMedian(t, s.pid, bundle)
		cdWarm := fdCount(d.Pid())
		failed += soakBatch(t, d, c, ns, warm, n)
		took := time.Since(start)
		if !alive(s.pid) {
			t.Fatalf("the group shim %d died during the soak", s.pid)
		}

		// Back to the baseline once idle: poll for up to 30 s.
		var after shimFigures
		var cdAfter int
		for deadline := time.Now().Add(30 * time.Second); ; {
			time.Sleep(3 * time.Second)
			after = d.idleShim(t, s.pid, bundle)
			cdAfter = fdCount(d.Pid())
			if (after.fds == base.fds && after.goroutines == base.goroutines && after.grown(base) <= 1024 && cdAfter <= cdWarm) || time.Now().After(deadline) {
				break
			}
		}
		zombies := zombiesOf(d.Pid(), s.pid)
		figure(t, "soak", d, "lifecycles=%d failed=%d parallelism=4 took=%s group_shim_fds=%d/%d/%d group_shim_goroutines=%d/%d/%d group_shim_rss_kb=%d/%d/%d group_shim_anon_kb=%d/%d/%d group_shim_profile_buckets_kb=%d/%d/%d group_shim_anon_grown_kb=%d containerd_fds=%d/%d/%d zombies=%d (cold/warm/after)",
			n, failed, took.Round(time.Second), cold.fds, base.fds, after.fds, cold.goroutines, base.goroutines, after.goroutines,
			cold.rss, base.rss, after.rss, cold.anon, base.anon, after.anon, cold.profile, base.profile, after.profile, after.grown(base), cdCold, cdWarm, cdAfter, len(zombies))
		if failed > 0 {
			t.Errorf("%d of %d lifecycles failed", failed, n)
		}
		if base.goroutines < 0 || after.goroutines < 0 {
			t.Errorf("the group shim did not report its goroutines (warm %d, after %d)", base.goroutines, after.goroutines)
		}
		if after.fds != base.fds {
			t.Errorf("the group shim has %d fds after the soak, %d after the warm-up", after.fds, base.fds)
		}
		if after.goroutines != base.goroutines {
			t.Errorf("the group shim has %d goroutines after the soak, %d after the warm-up\n%s", after.goroutines, base.goroutines, memoryReport(s.pid, bundle))
		}
		if after.grown(base) > 1024 {
			t.Errorf("the group shim holds %d kB anonymous memory after the soak, %d kB more than after the warm-up, %d kB more without its heap profile's buckets (limit 1024)\n%s",
				after.anon, after.anon-base.anon, after.grown(base), memoryReport(s.pid, bundle))
		}
		if cdAfter > cdWarm {
			t.Errorf("containerd has %d fds after the soak, %d after the warm-up", cdAfter, cdWarm)
		}
		if len(zombies) > 0 {
			t.Errorf("zombie children of containerd or the group shim: %v", zombies)
		}

		d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", "anchor")
		d.waitStatus(t, ns, "anchor", "STOPPED")
		d.mustCtr(t, ns, "task", "rm", "anchor")
		d.mustCtr(t, ns, "container", "rm", "anchor")
		if out := d.mustCtr(t, ns, "container", "ls", "-q"); strings.TrimSpace(out) != "" {
			t.Errorf("containers left: %q", out)
		}
		l := d.waitNoLeftovers(t, ns, before, 30*time.Second)
		cdEnd := fdCount(d.Pid())
		figure(t, "soak", d, "lifecycles=%d %s containerd_fds_end=%d", n, l.figures(), cdEnd)
	})
}
