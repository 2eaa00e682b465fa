package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// buildTether builds the tether CLI into a temporary directory.
func buildTether(t *testing.T) string {
	t.Helper()
	root, err := testkit.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "tether")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/tether")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tether: %v\n%s", err, b)
	}
	return out
}

// A live upgrade of a group shim that serves running containers: state
// version 1 carries no container, so `tether upgrade` is refused, names why,
// and changes nothing: the shim keeps its pid and binary, the containers
// keep running and answer exec and kill, and containerd never sees the shim
// go (docs/design.md, "Live upgrade").
func TestLiveUpgradeRefusedWithContainers(t *testing.T) {
	if !isTether() {
		t.Logf("live upgrade is Tether's; %s has none", runtimeName)
		return
	}
	tether := buildTether(t)
	const group = "io.containerd.runc.v2.group"
	forEachVersionFirstRunc(t, "upgrade", func(t *testing.T, d *daemon, ns string) {
		off := d.LogSize()
		d.runDetached(t, ns, "u1", "--label", group+"=u")
		d.runDetached(t, ns, "u2", "--label", group+"=u")
		s := d.shimOf(t, ns, "u1")
		before, err := d.tasks(t, ns)
		if err != nil {
			t.Fatal(err)
		}
		exe, err := os.Stat(fmt.Sprintf("/proc/%d/exe", s.pid))
		if err != nil {
			t.Fatal(err)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, tether, "upgrade", fmt.Sprint(s.pid)).CombinedOutput()
		t.Logf("tether upgrade %d: %v\n%s", s.pid, err, out)
		want := fmt.Sprintf("shim %d: upgrade refused: the shim holds 2 containers", s.pid)
		if err == nil || !strings.Contains(string(out), want) {
			t.Fatalf("tether upgrade of a shim with containers: %v, output %q; want a failure saying %q", err, out, want)
		}

		if !alive(s.pid) {
			t.Fatalf("the shim %d is gone", s.pid)
		}
		now, err := os.Stat(fmt.Sprintf("/proc/%d/exe", s.pid))
		if err != nil || !os.SameFile(exe, now) {
			t.Errorf("the shim's binary changed: %v", err)
		}
		after, err := d.tasks(t, ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"u1", "u2"} {
			if after[id] != before[id] || after[id].status != "RUNNING" || !alive(after[id].pid) {
				t.Errorf("task %s: %+v before, %+v after the refused upgrade", id, before[id], after[id])
			}
		}
		d.mustCtr(t, ns, "task", "exec", "--exec-id", "after-upgrade", "u1", "/bin/true")
		d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", "u2")
		d.waitStatus(t, ns, "u2", "STOPPED")
		if log := d.LogTail(off, 100000); strings.Contains(log, "shim disconnected") || strings.Contains(log, "cleaning up dead shim") {
			t.Errorf("containerd lost the shim:\n%s", log)
		}
	})
}
