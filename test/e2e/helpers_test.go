package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// sleeper is the command of a container that runs until it is killed.
var sleeper = []string{"/bin/sleep", "1000000"}

// runDetached starts container id on the busybox rootfs directory with ctr run -d.
func (d *daemon) runDetached(t *testing.T, ns, id string, extra ...string) {
	t.Helper()
	args := append([]string{"run", "-d", "--runtime", runtimeName}, extra...)
	args = append(args, "--rootfs", rootfsDir, id)
	args = append(args, sleeper...)
	d.mustCtr(t, ns, args...)
	d.waitStatus(t, ns, id, "RUNNING")
}

// runImageDetached starts container id from the imported image (a snapshot, so an overlay mount).
func (d *daemon) runImageDetached(t *testing.T, ns, id string) {
	t.Helper()
	args := append([]string{"run", "-d", "--runtime", runtimeName, imageName, id}, sleeper...)
	d.mustCtr(t, ns, args...)
	d.waitStatus(t, ns, id, "RUNNING")
}

// importImage imports the busybox OCI tarball into namespace ns as imageName.
func (d *daemon) importImage(t *testing.T, ns string) {
	t.Helper()
	d.mustCtr(t, ns, "image", "import", imageTar)
	out := d.mustCtr(t, ns, "image", "ls", "-q")
	if !strings.Contains(out, imageName) {
		t.Fatalf("ctr image import did not create %s; images: %q", imageName, out)
	}
}

// task is a line of ctr task ls.
type task struct {
	id, status string
	pid        int
}

func (d *daemon) tasks(t *testing.T, ns string) (map[string]task, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := d.runCtr(ctx, ns, "task", "ls")
	if r.code != 0 {
		return nil, fmt.Errorf("ctr task ls: %s", r)
	}
	out := map[string]task{}
	for i, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) < 3 {
			continue
		}
		pid, _ := strconv.Atoi(f[1])
		out[f[0]] = task{id: f[0], pid: pid, status: f[2]}
	}
	return out, nil
}

// waitStatus waits until ctr task ls shows id with status.
func (d *daemon) waitStatus(t *testing.T, ns, id, status string) task {
	t.Helper()
	var got task
	waitFor(t, 60*time.Second, fmt.Sprintf("task %s %s", id, status), func() (bool, string) {
		ts, err := d.tasks(t, ns)
		if err != nil {
			return false, err.Error()
		}
		got = ts[id]
		return got.status == status, fmt.Sprintf("ctr task ls: %+v", ts)
	})
	return got
}

// shimInfo is what a test knows about the shim of a container.
type shimInfo struct {
	address string // content of <bundle>/address
	path    string // the socket path
	pid     int
}

// shimOf reads the address file of container id and finds the process that
// listens on that socket.
func (d *daemon) shimOf(t *testing.T, ns, id string) shimInfo {
	t.Helper()
	addrFile := filepath.Join(d.bundle(ns, id), "address")
	data, err := os.ReadFile(addrFile)
	if err != nil {
		t.Fatalf("read the shim address: %v", err)
	}
	s := shimInfo{address: string(data)}
	path, ok := strings.CutPrefix(s.address, "unix://")
	if !ok || !strings.HasPrefix(path, "/") {
		t.Fatalf("%s holds %q; want unix:///<absolute path> (a filesystem socket)", addrFile, s.address)
	}
	s.path = path
	d.sockets[ns] = append(d.sockets[ns], path)
	var pids []int
	waitFor(t, 10*time.Second, "a single process listening on "+path, func() (bool, string) {
		pids = listeners(path)
		return len(pids) == 1, fmt.Sprintf("listeners %v", pids)
	})
	s.pid = pids[0]
	if name := procName(s.pid); name != shimBinaryName {
		t.Fatalf("the process %d listening on %s is %q, want %s", s.pid, path, name, shimBinaryName)
	}
	t.Logf("container %s: shim pid %d, address %s", id, s.pid, s.address)
	return s
}

// socketDirEntries lists the sockets in containerd's shim socket directory.
func socketDirEntries() map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir("/run/containerd/s")
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}

// assertShimGone waits for the shim to exit and checks that its socket, any
// new socket in /run/containerd/s, the bundle and any mount of the namespace are gone.
func (d *daemon) assertShimGone(t *testing.T, ns string, s shimInfo, socketsBefore map[string]bool, ids ...string) {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("shim %d to exit", s.pid), func() (bool, string) {
		return !alive(s.pid), fmt.Sprintf("pid %d (%s) is alive", s.pid, procName(s.pid))
	})
	waitFor(t, 10*time.Second, "the shim socket to be removed", func() (bool, string) {
		_, err := os.Lstat(s.path)
		return os.IsNotExist(err), fmt.Sprintf("%s: lstat err %v", s.path, err)
	})
	waitFor(t, 10*time.Second, "no new socket in /run/containerd/s", func() (bool, string) {
		var extra []string
		for name := range socketDirEntries() {
			if !socketsBefore[name] {
				extra = append(extra, name)
			}
		}
		return len(extra) == 0, fmt.Sprintf("new entries %v", extra)
	})
	for _, id := range ids {
		waitFor(t, 10*time.Second, "the bundle of "+id+" to be removed", func() (bool, string) {
			_, err := os.Lstat(d.bundle(ns, id))
			return os.IsNotExist(err), fmt.Sprintf("lstat %s: %v", d.bundle(ns, id), err)
		})
	}
	d.assertNoMounts(t, ns)
}

// assertNoMounts checks that no mount is left in the namespace's bundles or
// on a snapshot of this containerd.
func (d *daemon) assertNoMounts(t *testing.T, ns string) {
	t.Helper()
	waitFor(t, 10*time.Second, "no mounts left", func() (bool, string) {
		ms := mountsMentioning(d.taskDir(ns)+"/", filepath.Join(d.Root, "io.containerd.snapshotter.v1.overlayfs")+"/")
		return len(ms) == 0, fmt.Sprintf("mounts: %v", ms)
	})
}

// spec reads the OCI spec containerd wrote into the bundle.
func (d *daemon) spec(t *testing.T, ns, id string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(d.bundle(ns, id), "config.json"))
	if err != nil {
		t.Fatalf("read config.json: %v", err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatalf("parse config.json: %v", err)
	}
	return spec
}

// events runs ctr events in the background and collects its output.
type events struct {
	mu  sync.Mutex
	buf bytes.Buffer
	cmd *exec.Cmd
}

func (d *daemon) watchEvents(t *testing.T) *events {
	t.Helper()
	ev := &events{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	cmd := exec.CommandContext(ctx, d.v.ctr, "--address", d.Sock, "events")
	cmd.Stdout, cmd.Stderr = ev, ev
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("ctr events: %v", err)
	}
	ev.cmd = cmd
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		t.Logf("ctr events output:\n%s", ev.String())
	})
	// ctr events subscribes asynchronously; wait until it is connected, which
	// shows as a connection of the ctr process to containerd's socket.
	waitFor(t, 20*time.Second, "ctr events to connect", func() (bool, string) {
		n := 0
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid))
		for _, e := range ents {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", cmd.Process.Pid, e.Name())); strings.HasPrefix(l, "socket:") {
				n++
			}
		}
		return n > 0, "no socket yet"
	})
	return ev
}

func (e *events) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.buf.Write(p)
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.buf.String()
}

// exitStatusRE finds the exit status in a /tasks/exit line: ctr prints the
// event as JSON, "exit_status":N (1.x, 2.x), or as Go text "exit_status:N".
var exitStatusRE = regexp.MustCompile(`"?exit_status"?\s*[:=]\s*(\d+)`)

// exitStatus returns the exit status of the /tasks/exit event of the init
// process of container id in ns, or -1 if there is none yet.
func (e *events) exitStatus(ns, id string) int {
	sc := bufio.NewScanner(strings.NewReader(e.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "/tasks/exit") || !strings.Contains(line, " "+ns+" ") {
			continue
		}
		if !strings.Contains(line, `"container_id":"`+id+`"`) && !strings.Contains(line, `container_id:"`+id+`"`) {
			continue
		}
		// The init process has id == container id (or no id field, in some versions).
		if strings.Contains(line, `"id":"`) && !strings.Contains(line, `"id":"`+id+`"`) {
			continue
		}
		if m := exitStatusRE.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
		return 0 // proto3 JSON omits exit_status 0
	}
	return -1
}

// sigkill kills pid and fails the test if that is not possible.
func sigkill(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
}
