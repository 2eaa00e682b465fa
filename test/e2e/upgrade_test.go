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

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"google.golang.org/grpc/codes"

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

// A live upgrade of a group shim that serves running containers, to the
// very binary it runs (a no-op in effect): `tether upgrade` hands the
// containers over (state version 2), the shim keeps its pid and binary,
// the containers keep their pids and running, and answer exec and kill
// after it, and containerd never sees the shim go (docs/design.md, "Live
// upgrade"). TestLiveUpgradeContainers upgrades to another build.
func TestLiveUpgradeSameBinaryWithContainers(t *testing.T) {
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
		want := fmt.Sprintf("shim %d: upgraded", s.pid)
		if err != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "generation 1") {
			t.Fatalf("tether upgrade of a shim with containers: %v, output %q; want %q, generation 1", err, out, want)
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
				t.Errorf("task %s: %+v before, %+v after the upgrade", id, before[id], after[id])
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

// A shim that `start` launched, as containerd launches one, and that serves
// no container, is upgraded by `tether upgrade` to another build installed
// at its path: same pid, the new binary, PR_SET_THP_DISABLE cleared again,
// and the connection a client holds keeps working, with requests flowing
// across the hand-over, each answered.
func TestLiveUpgradeOfAStartedShim(t *testing.T) {
	if !isTether() {
		t.Logf("live upgrade is Tether's; %s has none", runtimeName)
		return
	}
	tether := buildTether(t)
	root, err := testkit.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	newBuild := filepath.Join(t.TempDir(), shimBinaryName)
	build := exec.Command("go", "build", "-ldflags", "-X main.version=e2e-upgraded", "-o", newBuild, "./cmd/containerd-shim-tether-v2")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	// A path of its own: the suite's shim binary stays as it is.
	exe := filepath.Join(t.TempDir(), shimBinaryName)
	if err := testkit.CopyFile(shimBin, exe, 0o755); err != nil {
		t.Fatal(err)
	}

	const ns, id = "e2e-upgrade-start", "upgrade-start"
	bundle := startBundle(t)
	addr := string(runStartOf(t, exe, bundle, ns, id, "", nil))
	path := strings.TrimPrefix(addr, "unix://")
	pid := startServer(t, path, id)
	client := dialShim(t, path)

	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				t.Logf("%d requests across the upgrade", n)
				done <- nil
				return
			default:
			}
			ctx, cancel := nsContext(ns)
			_, err := client.Connect(ctx, &taskapi.ConnectRequest{ID: fmt.Sprintf("none-%d", n)})
			cancel()
			if codeOf(err) != codes.NotFound {
				done <- fmt.Errorf("Connect %d of no container: %v, want NotFound", n, err)
				return
			}
			n++
		}
	}()

	tmp := exe + ".new"
	if err := testkit.CopyFile(newBuild, tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, exe); err != nil {
		t.Fatal(err)
	}
	installed, err := os.Stat(exe)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, tether, "upgrade", "--expect", "e2e-upgraded", fmt.Sprint(pid)).CombinedOutput()
	t.Logf("tether upgrade %d: %v\n%s", pid, err, out)
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("shim %d: upgraded ", pid)) {
		t.Fatalf("tether upgrade of an idle shim: %v\n%s", err, out)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if now, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || !os.SameFile(now, installed) {
		t.Errorf("/proc/%d/exe is not the new build at %s (%v)", pid, exe, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "THP_enabled:\t1") {
		t.Errorf("the upgraded shim keeps PR_SET_THP_DISABLE, which its children would inherit:\n%s", status)
	}
	// Still the shim it was: it answers on the same connection, and stops
	// as containerd stops it.
	sctx, scancel := nsContext(ns)
	defer scancel()
	if _, err := client.Shutdown(sctx, &taskapi.ShutdownRequest{ID: id}); err != nil && codeOf(err) != codes.Unavailable {
		t.Logf("Shutdown: %v", err)
	}
	waitFor(t, 30*time.Second, "the upgraded shim to exit on Shutdown", func() (bool, string) {
		return !alive(pid), fmt.Sprintf("pid %d alive", pid)
	})
}
