package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
)

// withCheckpointOptions sets the task's checkpoint options: the Go client's
// own helpers only do so for runtimes named io.containerd.runc.*.
func withCheckpointOptions(o *runcoptions.CheckpointOptions) containerd.CheckpointTaskOpts {
	return func(r *containerd.CheckpointTaskInfo) error {
		r.Options = o
		return nil
	}
}

// Checkpoint and restore through Tether. Where `criu check` passes: a
// checkpoint with CheckpointOptions{Exit: true} publishes /tasks/checkpointed
// and stops the task, and a task created from the checkpoint image runs the
// same process on (the ticker keeps its token and goes on counting).
//
// Where `criu check` fails (this project's development host: CRIU cannot
// read the kernel's vDSO), that part cannot run; the test says so and checks
// what it can: a checkpoint reaches the runtime's checkpoint, which fails in
// CRIU, and Tether returns that as a clear error, with the options'
// work path handed to the runtime (CRIU's dump.log lands there), no
// /tasks/checkpointed, and the container running on, unharmed, in the same shim.
func TestCheckpoint(t *testing.T) {
	criu, err := exec.LookPath("criu")
	if err != nil {
		t.Fatalf("criu is not installed (apt-get install criu, or scripts/install-deps.sh): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	check := run(ctx, criu, "check")
	cancel()
	criuWorks := check.code == 0
	if !criuWorks {
		t.Logf("NOT RUN HERE: the checkpoint/restore part of this test. `criu check` fails on this host "+
			"(kernel %s), so CRIU cannot checkpoint anything: %s\n"+
			"Checked instead: a checkpoint through Tether reaches the runtime, fails in CRIU with a clear error, "+
			"and the container keeps running.", kernelRelease(), oneLine(check.stdout+check.stderr))
	}
	forEachVersion(t, "checkpoint", func(t *testing.T, d *daemon, ns string) {
		d.runDetachedCmd(t, ns, "k1", nil, ticker...)
		tk := d.waitStatus(t, ns, "k1", "RUNNING")
		tok0, _ := waitTickAbove(t, tk.pid, 0, "the ticker to start")
		s := d.shimOf(t, ns, "k1")
		ev := d.watchEvents(t)
		c := d.goClient(t, ns)
		cctx, ccancel := clientCtx(ns)
		defer ccancel()
		cont, err := c.LoadContainer(cctx, "k1")
		if err != nil {
			t.Fatal(err)
		}
		task, err := cont.Task(cctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkpointed := func() (taskEvent, bool) {
			return ev.find(ns, 0, func(e taskEvent) bool {
				return e.topic == "/tasks/checkpointed" && e.str("container_id") == "k1"
			})
		}

		if criuWorks {
			_, n0, err := readTick(tk.pid)
			if err != nil {
				t.Fatal(err)
			}
			img, err := task.Checkpoint(cctx, containerd.WithCheckpointName("e2e-checkpoint-k1"),
				withCheckpointOptions(&runcoptions.CheckpointOptions{Exit: true}))
			if err != nil {
				t.Fatalf("Checkpoint with Exit: %v", err)
			}
			waitFor(t, 30*time.Second, "the /tasks/checkpointed event of k1", func() (bool, string) {
				_, ok := checkpointed()
				return ok, "events so far:\n" + ev.String()
			})
			waitFor(t, 30*time.Second, "the /tasks/exit event of k1 (checkpoint with Exit)", func() (bool, string) {
				_, ok := ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("k1", "k1") })
				return ok, "events so far:\n" + ev.String()
			})
			if _, err := task.Delete(cctx); err != nil {
				t.Fatalf("delete the checkpointed task: %v", err)
			}
			restored, err := cont.NewTask(cctx, cio.NullIO, containerd.WithTaskCheckpoint(img))
			if err != nil {
				t.Fatalf("restore: NewTask from checkpoint %s: %v", img.Name(), err)
			}
			if err := restored.Start(cctx); err != nil {
				t.Fatalf("restore: Start: %v", err)
			}
			tk2 := d.waitStatus(t, ns, "k1", "RUNNING")
			tok, n := waitTickAbove(t, tk2.pid, n0, "the restored ticker to go on counting")
			if tok != tok0 {
				t.Errorf("after restore the ticker's token is %q, was %q: the process was started anew, not restored (count %d)", tok, tok0, n)
			}
			return
		}

		// criu check fails here: the checkpoint must fail cleanly.
		r := d.ctr(t, ns, "task", "checkpoint", "k1")
		if r.code == 0 {
			t.Errorf("ctr task checkpoint succeeded although `criu check` fails: %s", r)
		} else if !strings.Contains(strings.ToLower(r.stderr), "criu") {
			t.Errorf("ctr task checkpoint failed without naming CRIU: %s", r)
		}

		// The same through the Go client with CheckpointOptions: the image
		// and work paths reach the runtime, and CRIU writes its log there.
		dir := t.TempDir()
		imagePath, workPath := filepath.Join(dir, "image"), filepath.Join(dir, "work")
		for _, p := range []string{imagePath, workPath} {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		_, err = task.Checkpoint(cctx, withCheckpointOptions(&runcoptions.CheckpointOptions{ImagePath: imagePath, WorkPath: workPath}))
		if err == nil {
			t.Errorf("Checkpoint with CheckpointOptions succeeded although `criu check` fails")
		} else {
			t.Logf("Checkpoint with CheckpointOptions: %v", err)
			if !strings.Contains(strings.ToLower(err.Error()), "criu") {
				t.Errorf("the Checkpoint error does not name CRIU: %v", err)
			}
		}
		if log, err := os.ReadFile(filepath.Join(workPath, "dump.log")); err != nil {
			ents, _ := os.ReadDir(workPath)
			t.Errorf("no CRIU dump.log in the options' work path %s (%v; it holds %v): the work path did not reach the runtime", workPath, err, ents)
		} else {
			t.Logf("CRIU's dump.log in the work path, its errors:\n%s", errorLines(string(log), 5))
		}

		// Unharmed: same shim, running, the same process counting on, exec works.
		if !alive(s.pid) {
			t.Errorf("the shim %d died in a failed checkpoint", s.pid)
		} else if got := d.shimOf(t, ns, "k1"); got.pid != s.pid {
			t.Errorf("k1 is served by shim %d after the failed checkpoint, was %d", got.pid, s.pid)
		}
		d.waitStatus(t, ns, "k1", "RUNNING")
		_, n1, _ := readTick(tk.pid)
		if tok, _ := waitTickAbove(t, tk.pid, n1, "the ticker to go on after the failed checkpoint"); tok != tok0 {
			t.Errorf("the ticker's token changed from %q to %q: the process was restarted", tok0, tok)
		}
		if r := d.ctr(t, ns, "task", "exec", "--exec-id", "after", "k1", "/bin/echo", "alive"); r.code != 0 || r.stdout != "alive\n" {
			t.Errorf("exec after the failed checkpoint: %s", r)
		}
		if e, ok := checkpointed(); ok {
			t.Errorf("/tasks/checkpointed published for a checkpoint that failed: %s", e.line)
		}
	})
}

func kernelRelease() string {
	s, _ := readTrim("/proc/sys/kernel/osrelease")
	return s
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// errorLines returns at most n lines of a CRIU log that report an error.
func errorLines(s string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "Error") && len(out) < n {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
