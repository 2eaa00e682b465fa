package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// pausingRuntime writes a runtime wrapper into dir. For each "op:id" of
// stops, the first `<op> ... <id>` it is asked runs the real runc, then
// creates the marker <dir>/<op>-<id> and waits, without exiting, until its
// parent (the shim) is gone; then it exits with runc's status. Every other
// invocation is runc itself.
func pausingRuntime(t *testing.T, dir, runc string, stops ...string) string {
	t.Helper()
	bin := filepath.Join(dir, "pausing-runc")
	script := fmt.Sprintf(`#!/bin/sh
dir=%q
runc=%q
args=" $* "
for stop in %s; do
	op=${stop%%%%:*}
	id=${stop#*:}
	case "$args" in *" $op "*) ;; *) continue ;; esac
	case "$args" in
	*" $id "*)
		if [ ! -e "$dir/$op-$id" ]; then
			"$runc" "$@"
			rc=$?
			: >"$dir/$op-$id"
			parent=$PPID
			while read -r _ _ _ pp _ </proc/$$/stat && [ "$pp" = "$parent" ]; do sleep 0.05; done
			exit $rc
		fi
		;;
	esac
done
exec "$runc" "$@"
`, dir, runc, strings.Join(stops, " "))
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// waitMarker waits up to a minute for the marker of op on id.
func waitMarker(t *testing.T, dir, op, id string) {
	t.Helper()
	waitFor(t, time.Minute, fmt.Sprintf("the runtime to be in %s of %s", op, id), func() (bool, string) {
		_, err := os.Stat(filepath.Join(dir, op+"-"+id))
		return err == nil, fmt.Sprint(err)
	})
}

// TestStressShimKilled SIGKILLs the shim in each phase of a container's
// life: while the runtime's create, start, exec and delete are in flight
// (a wrapper holds each one after runc has done its part, until the shim
// is gone), and at the moment the container's init exits (both are killed
// back to back). containerd's cleanup (ctr task rm, ctr c rm) must then
// leave nothing behind: no shim, socket, mount, bundle, runtime state,
// cgroup, container process or zombie.
func TestStressShimKilled(t *testing.T) {
	stressEach(t, "shimkill", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		dir := d.optionsDir(t, ns)
		bin := pausingRuntime(t, dir, d.r.path, "create:p-create", "start:p-start", "exec:p-exec", "delete:p-delete")
		c := d.goClient(t, ns)

		newContainer := func(id string) client.Container {
			ctx, cancel := clientCtx(ns)
			defer cancel()
			cont, err := c.NewContainer(ctx, id,
				client.WithNewSpec(oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(sleeper...)),
				client.WithRuntime(runtimeName, &runcoptions.Options{BinaryName: bin}))
			if err != nil {
				t.Fatalf("new container %s: %v", id, err)
			}
			return cont
		}
		newTask := func(cont client.Container) client.Task {
			ctx, cancel := clientCtx(ns)
			defer cancel()
			task, err := cont.NewTask(ctx, cio.NullIO)
			if err != nil {
				t.Fatalf("new task %s: %v", cont.ID(), err)
			}
			return task
		}
		// inFlight runs call in the background, waits for the wrapper's
		// marker of op, SIGKILLs the shim and returns call's error.
		inFlight := func(id, op string, call func(ctx context.Context) error) error {
			ctx, cancel := clientCtx(ns)
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- call(ctx) }()
			waitMarker(t, dir, op, id)
			shims := d.shimsOf(ns)
			if len(shims) != 1 {
				t.Fatalf("shims of %s during %s of %s: %v, want one", ns, op, id, shims)
			}
			sigkill(t, shims[0])
			select {
			case err := <-errc:
				return err
			case <-time.After(2 * time.Minute):
				t.Fatalf("%s of %s did not return within 2 minutes of the shim's death", op, id)
				return nil
			}
		}
		// cleanup is what an operator does: kill, task rm, c rm.
		cleanup := func(phase, id string) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			d.runCtr(ctx, ns, "task", "kill", "-s", "SIGKILL", id)
			if r := d.ctr(t, ns, "task", "rm", id); r.code != 0 && !strings.Contains(r.stderr+r.stdout, "not found") {
				t.Errorf("%s: ctr task rm %s: %s", phase, id, r)
			}
			if r := d.ctr(t, ns, "container", "rm", id); r.code != 0 {
				t.Errorf("%s: ctr c rm %s: %s", phase, id, r)
			}
			l := d.waitNoLeftovers(t, ns, before, 30*time.Second)
			figure(t, "shimkill", d, "phase=%s %s", phase, l.figures())
		}

		// create: runc create has made the container, the shim has not
		// heard back.
		cont := newContainer("p-create")
		err := inFlight("p-create", "create", func(ctx context.Context) error {
			_, err := cont.NewTask(ctx, cio.NullIO)
			return err
		})
		t.Logf("create with the shim killed: %v", err)
		if err == nil {
			t.Error("NewTask succeeded although its shim was killed during create")
		}
		cleanup("create", "p-create")

		// start: runc start has started the init.
		cont = newContainer("p-start")
		task := newTask(cont)
		err = inFlight("p-start", "start", task.Start)
		t.Logf("start with the shim killed: %v", err)
		cleanup("start", "p-start")

		// exec: runc exec has started the exec process.
		cont = newContainer("p-exec")
		task = newTask(cont)
		if err := func() error { ctx, cancel := clientCtx(ns); defer cancel(); return task.Start(ctx) }(); err != nil {
			t.Fatalf("start p-exec: %v", err)
		}
		err = inFlight("p-exec", "exec", func(ctx context.Context) error {
			spec, err := cont.Spec(ctx)
			if err != nil {
				return err
			}
			pspec := *spec.Process
			pspec.Args = []string{"/bin/sleep", "1000"}
			p, err := task.Exec(ctx, "e1", &pspec, cio.NullIO)
			if err != nil {
				return err
			}
			return p.Start(ctx)
		})
		t.Logf("exec with the shim killed: %v", err)
		cleanup("exec", "p-exec")

		// exit: the init and the shim die at the same moment.
		cont = newContainer("p-exit")
		task = newTask(cont)
		if err := func() error { ctx, cancel := clientCtx(ns); defer cancel(); return task.Start(ctx) }(); err != nil {
			t.Fatalf("start p-exit: %v", err)
		}
		shims := d.shimsOf(ns)
		if len(shims) != 1 {
			t.Fatalf("shims of %s: %v, want one", ns, shims)
		}
		sigkill(t, int(task.Pid()))
		sigkill(t, shims[0])
		cleanup("exit", "p-exit")

		// delete: runc delete has removed the runtime's state; the shim
		// has not unmounted, removed the bundle or answered.
		cont = newContainer("p-delete")
		task = newTask(cont)
		func() {
			ctx, cancel := clientCtx(ns)
			defer cancel()
			exitCh, err := task.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := task.Start(ctx); err != nil {
				t.Fatalf("start p-delete: %v", err)
			}
			if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
				t.Fatalf("kill p-delete: %v", err)
			}
			<-exitCh
		}()
		err = inFlight("p-delete", "delete", func(ctx context.Context) error {
			_, err := task.Delete(ctx)
			return err
		})
		t.Logf("delete with the shim killed: %v", err)
		cleanup("delete", "p-delete")
	})
}
