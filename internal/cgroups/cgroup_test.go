package cgroups

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/containerd/errdefs"
)

// noSuchPid is PID_MAX_LIMIT (2^22): pids are below pid_max, which cannot
// exceed it, so no process ever has this pid.
const noSuchPid = 1 << 22

// TestHostMode checks HostMode against the mounts of this machine.
func TestHostMode(t *testing.T) {
	mounts, err := readMounts(procRoot)
	if err != nil {
		t.Fatal(err)
	}
	want := Legacy
	for _, m := range mounts {
		if m.v2 && m.point == defaultRoot {
			want = Unified
			break
		}
		if m.v2 && m.point == defaultRoot+"/unified" {
			want = Hybrid
		}
	}
	got := HostMode()
	if got != want {
		t.Fatalf("HostMode() = %s, the mounts say %s", got, want)
	}
	t.Logf("this host's cgroup layout: %s", got)

	if m := hostMode(t.TempDir()); m != Legacy {
		t.Errorf("a directory that is no cgroup root: %s, want legacy", m)
	}
	if m := hostMode(filepath.Join(t.TempDir(), "missing")); m != Legacy {
		t.Errorf("a missing root: %s, want legacy", m)
	}
	// A cgroup2 mount seen as the root is a unified layout.
	for _, m := range mounts {
		if m.v2 {
			if got := hostMode(m.point); got != Unified {
				t.Errorf("hostMode(%s) = %s, want unified", m.point, got)
			}
		}
	}
	if s := Mode(7).String(); s != "unknown" {
		t.Errorf("Mode(7).String() = %q", s)
	}
}

// TestLoadSelf loads the test process's own cgroup.
func TestLoadSelf(t *testing.T) {
	c, err := Load(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if c.mode != HostMode() {
		t.Errorf("mode %s, host %s", c.mode, HostMode())
	}
	if c.mode == Unified {
		want := filepath.Join(defaultRoot, procCgroupPath(t, os.Getpid(), ""))
		if c.v2 != want {
			t.Errorf("v2 dir %s, want %s", c.v2, want)
		}
		return
	}
	for _, ctrl := range []string{"memory", "cpu", "cpuacct", "pids", "blkio"} {
		want := filepath.Join(defaultRoot, ctrl, procCgroupPath(t, os.Getpid(), ctrl))
		if c.v1[ctrl] != want {
			t.Errorf("%s dir %q, want %q", ctrl, c.v1[ctrl], want)
		}
	}
	if c.path != procCgroupPath(t, os.Getpid(), "memory") {
		t.Errorf("path %q", c.path)
	}
	if _, err := os.Stat(filepath.Join(c.v1["memory"], "memory.usage_in_bytes")); err != nil {
		t.Error(err)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, pid := range []int{0, -1} {
		if _, err := Load(pid); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Load(%d) = %v, want invalid argument", pid, err)
		}
	}
	_, err := Load(noSuchPid)
	if !errdefs.IsNotFound(err) || errdefs.Resolve(err) != errdefs.ErrNotFound {
		t.Errorf("Load of a pid that does not exist: %v, want not found", err)
	}

	// A procfs in which the process's cgroup directory does not exist.
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(proc, "42"), 0o755); err != nil {
		t.Fatal(err)
	}
	mi, err := os.ReadFile(filepath.Join(procRoot, "self", "mountinfo"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), mi, 0o644); err != nil {
		t.Fatal(err)
	}
	cg := "0::/tether-test-gone\n"
	if HostMode() != Unified {
		cg = "4:memory:/tether-test-gone\n"
	}
	if err := os.WriteFile(filepath.Join(proc, "42", "cgroup"), []byte(cg), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := load(HostMode(), proc, 42); !errdefs.IsNotFound(err) {
		t.Errorf("load of a removed cgroup: %v, want not found", err)
	}
	if err := os.WriteFile(filepath.Join(proc, "42", "cgroup"), []byte("rubbish\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := load(HostMode(), proc, 42); !errdefs.IsInternal(err) {
		t.Errorf("load of an unparsable /proc/<pid>/cgroup: %v, want internal", err)
	}
}

// TestAddProcessV1 moves a child into a cgroup made in every v1 hierarchy.
func TestAddProcessV1(t *testing.T) {
	cg := newTestCgroup(t, false)
	ch := spawn(t, "true")
	if err := AddProcess(cg.path, ch.pid()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(ch.pid()), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := parseProcCgroup(data)
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := readMounts(procRoot)
	if err != nil {
		t.Fatal(err)
	}
	// Every hierarchy in which the cgroup exists has the child.
	for _, m := range mounts {
		if _, ok := cg.dirs[m.point]; !ok {
			continue
		}
		i := slices.IndexFunc(entries, func(e procEntry) bool { return m.has(e.controllers) })
		if i < 0 {
			t.Errorf("no /proc/<pid>/cgroup line for %s:\n%s", m.point, data)
		} else if entries[i].path != cg.path {
			t.Errorf("hierarchy %s: the child is in %s, want %s", m.point, entries[i].path, cg.path)
		}
	}
	if len(cg.dirs) < 5 {
		t.Errorf("only %d v1 hierarchies: %v", len(cg.dirs), cg.dirs)
	}
	c, err := Load(ch.pid())
	if err != nil {
		t.Fatal(err)
	}
	if c.path != cg.path || c.v1["memory"] != cg.dir(t, "memory") {
		t.Errorf("Load after AddProcess: %+v", c)
	}

	if err := AddProcess(cg.path+"-missing", ch.pid()); !errdefs.IsNotFound(err) {
		t.Errorf("AddProcess to a missing cgroup: %v, want not found", err)
	}
	if err := AddProcess(cg.path, noSuchPid); !errdefs.IsNotFound(err) {
		t.Errorf("AddProcess of a missing pid: %v, want not found", err)
	}
	for _, p := range []string{"", "relative", "/a/../b", "/a/", "/a//b"} {
		if err := AddProcess(p, ch.pid()); !errdefs.IsInvalidArgument(err) {
			t.Errorf("AddProcess(%q) = %v, want invalid argument", p, err)
		}
	}
	if err := AddProcess(cg.path, 0); !errdefs.IsInvalidArgument(err) {
		t.Errorf("AddProcess of pid 0: %v, want invalid argument", err)
	}
}

// TestAddProcessV2 runs the unified path of AddProcess and Load on the
// unified hierarchy (at /sys/fs/cgroup/unified on a hybrid host).
func TestAddProcessV2(t *testing.T) {
	cg := newTestCgroup(t, true)
	ch := spawn(t, "true")
	mounts, err := readMounts(procRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := addProcess(Unified, mounts, cg.path, ch.pid()); err != nil {
		t.Fatal(err)
	}
	if got := procCgroupPath(t, ch.pid(), ""); got != cg.path {
		t.Fatalf("the child is in %s, want %s", got, cg.path)
	}
	c, err := load(Unified, procRoot, ch.pid())
	if err != nil {
		t.Fatal(err)
	}
	if want := cg.dir(t, ""); c.v2 != want || c.path != cg.path {
		t.Errorf("load: v2 %s path %s, want %s %s", c.v2, c.path, want, cg.path)
	}
	if err := addProcess(Unified, mounts, cg.path+"-missing", ch.pid()); !errdefs.IsNotFound(err) {
		t.Errorf("addProcess to a missing cgroup: %v, want not found", err)
	}
	if err := addProcess(Unified, mounts, cg.path, noSuchPid); !errdefs.IsNotFound(err) {
		t.Errorf("addProcess of a missing pid: %v, want not found", err)
	}
}
