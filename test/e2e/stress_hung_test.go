package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/tether-shim/tether/testkit"
)

// hangSeconds marks the hung runtime's sleep, so that the test can find it.
const hangSeconds = "3601"

// hangingRuntime writes a runtime wrapper into dir that hangs, once, in
// each "op:id" of hangs: it runs `sleep 3601` as its child (which keeps
// the runtime's output open, as a hung helper of a real runtime would) and
// exits 1 if that ever ends. Every other invocation is runc itself.
func hangingRuntime(t *testing.T, dir, runc string, hangs ...string) string {
	t.Helper()
	bin := filepath.Join(dir, "hanging-runc")
	script := fmt.Sprintf(`#!/bin/sh
dir=%q
args=" $* "
for hang in %s; do
	op=${hang%%%%:*}
	id=${hang#*:}
	case "$args" in *" $op "*) ;; *) continue ;; esac
	case "$args" in
	*" $id "*)
		if [ ! -e "$dir/hung-$op-$id" ]; then
			: >"$dir/hung-$op-$id"
			sleep %s
			exit 1
		fi
		;;
	esac
done
exec %q "$@"
`, dir, strings.Join(hangs, " "), hangSeconds, runc)
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// hungSleeps lists the pids of the hung runtime's sleeps.
func hungSleeps() []int {
	var out []int
	for _, p := range testkit.AllProcesses() {
		if len(p.Args) == 2 && filepath.Base(p.Args[0]) == "sleep" && p.Args[1] == hangSeconds {
			out = append(out, p.Pid)
		}
	}
	return out
}

// latencies collects the durations of one kind of call.
type latencies struct {
	mu sync.Mutex
	d  map[string][]time.Duration
}

func (l *latencies) add(what string, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.d[what] = append(l.d[what], d)
}

// summary is "<what>_p50_ms=.. <what>_max_ms=.." for each kind, sorted.
func (l *latencies) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var names []string
	for k := range l.d {
		names = append(names, k)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, k := range names {
		ds := slices.Clone(l.d[k])
		slices.Sort(ds)
		fmt.Fprintf(&b, " %s_calls=%d %s_p50_ms=%.1f %s_max_ms=%.1f", k, len(ds), k, ms(ds[len(ds)/2]), k, ms(ds[len(ds)-1]))
	}
	return strings.TrimSpace(b.String())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestStressHungRuntime runs four containers in one group shim on a
// runtime wrapper that hangs in the kill of "hung" and in the delete of
// "hung2" (whose init has exited). While containerd's Kill and Delete of
// those are stuck in the runtime, State, Connect, Pids and Stats of the
// other two, asked of the shim directly, must answer (each within a
// generous 5 s; the latencies are printed, not asserted). Kill and Delete
// must return at the request's deadline (5 s) with a DeadlineExceeded
// error, and the hung runtime, with its children, must be gone soon after:
// the shim does not keep waiting for it. Then everything is deleted and
// nothing may be left.
func TestStressHungRuntime(t *testing.T) {
	stressEach(t, "hung", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		dir := d.optionsDir(t, ns)
		bin := hangingRuntime(t, dir, d.r.path, "kill:hung", "delete:hung2")
		c := d.goClient(t, ns)
		start := func(id string, args ...string) client.Task {
			ctx, cancel := clientCtx(ns)
			defer cancel()
			cont, err := c.NewContainer(ctx, id,
				client.WithNewSpec(oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(args...),
					oci.WithAnnotations(map[string]string{groupLabel: "hung"})),
				client.WithRuntime(runtimeName, &runcoptions.Options{BinaryName: bin}))
			if err != nil {
				t.Fatalf("new container %s: %v", id, err)
			}
			task, err := cont.NewTask(ctx, cio.NullIO)
			if err != nil {
				t.Fatalf("new task %s: %v", id, err)
			}
			if err := task.Start(ctx); err != nil {
				t.Fatalf("start %s: %v", id, err)
			}
			return task
		}
		hung := start("hung", sleeper...)
		hung2 := start("hung2", "/bin/sh", "-c", "exit 3")
		others := []string{"o1", "o2"}
		for _, id := range others {
			start(id, sleeper...)
		}
		d.waitStatus(t, ns, "hung2", "STOPPED")
		s := d.shimOf(t, ns, "hung")
		if o := d.shimOf(t, ns, "o1"); o.pid != s.pid {
			t.Fatalf("o1 runs in shim %d, hung in %d: the group label did not group them", o.pid, s.pid)
		}
		shim := dialShim(t, s.path)

		// The stuck calls, through containerd, each with a 5 s deadline.
		type stuck struct {
			what string
			err  error
			took time.Duration
		}
		results := make(chan stuck, 2)
		deadline := 5 * time.Second
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			ctx = namespaces.WithNamespace(ctx, ns)
			t0 := time.Now()
			err := hung.Kill(ctx, syscall.SIGKILL)
			results <- stuck{"kill", err, time.Since(t0)}
		}()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			ctx = namespaces.WithNamespace(ctx, ns)
			t0 := time.Now()
			_, err := hung2.Delete(ctx)
			results <- stuck{"delete", err, time.Since(t0)}
		}()
		waitFor(t, 30*time.Second, "the runtime to hang in both", func() (bool, string) {
			n := hungSleeps()
			return len(n) == 2, fmt.Sprintf("hung sleeps %v", n)
		})

		// Meanwhile the shim answers for the others.
		lat := &latencies{d: map[string][]time.Duration{}}
		var failures []string
		call := func(what string, f func(ctx context.Context) error) {
			ctx, cancel := nsContext(ns)
			defer cancel()
			ctx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
			defer cancel2()
			t0 := time.Now()
			err := f(ctx)
			lat.add(what, time.Since(t0))
			if err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v", what, err))
			}
		}
		var got []stuck
		for round := 0; len(got) < 2; round++ {
			for _, id := range others {
				call("state", func(ctx context.Context) error {
					_, err := shim.State(ctx, &taskapi.StateRequest{ID: id})
					return err
				})
				call("connect", func(ctx context.Context) error {
					_, err := shim.Connect(ctx, &taskapi.ConnectRequest{ID: id})
					return err
				})
				call("pids", func(ctx context.Context) error {
					_, err := shim.Pids(ctx, &taskapi.PidsRequest{ID: id})
					return err
				})
				call("stats", func(ctx context.Context) error {
					_, err := shim.Stats(ctx, &taskapi.StatsRequest{ID: id})
					return err
				})
			}
			// The hung container's own state is in memory too.
			call("state_hung", func(ctx context.Context) error {
				_, err := shim.State(ctx, &taskapi.StateRequest{ID: "hung"})
				return err
			})
			select {
			case r := <-results:
				got = append(got, r)
			case <-time.After(100 * time.Millisecond):
			}
			if round > 2000 {
				t.Fatal("the stuck Kill and Delete did not return")
			}
		}
		for _, f := range failures {
			t.Errorf("while the runtime hangs: %s", f)
		}
		for _, r := range got {
			t.Logf("%s of the hung container returned after %v: %v", r.what, r.took.Round(time.Millisecond), r.err)
			if r.err == nil {
				t.Errorf("%s of the hung container succeeded", r.what)
			} else if !errdefs.IsDeadlineExceeded(r.err) {
				t.Errorf("%s of the hung container: %v; want a deadline exceeded error", r.what, r.err)
			}
		}
		// The shim ends the hung runtime at the deadline, children and all.
		var left []int
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			left = hungSleeps()
			if len(left) == 0 || time.Now().After(end) {
				break
			}
		}
		if len(left) > 0 {
			t.Errorf("the hung runtime's processes %v still run 10 s after the deadline", left)
			for _, p := range left {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}
		if !alive(s.pid) {
			t.Fatalf("the group shim %d died", s.pid)
		}
		tookKill, tookDelete := time.Duration(0), time.Duration(0)
		for _, r := range got {
			if r.what == "kill" {
				tookKill = r.took
			} else {
				tookDelete = r.took
			}
		}
		figure(t, "hung", d, "%s hung_kill_returned_ms=%.0f hung_delete_returned_ms=%.0f request_deadline_ms=%d failed_calls=%d hung_runtime_left=%d",
			lat.summary(), ms(tookKill), ms(tookDelete), deadline.Milliseconds(), len(failures), len(left))

		// Clean up: the wrapper hangs only once per call, so all works now.
		for _, id := range []string{"hung", "o1", "o2", "hung2"} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			d.runCtr(ctx, ns, "task", "kill", "-s", "SIGKILL", id)
			cancel()
			if id != "hung2" {
				d.waitStatus(t, ns, id, "STOPPED")
			}
			d.mustCtr(t, ns, "task", "rm", id)
			d.mustCtr(t, ns, "container", "rm", id)
		}
		l := d.waitNoLeftovers(t, ns, before, 30*time.Second)
		figure(t, "hung", d, "%s", l.figures())
	})
}
