package cgroups

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

// guard bounds the waits of the tests for something the kernel does (an OOM
// kill, a notification): it only keeps a broken test from hanging, it is not
// a timing assertion.
const guard = 2 * time.Minute

// testCgroup is a cgroup a test created: in every v1 hierarchy, or in the
// unified one.
type testCgroup struct {
	path string            // the cgroup path, "/tether-test-<rand>"
	v2   bool              // made in the unified hierarchy
	dirs map[string]string // mount point -> directory
}

// newTestCgroup creates /tether-test-<rand> in every v1 hierarchy mounted
// under /sys/fs/cgroup (unified false, the host must not be Unified), or in
// the unified hierarchy (unified true: /sys/fs/cgroup/unified on a Hybrid
// host, /sys/fs/cgroup on a Unified one). Cleanup removes it once the test's
// processes are gone (register it before starting any).
func newTestCgroup(t *testing.T, unified bool) *testCgroup {
	t.Helper()
	mode := HostMode()
	if !unified && mode == Unified {
		t.Fatalf("this test needs cgroup v1 hierarchies; the host is %s", mode)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	cg := &testCgroup{path: "/tether-test-" + hex.EncodeToString(b[:]), v2: unified, dirs: map[string]string{}}
	mounts, err := readMounts(procRoot)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, m := range mounts {
		if m.v2 != unified || m.root != "/" || slices.Contains(seen, m.dev) ||
			!strings.HasPrefix(m.point+"/", defaultRoot+"/") {
			continue
		}
		seen = append(seen, m.dev)
		dir := filepath.Join(m.point, cg.path)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		cg.dirs[m.point] = dir
		t.Cleanup(func() { removeCgroupDir(t, dir) })
		if slices.Contains(m.controllers, "cpuset") {
			// A new v1 cpuset has no cpus and mems: no task may join it.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(m.point, f))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(dir, f), strings.TrimSpace(string(v)))
			}
		}
	}
	if len(cg.dirs) == 0 {
		t.Fatalf("no cgroup hierarchy (unified=%v) mounted under %s", unified, defaultRoot)
	}
	return cg
}

// dir returns the test cgroup's directory in the hierarchy holding ctrl (v1)
// or the unified one.
func (cg *testCgroup) dir(t *testing.T, ctrl string) string {
	t.Helper()
	if cg.v2 {
		for _, d := range cg.dirs {
			return d
		}
	}
	mounts, err := readMounts(procRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if d, ok := cg.dirs[m.point]; ok && slices.Contains(m.controllers, ctrl) {
			return d
		}
	}
	t.Fatalf("no %s hierarchy for %s", ctrl, cg.path)
	return ""
}

// limitMemory sets the cgroup's memory limit, swap included.
func (cg *testCgroup) limitMemory(t *testing.T, bytes string) {
	t.Helper()
	d := cg.dir(t, "memory")
	if cg.v2 {
		writeFile(t, filepath.Join(d, "memory.max"), bytes)
		if _, err := os.Stat(filepath.Join(d, "memory.swap.max")); err == nil {
			writeFile(t, filepath.Join(d, "memory.swap.max"), "0")
		}
		return
	}
	writeFile(t, filepath.Join(d, "memory.limit_in_bytes"), bytes)
	if _, err := os.Stat(filepath.Join(d, "memory.memsw.limit_in_bytes")); err == nil {
		writeFile(t, filepath.Join(d, "memory.memsw.limit_in_bytes"), bytes)
	}
}

// removeCgroupDir removes a test cgroup directory; the kernel may still be
// releasing a process that was just reaped, hence the retries on EBUSY.
func removeCgroupDir(t *testing.T, dir string) {
	t.Helper()
	var err error
	for range 500 {
		err = unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("remove test cgroup %s: %v", dir, err)
}

// writeFile writes a cgroup file in place.
func writeFile(t *testing.T, p, v string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(v); err != nil {
		t.Fatalf("write %q to %s: %v", v, p, err)
	}
}

// child is a /bin/sh started by a test: it waits for a line on stdin before
// it runs its script.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// spawn starts /bin/sh -c 'read go; <script>'. Cleanup kills and reaps it.
func spawn(t *testing.T, script string) *child {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "read go; "+script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// run lets the child's script run.
func (c *child) run(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
}

// readLine reads a line the child printed.
func (c *child) readLine(t *testing.T) string {
	t.Helper()
	s, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("read child output: %v", err)
	}
	return strings.TrimSpace(s)
}

// waitKilled waits for the child and checks that SIGKILL ended it.
func (c *child) waitKilled(t *testing.T) {
	t.Helper()
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child %d: want death by SIGKILL, got %v", c.pid(), err)
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child %d: want death by SIGKILL, got %v", c.pid(), ee)
	}
}

// procCgroupPath returns the cgroup of pid in the hierarchy whose controllers
// field in /proc/<pid>/cgroup contains ctrl ("" for the unified one).
func procCgroupPath(t *testing.T, pid int, ctrl string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := parseProcCgroup(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if (ctrl == "" && len(e.controllers) == 0) || slices.Contains(e.controllers, ctrl) {
			return e.path
		}
	}
	t.Fatalf("pid %d has no %q hierarchy in %s", pid, ctrl, data)
	return ""
}

// waitChan waits for ch or fails the test after guard.
func waitChan[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(guard):
		t.Fatalf("%s: nothing after %v", what, guard)
	}
	var zero T
	return zero
}

// writeTemp creates or replaces a regular file.
func writeTemp(t *testing.T, p, v string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

// testLogger is a logger that records into a testutil.Log, printed if the
// test fails.
func testLogger(t testing.TB) *slog.Logger {
	_, l := testutil.NewLog(t)
	return l
}
