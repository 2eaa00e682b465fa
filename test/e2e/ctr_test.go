package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// ctr run --rm of a --rootfs container prints its output and exits with the
// container's exit code.
func TestRunRemoveExitCode(t *testing.T) {
	forEachVersion(t, "exit", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		r := d.ctr(t, ns, "run", "--rm", "--runtime", runtimeName, "--rootfs", rootfsDir, "t1",
			"/bin/sh", "-c", "echo hello; exit 3")
		if r.code != 3 {
			t.Errorf("ctr run exit code %d, want 3: %s", r.code, r)
		}
		if r.stdout != "hello\n" {
			t.Errorf("ctr run stdout %q, want %q", r.stdout, "hello\n")
		}
		// --rm deletes the container; nothing may be left of it.
		if out := d.mustCtr(t, ns, "container", "ls", "-q"); strings.TrimSpace(out) != "" {
			t.Errorf("containers left after run --rm: %q", out)
		}
		waitFor(t, 30*time.Second, "no shim left", func() (bool, string) {
			ps := testkit.ShimProcesses(d.Sock)
			return len(ps) == 0, fmt.Sprintf("shims: %v", ps)
		})
		waitFor(t, 10*time.Second, "no new socket in /run/containerd/s", func() (bool, string) {
			var extra []string
			for name := range socketDirEntries() {
				if !before[name] {
					extra = append(extra, name)
				}
			}
			return len(extra) == 0, fmt.Sprintf("new entries %v", extra)
		})
		d.assertNoMounts(t, ns)
	})
}

// ctr run -d, task ps, task kill, task rm and c rm work and leave nothing behind.
func TestDetachedLifecycle(t *testing.T) {
	forEachVersion(t, "life", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		d.runDetached(t, ns, "c1")
		s := d.shimOf(t, ns, "c1")
		tk := d.waitStatus(t, ns, "c1", "RUNNING")
		if tk.pid <= 0 {
			t.Fatalf("ctr task ls shows pid %d", tk.pid)
		}
		ps := d.mustCtr(t, ns, "task", "ps", "c1")
		if !strings.Contains(ps, fmt.Sprint(tk.pid)) {
			t.Errorf("ctr task ps c1 does not list the init pid %d:\n%s", tk.pid, ps)
		}
		if p, err := ppid(tk.pid); err != nil || p != s.pid {
			t.Logf("note: the container's init %d has parent %d (err %v), the shim is %d", tk.pid, p, err, s.pid)
		}
		// The shim runs "runc" from its PATH: that must be the runc under test.
		want, _ := filepath.EvalSymlinks(d.r.path)
		if got := lookPathIn(testkit.Getenv(testkit.Environ(s.pid), "PATH"), "runc"); got != want {
			t.Errorf("the shim's PATH finds runc at %q, want %s (%s)", got, d.r.path, want)
		}
		d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", "c1")
		d.waitStatus(t, ns, "c1", "STOPPED")
		d.mustCtr(t, ns, "task", "rm", "c1")
		d.mustCtr(t, ns, "container", "rm", "c1")
		if out := d.mustCtr(t, ns, "task", "ls", "-q"); strings.TrimSpace(out) != "" {
			t.Errorf("tasks left: %q", out)
		}
		d.assertShimGone(t, ns, s, before, "c1")
	})
}

// The shim is not a child of containerd, and it listens on a filesystem
// socket with mode 0600 (not an abstract socket).
func TestShimProcessAndSocket(t *testing.T) {
	forEachVersion(t, "sock", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "s1")
		s := d.shimOf(t, ns, "s1")
		p, err := ppid(s.pid)
		if err != nil {
			t.Fatal(err)
		}
		if p == d.Pid() {
			t.Errorf("the shim %d is a child of containerd %d", s.pid, p)
		}
		t.Logf("shim %d: parent %d (%s), containerd is %d", s.pid, p, procName(p), d.Pid())
		st, err := os.Lstat(s.path)
		if err != nil {
			t.Fatalf("the shim socket: %v", err)
		}
		if st.Mode().Type() != os.ModeSocket {
			t.Errorf("%s has type %v, want a socket", s.path, st.Mode().Type())
		}
		if perm := st.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has permissions %#o, want 0600", s.path, perm)
		}
		for _, u := range testkit.UnixSockets() {
			if strings.HasPrefix(u.Path, "@") && strings.Contains(u.Path, strings.TrimPrefix(s.path, "/")) {
				t.Errorf("an abstract socket %q mirrors the shim socket", u.Path)
			}
		}
		if pids := listeners(s.path); len(pids) != 1 || pids[0] != s.pid {
			t.Errorf("listeners on %s: %v, want only the shim %d", s.path, pids, s.pid)
		}
	})
}

// After a restart of containerd a running container is still RUNNING, and its
// exit after a kill is reported.
func TestContainerdRestart(t *testing.T) {
	forEachVersion(t, "restart", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		d.runDetached(t, ns, "r1")
		s := d.shimOf(t, ns, "r1")
		oldPid := d.Pid()
		d.restart(t)
		if d.Pid() == oldPid {
			t.Fatalf("containerd pid unchanged after restart")
		}
		d.waitStatus(t, ns, "r1", "RUNNING")
		if !alive(s.pid) {
			t.Fatalf("the shim %d died with containerd", s.pid)
		}
		ev := d.watchEvents(t)
		d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", "r1")
		d.waitStatus(t, ns, "r1", "STOPPED")
		waitFor(t, 30*time.Second, "the /tasks/exit event of r1", func() (bool, string) {
			return ev.exitStatus(ns, "r1") >= 0, "events so far:\n" + ev.String()
		})
		if got := ev.exitStatus(ns, "r1"); got != 137 {
			t.Errorf("exit status %d in the /tasks/exit event, want 137 (SIGKILL)", got)
		}
		r := d.ctr(t, ns, "task", "rm", "r1")
		if r.code != 0 {
			t.Fatalf("ctr task rm: %s", r)
		}
		d.mustCtr(t, ns, "container", "rm", "r1")
		d.assertShimGone(t, ns, s, before, "r1")
	})
}

// Two containers with the same io.containerd.runc.v2.group label share one shim,
// which exits once both are deleted.
func TestGroupSharesShim(t *testing.T) {
	const group = "io.containerd.runc.v2.group"
	forEachVersion(t, "group", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		d.runDetached(t, ns, "g1a", "--label", group+"=g1")
		d.runDetached(t, ns, "g1b", "--label", group+"=g1")
		for _, id := range []string{"g1a", "g1b"} {
			ann, _ := d.spec(t, ns, id)["annotations"].(map[string]any)
			if ann[group] != "g1" {
				t.Fatalf("ctr run --label did not put %s=g1 into the spec annotations of %s: %v", group, id, ann)
			}
		}
		a, b := d.shimOf(t, ns, "g1a"), d.shimOf(t, ns, "g1b")
		if a.address != b.address || a.pid != b.pid {
			t.Fatalf("containers of one group have different shims: %+v and %+v", a, b)
		}
		for _, id := range []string{"g1a", "g1b"} {
			d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", id)
			d.waitStatus(t, ns, id, "STOPPED")
			d.mustCtr(t, ns, "task", "rm", id)
			d.mustCtr(t, ns, "container", "rm", id)
			if id == "g1a" && !alive(a.pid) {
				t.Fatalf("the group's shim %d exited while g1b still runs", a.pid)
			}
		}
		d.assertShimGone(t, ns, a, before, "g1a", "g1b")
	})
}

// SIGKILL of the shim of an image-based container: the task stops, task rm and
// c rm succeed, and the rootfs mount is gone.
//
// containerd itself cleans up after a dead shim (it runs the shim's delete
// command and forgets the task), so ctr task rm may answer "not found"; that
// is accepted. The socket must be gone too: containerd's runc shim leaves it
// behind in /run/containerd/s, Tether's delete removes it.
func TestShimKilled(t *testing.T) {
	if !isTether() {
		t.Logf("the socket check is Tether's contract; %s is expected to leave its socket behind", runtimeName)
	}
	forEachVersion(t, "shimkill", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		d.importImage(t, ns)
		d.runImageDetached(t, ns, "k1")
		s := d.shimOf(t, ns, "k1")
		rootfs := d.bundle(ns, "k1") + "/rootfs"
		if !testkit.Mounted(rootfs) {
			t.Fatalf("no mount on %s; mounts: %v", rootfs, mountsMentioning(d.taskDir(ns)))
		}
		tk := d.waitStatus(t, ns, "k1", "RUNNING")
		sigkill(t, s.pid)
		waitFor(t, 60*time.Second, "the task to stop", func() (bool, string) {
			ts, err := d.tasks(t, ns)
			if err != nil {
				return false, err.Error()
			}
			st, ok := ts["k1"]
			return !ok || st.status == "STOPPED", fmt.Sprintf("ctr task ls: %+v", ts)
		})
		waitFor(t, 30*time.Second, "the container's init to die", func() (bool, string) {
			return !alive(tk.pid), fmt.Sprintf("pid %d (%s) alive", tk.pid, procName(tk.pid))
		})
		r := d.ctr(t, ns, "task", "rm", "k1")
		if r.code != 0 && !strings.Contains(r.stderr+r.stdout, "not found") {
			t.Errorf("ctr task rm after the shim died: %s", r)
		}
		d.mustCtr(t, ns, "container", "rm", "k1")
		d.assertShimGone(t, ns, s, before, "k1")
	})
}

// ctr run --rm of the imported image prints its output, and the overlay mount
// is gone afterwards.
func TestImageRun(t *testing.T) {
	forEachVersion(t, "image", func(t *testing.T, d *daemon, ns string) {
		d.importImage(t, ns)
		r := d.ctr(t, ns, "run", "--rm", "--runtime", runtimeName, imageName, "i1",
			"/bin/sh", "-c", "echo from-image; cat /"+testkit.ImageMarkerPath)
		if r.code != 0 {
			t.Fatalf("ctr run of the image: %s", r)
		}
		if want := "from-image\n" + imageMarker + "\n"; r.stdout != want {
			t.Errorf("stdout %q, want %q", r.stdout, want)
		}
		d.assertNoMounts(t, ns)
		waitFor(t, 30*time.Second, "no shim left", func() (bool, string) {
			ps := testkit.ShimProcesses(d.Sock)
			return len(ps) == 0, fmt.Sprintf("shims: %v", ps)
		})
	})
}

// lookPathIn finds an executable name in the directories of path, following
// symlinks; "" if there is none.
func lookPathIn(path, name string) string {
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			if r, err := filepath.EvalSymlinks(p); err == nil {
				return r
			}
			return p
		}
	}
	return ""
}
