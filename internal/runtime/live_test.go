package runtime

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

const (
	runcBinary    = "/usr/sbin/runc"
	crunBinary    = "/usr/bin/crun"
	busyboxBinary = "/bin/busybox"
	// liveWait bounds every wait of the live tests; reaching it fails the
	// test. It is not a timing assertion: it only turns a hang into a
	// failure.
	liveWait = 60 * time.Second
)

// liveRuntime describes a real OCI runtime and the errdefs classes its
// messages give, as harvested from runc 1.1.5 and crun 1.8.1.
type liveRuntime struct {
	name   string
	binary string
	setup  func(t *testing.T)
	// Classes of the lifecycle refusals that differ between runtimes.
	killStopped  error // kill after the init process was reaped
	startStopped error // start after the init process was reaped
}

var liveRuntimes = []liveRuntime{
	{
		name: "runc", binary: runcBinary, setup: func(*testing.T) {},
		killStopped:  errdefs.ErrFailedPrecondition, // "container not running"
		startStopped: errdefs.ErrFailedPrecondition, // "cannot start a container that has stopped"
	},
	{
		name: "crun", binary: crunBinary, setup: setupCrunCgroups,
		killStopped:  errdefs.ErrNotFound,           // "open pidfd: No such process" once reaped
		startStopped: errdefs.ErrFailedPrecondition, // "container `id` is not running"
	},
}

// requireBinary fails the test unless path is an executable file.
func requireBinary(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("%s is required: %v", path, err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		t.Fatalf("%s is not an executable file (%v)", path, st.Mode())
	}
}

// setupCrunCgroups mounts the cgroup v1 hugetlb controller, which crun 1.8
// needs on a v1 hierarchy, unless it is mounted. It fails the test if it
// cannot.
func setupCrunCgroups(t *testing.T) {
	t.Helper()
	const dir = "/sys/fs/cgroup/hugetlb"
	mounted, err := isMountPoint(dir)
	if err != nil {
		t.Fatalf("crun setup: %v", err)
	}
	if mounted {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("crun setup: %v", err)
	}
	if err := unix.Mount("cgroup", dir, "cgroup", 0, "hugetlb"); err != nil {
		t.Fatalf("crun setup: mount the hugetlb cgroup controller on %s: %v", dir, err)
	}
}

// isMountPoint reports whether a mount sits on dir, from /proc/self/mountinfo.
func isMountPoint(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && fields[4] == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

var containerSeq atomic.Int64

// uniqueID returns a container id no other test run uses.
func uniqueID(prefix string) string {
	return fmt.Sprintf("tether-%s-%d-%d", prefix, os.Getpid(), containerSeq.Add(1))
}

// busyboxBundle builds a bundle in a temporary directory: a rootfs with
// busybox and its applets, and the config.json of `runc spec` without a
// terminal and with args.
func busyboxBundle(t *testing.T, args ...string) string {
	t.Helper()
	requireBinary(t, busyboxBinary)
	requireBinary(t, runcBinary)
	dir := t.TempDir()
	testutil.BusyboxBundle(t, dir, runcBinary, args...)
	return dir
}

// becomeSubreaper makes the test process the child subreaper, so that the
// container processes, whose runtime command exits, are reparented to it
// rather than to init. The cleanup reaps every zombie child left and turns
// the attribute off again.
func becomeSubreaper(t *testing.T) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	t.Cleanup(func() {
		reapZombieChildren(t)
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0); err != nil {
			t.Errorf("clear PR_SET_CHILD_SUBREAPER: %v", err)
		}
	})
}

// reapZombieChildren reaps the zombies whose parent is the test process:
// runtime helpers reparented to it. It waits only for those pids, so that it
// never takes an exit status an exec.Cmd waits for.
func reapZombieChildren(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Errorf("read /proc: %v", err)
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, state, err := procStat(pid)
		if err != nil || ppid != os.Getpid() || state != "Z" {
			continue
		}
		var ws unix.WaitStatus
		_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	}
}

// procStat returns the parent pid and state of pid.
func procStat(pid int) (ppid int, state string, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("malformed /proc/%d/stat: %q", pid, s)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return 0, "", fmt.Errorf("malformed /proc/%d/stat: %q", pid, s)
	}
	ppid, err = strconv.Atoi(fields[1])
	return ppid, fields[0], err
}

// reap waits for pid, a child of the test process, to exit and returns its
// wait status. ECHILD (already reaped) gives ok == false.
func reap(t *testing.T, pid int) (ws unix.WaitStatus, ok bool) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			done <- err
			return
		}
	}()
	select {
	case err := <-done:
		if errors.Is(err, unix.ECHILD) {
			return ws, false
		}
		if err != nil {
			t.Fatalf("wait4(%d): %v", pid, err)
		}
		return ws, true
	case <-time.After(liveWait):
		t.Fatalf("pid %d did not exit within %v", pid, liveWait)
		return ws, false
	}
}

// testNullIO returns go-runc's /dev/null IO; Create closes it after the start.
func testNullIO(t *testing.T) runc.IO {
	t.Helper()
	io, err := runc.NewNullIO()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { io.Close() })
	return io
}

// wantClass fails the test, without stopping it, unless err is an *Error of
// the op whose class is want and agrees with Classify of its message.
func wantClass(t *testing.T, op string, err, want error) {
	t.Helper()
	var rerr *Error
	if !errors.As(err, &rerr) {
		t.Errorf("%s = %v (%T), want a *Error of class %v", op, err, err, want)
		return
	}
	if !errors.Is(err, want) {
		t.Errorf("%s = %v, want class %v (Classify says %v)", op, err, want, Classify(rerr.Op, rerr.ID, rerr.Message))
		return
	}
	if Classify(rerr.Op, rerr.ID, rerr.Message) != want {
		t.Errorf("%s: Classify(%q) = %v, want %v", op, rerr.Message, Classify(rerr.Op, rerr.ID, rerr.Message), want)
	}
}

// TestLiveMissingContainer runs real runtime commands against a container
// the runtime does not know.
func TestLiveMissingContainer(t *testing.T) {
	for _, lr := range liveRuntimes {
		t.Run(lr.name, func(t *testing.T) {
			requireBinary(t, lr.binary)
			lr.setup(t)
			testutil.CheckLeaks(t)
			ctx := context.Background()
			id := uniqueID("missing")
			tests := []struct {
				op   string
				run  func(rt *Runtime) error
				want error // nil: success
			}{
				{"kill", func(rt *Runtime) error { return rt.Kill(ctx, id, 9, false) }, errdefs.ErrNotFound},
				{"kill --all", func(rt *Runtime) error { return rt.Kill(ctx, id, 15, true) }, errdefs.ErrNotFound},
				{"delete", func(rt *Runtime) error { return rt.Delete(ctx, id, false) }, nil},
				{"delete --force", func(rt *Runtime) error { return rt.Delete(ctx, id, true) }, nil},
				{"start", func(rt *Runtime) error { return rt.Start(ctx, id) }, errdefs.ErrNotFound},
				{"ps", func(rt *Runtime) error {
					pids, err := rt.Ps(ctx, id)
					if err == nil {
						return fmt.Errorf("ps of a missing container listed %v", pids)
					}
					return err
				}, errdefs.ErrNotFound},
			}
			for _, tt := range tests {
				t.Run(tt.op, func(t *testing.T) {
					h := &countingMonitor{}
					dir := t.TempDir()
					rt := New(Config{Binary: lr.binary, Root: filepath.Join(dir, "root"), Log: filepath.Join(dir, "log.json")}, h)
					err := tt.run(rt)
					h.check(t, 1)
					if tt.want == nil {
						if err != nil {
							t.Fatalf("%s = %v, want nil", tt.op, err)
						}
						return
					}
					wantClass(t, tt.op, err, tt.want)
				})
			}
		})
	}
}

// TestLiveLifecycle creates, starts, kills and deletes a real busybox
// container with each runtime and checks the class of every refusal.
func TestLiveLifecycle(t *testing.T) {
	for _, lr := range liveRuntimes {
		t.Run(lr.name, func(t *testing.T) {
			requireBinary(t, lr.binary)
			lr.setup(t)
			becomeSubreaper(t)
			testutil.CheckLeaks(t)
			ctx := context.Background()
			bundle := busyboxBundle(t, "/bin/sleep", "100")
			state := t.TempDir()
			h := &countingMonitor{}
			holds := 0
			rt := New(Config{Binary: lr.binary, Root: filepath.Join(state, "root"), Log: filepath.Join(state, "log.json")}, h)
			id := uniqueID(lr.name)

			// Create, registering the pid while the Hold is active.
			pidFile := filepath.Join(state, "create.pid")
			registered := 0
			activeInRegister := -1
			pid, err := rt.Create(ctx, id, bundle, CreateOpts{IO: testNullIO(t), PidFile: pidFile}, func(pid int) error {
				registered = pid
				activeInRegister = h.Active()
				return nil
			})
			holds++
			h.check(t, holds)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			t.Cleanup(func() {
				if err := rt.Delete(context.Background(), id, true); err != nil {
					t.Errorf("cleanup: forced delete: %v", err)
				}
				reap(t, pid)
			})
			if pid <= 0 || registered != pid {
				t.Fatalf("Create returned pid %d, register got %d", pid, registered)
			}
			if activeInRegister != 1 {
				t.Errorf("register ran with %d active holds, want 1 (the Hold of Create)", activeInRegister)
			}
			if filePid, err := ReadPidFile(pidFile); err != nil || filePid != pid {
				t.Fatalf("pid file holds %d (%v), register got %d", filePid, err, pid)
			}
			if err := unix.Kill(pid, 0); err != nil {
				t.Fatalf("created pid %d is not alive: %v", pid, err)
			}
			if ppid, st, err := procStat(pid); err != nil || ppid != os.Getpid() {
				t.Fatalf("created pid %d has parent %d (state %s, %v), want the subreaper %d", pid, ppid, st, err, os.Getpid())
			}

			// A second create with the same id.
			dupRegistered := false
			dupPid, err := rt.Create(ctx, id, bundle, CreateOpts{IO: testNullIO(t), PidFile: filepath.Join(state, "dup.pid")}, func(int) error {
				dupRegistered = true
				return nil
			})
			holds++
			h.check(t, holds)
			wantClass(t, "create with a duplicate id", err, errdefs.ErrAlreadyExists)
			if dupPid != 0 || dupRegistered {
				t.Fatalf("failed create returned pid %d, registered %v", dupPid, dupRegistered)
			}

			// Ps of the created container lists the init process.
			pids, err := rt.Ps(ctx, id)
			holds++
			h.check(t, holds)
			if err != nil || !slices.Contains(pids, pid) {
				t.Fatalf("Ps of the created container = %v, %v; want it to list %d", pids, err, pid)
			}

			if err := rt.Start(ctx, id); err != nil {
				t.Fatalf("Start: %v", err)
			}
			holds++
			h.check(t, holds)

			err = rt.Start(ctx, id)
			holds++
			h.check(t, holds)
			wantClass(t, "second start", err, errdefs.ErrFailedPrecondition)

			pids, err = rt.Ps(ctx, id)
			holds++
			h.check(t, holds)
			if err != nil || !slices.Contains(pids, pid) {
				t.Fatalf("Ps of the running container = %v, %v; want it to list %d", pids, err, pid)
			}

			// Delete without force refuses a running container.
			err = rt.Delete(ctx, id, false)
			holds++
			h.check(t, holds)
			if err == nil {
				t.Fatal("Delete without force of a running container returned nil")
			}
			if IsNotFound(err) {
				t.Fatalf("Delete without force of a running container is NotFound: %v", err)
			}

			if err := rt.Kill(ctx, id, uint32(unix.SIGKILL), false); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			holds++
			h.check(t, holds)
			ws, ok := reap(t, pid)
			if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("init %d ended with %v (reaped %v), want SIGKILL", pid, ws, ok)
			}

			err = rt.Kill(ctx, id, uint32(unix.SIGKILL), false)
			holds++
			h.check(t, holds)
			wantClass(t, "kill after the container stopped", err, lr.killStopped)

			err = rt.Start(ctx, id)
			holds++
			h.check(t, holds)
			wantClass(t, "start after the container stopped", err, lr.startStopped)

			if err := rt.Delete(ctx, id, false); err != nil {
				t.Fatalf("Delete of the stopped container: %v", err)
			}
			holds++
			h.check(t, holds)
			if _, err := os.Stat(filepath.Join(state, "root", id)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("runtime state of %s is left after delete: %v", id, err)
			}

			if err := rt.Delete(ctx, id, false); err != nil {
				t.Fatalf("second Delete = %v, want nil (idempotent)", err)
			}
			holds++
			h.check(t, holds)

			err = rt.Kill(ctx, id, uint32(unix.SIGKILL), false)
			holds++
			h.check(t, holds)
			wantClass(t, "kill after delete", err, errdefs.ErrNotFound)
		})
	}
}

// TestLiveRegisterFailure checks that Create hands register's error back
// with the pid, leaving the container for the caller to delete.
func TestLiveRegisterFailure(t *testing.T) {
	for _, lr := range liveRuntimes {
		t.Run(lr.name, func(t *testing.T) {
			requireBinary(t, lr.binary)
			lr.setup(t)
			becomeSubreaper(t)
			testutil.CheckLeaks(t)
			ctx := context.Background()
			bundle := busyboxBundle(t, "/bin/sleep", "100")
			state := t.TempDir()
			h := &countingMonitor{}
			rt := New(Config{Binary: lr.binary, Root: filepath.Join(state, "root"), Log: filepath.Join(state, "log.json")}, h)
			id := uniqueID(lr.name + "-reg")
			boom := errors.New("watch failed")
			pid, err := rt.Create(ctx, id, bundle, CreateOpts{IO: testNullIO(t), PidFile: filepath.Join(state, "create.pid")},
				func(int) error { return boom })
			h.check(t, 1)
			if pid > 0 {
				t.Cleanup(func() { reap(t, pid) })
			}
			if !errors.Is(err, boom) {
				t.Fatalf("Create = %v, want the register error", err)
			}
			if pid <= 0 {
				t.Fatalf("Create returned pid %d with the register error, want the created pid", pid)
			}
			if err := unix.Kill(pid, 0); err != nil {
				t.Fatalf("the container was not left for the caller: pid %d: %v", pid, err)
			}
			if err := rt.Delete(ctx, id, true); err != nil {
				t.Fatalf("forced Delete: %v", err)
			}
			h.check(t, 2)
			if _, ok := reap(t, pid); !ok {
				t.Fatalf("pid %d was not our child", pid)
			}
		})
	}
}

// TestLiveExec runs a detached exec in a running container.
func TestLiveExec(t *testing.T) {
	for _, lr := range liveRuntimes {
		t.Run(lr.name, func(t *testing.T) {
			requireBinary(t, lr.binary)
			lr.setup(t)
			becomeSubreaper(t)
			testutil.CheckLeaks(t)
			ctx := context.Background()
			bundle := busyboxBundle(t, "/bin/sleep", "100")
			state := t.TempDir()
			h := &countingMonitor{}
			rt := New(Config{Binary: lr.binary, Root: filepath.Join(state, "root"), Log: filepath.Join(state, "log.json")}, h)
			id := uniqueID(lr.name + "-exec")
			pid, err := rt.Create(ctx, id, bundle, CreateOpts{IO: testNullIO(t), PidFile: filepath.Join(state, "create.pid")},
				func(int) error { return nil })
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			execPid := 0
			t.Cleanup(func() {
				// The init of a pid namespace finishes exiting only once
				// every other member was reaped, and the exec process is
				// the test's child: kill everything and reap the exec
				// process before the forced delete waits for init.
				if err := rt.Kill(context.Background(), id, uint32(unix.SIGKILL), true); err != nil {
					t.Errorf("cleanup: kill --all: %v", err)
				}
				if execPid > 0 {
					reap(t, execPid)
				}
				reap(t, pid)
				if err := rt.Delete(context.Background(), id, true); err != nil {
					t.Errorf("cleanup: forced delete: %v", err)
				}
			})
			if err := rt.Start(ctx, id); err != nil {
				t.Fatalf("Start: %v", err)
			}
			execPidFile := filepath.Join(state, "exec.pid")
			registered := 0
			activeInRegister := -1
			proc := specs.Process{Args: []string{"/bin/sleep", "100"}, Cwd: "/", Env: []string{"PATH=/bin"}}
			execPid, err = rt.Exec(ctx, id, proc, ExecOpts{IO: testNullIO(t), PidFile: execPidFile}, func(p int) error {
				registered = p
				activeInRegister = h.Active()
				return nil
			})
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			h.check(t, 3)
			if execPid <= 0 || registered != execPid || execPid == pid {
				t.Fatalf("Exec returned pid %d, register got %d (init %d)", execPid, registered, pid)
			}
			if activeInRegister != 1 {
				t.Errorf("register ran with %d active holds, want 1", activeInRegister)
			}
			if filePid, err := ReadPidFile(execPidFile); err != nil || filePid != execPid {
				t.Fatalf("exec pid file holds %d (%v), register got %d", filePid, err, execPid)
			}
			pids, err := rt.Ps(ctx, id)
			if err != nil || !slices.Contains(pids, execPid) {
				t.Fatalf("Ps = %v, %v; want it to list the exec pid %d", pids, err, execPid)
			}
			h.check(t, 4)

			// Exec in a container that is gone.
			_, err = rt.Exec(ctx, uniqueID("gone"), proc, ExecOpts{IO: testNullIO(t), PidFile: filepath.Join(state, "gone.pid")},
				func(int) error { return errors.New("register called for a failed exec") })
			h.check(t, 5)
			wantClass(t, "exec in a missing container", err, errdefs.ErrNotFound)
		})
	}
}

// TestLiveLogMark checks the log mark against a real runtime: crun reports
// a failed ps on stderr, not in its log, so an older error left in the log
// must not be reported instead.
func TestLiveLogMark(t *testing.T) {
	requireBinary(t, crunBinary)
	setupCrunCgroups(t)
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	log := filepath.Join(dir, "log.json")
	if err := os.WriteFile(log, []byte(oldError+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &countingMonitor{}
	rt := New(Config{Binary: crunBinary, Root: filepath.Join(dir, "root"), Log: log}, h)
	_, err := rt.Ps(context.Background(), uniqueID("mark"))
	h.check(t, 1)
	wantClass(t, "ps of a missing container", err, errdefs.ErrNotFound)
	if errors.Is(err, errdefs.ErrAlreadyExists) || strings.Contains(err.Error(), "already exists") {
		t.Fatalf("ps reported the old log entry: %v", err)
	}
}

// nilIOWait is how long the nil-IO tests give a launch to return: far more
// than runc or crun need.
const nilIOWait = 20 * time.Second

// launchBounded runs launch in a goroutine and waits up to nilIOWait for it.
// When it does not return, the test fails, unblock runs (it kills the
// process holding the pipes) and launch gets liveWait more to return.
func launchBounded(t *testing.T, what string, launch func() (int, error), unblock func()) (int, error) {
	t.Helper()
	type result struct {
		pid int
		err error
	}
	done := make(chan result, 1)
	go func() {
		pid, err := launch()
		done <- result{pid, err}
	}()
	select {
	case r := <-done:
		return r.pid, r.err
	case <-time.After(nilIOWait):
		t.Errorf("%s with a nil IO did not return within %v while its process runs", what, nilIOWait)
		unblock()
		select {
		case r := <-done:
			return r.pid, r.err
		case <-time.After(liveWait):
			t.Fatalf("%s did not return after its process was killed", what)
			return 0, nil
		}
	}
}

// TestRegressionNilIOWaitsForProcessExit checks what CreateOpts documents:
// "IO connects the container's stdio; nil means /dev/null" (and the same
// for ExecOpts). With a nil IO go-runc runs the runtime with pipes to a
// buffer as its stdout and stderr; the container (or exec) process inherits
// them, so the command's Wait, and Create or Exec with it, does not return
// until that process exits. container.Create passes a nil IO for every
// container without stdio.
func TestRegressionNilIOWaitsForProcessExit(t *testing.T) {
	for _, lr := range liveRuntimes {
		t.Run(lr.name+"/create", func(t *testing.T) {
			requireBinary(t, lr.binary)
			lr.setup(t)
			becomeSubreaper(t)
			ctx := context.Background()
			bundle := busyboxBundle(t, "/bin/sleep", "100")
			state := t.TempDir()
			cfg := Config{Binary: lr.binary, Root: filepath.Join(state, "root"), Log: filepath.Join(state, "log.json")}
			rt := New(cfg, &countingMonitor{})
			id := uniqueID(lr.name + "-nilio")
			pidFile := filepath.Join(state, "create.pid")
			pid, err := launchBounded(t, "Create",
				func() (int, error) {
					return rt.Create(ctx, id, bundle, CreateOpts{PidFile: pidFile}, func(int) error { return nil })
				},
				func() {
					if err := New(cfg, &countingMonitor{}).Kill(ctx, id, uint32(unix.SIGKILL), false); err != nil {
						t.Errorf("kill to unblock Create: %v", err)
					}
				})
			if p, rerr := ReadPidFile(pidFile); rerr == nil {
				t.Cleanup(func() { reap(t, p) })
			}
			t.Cleanup(func() {
				if err := rt.Delete(context.Background(), id, true); err != nil {
					t.Errorf("forced delete: %v", err)
				}
			})
			if err != nil || pid <= 0 {
				t.Fatalf("Create = %d, %v", pid, err)
			}
		})
		t.Run(lr.name+"/exec", func(t *testing.T) {
			requireBinary(t, lr.binary)
			lr.setup(t)
			becomeSubreaper(t)
			ctx := context.Background()
			bundle := busyboxBundle(t, "/bin/sleep", "100")
			state := t.TempDir()
			cfg := Config{Binary: lr.binary, Root: filepath.Join(state, "root"), Log: filepath.Join(state, "log.json")}
			rt := New(cfg, &countingMonitor{})
			id := uniqueID(lr.name + "-nilio-exec")
			pid, err := rt.Create(ctx, id, bundle, CreateOpts{IO: testNullIO(t), PidFile: filepath.Join(state, "create.pid")}, func(int) error { return nil })
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			execPidFile := filepath.Join(state, "exec.pid")
			t.Cleanup(func() {
				if err := rt.Kill(context.Background(), id, uint32(unix.SIGKILL), true); err != nil {
					t.Errorf("cleanup: kill --all: %v", err)
				}
				if p, err := ReadPidFile(execPidFile); err == nil {
					reap(t, p)
				}
				reap(t, pid)
				if err := rt.Delete(context.Background(), id, true); err != nil {
					t.Errorf("cleanup: forced delete: %v", err)
				}
			})
			if err := rt.Start(ctx, id); err != nil {
				t.Fatalf("Start: %v", err)
			}
			proc := specs.Process{Args: []string{"/bin/sleep", "100"}, Cwd: "/", Env: []string{"PATH=/bin"}}
			execPid, err := launchBounded(t, "Exec",
				func() (int, error) {
					return rt.Exec(ctx, id, proc, ExecOpts{PidFile: execPidFile}, func(int) error { return nil })
				},
				func() {
					p, err := ReadPidFile(execPidFile)
					if err != nil {
						t.Errorf("unblock Exec: %v", err)
						return
					}
					if err := unix.Kill(p, unix.SIGKILL); err != nil {
						t.Errorf("kill the exec process %d: %v", p, err)
					}
				})
			if err != nil || execPid <= 0 {
				t.Fatalf("Exec = %d, %v", execPid, err)
			}
		})
	}
}
