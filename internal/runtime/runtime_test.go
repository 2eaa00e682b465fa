package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/testutil"
)

func TestMain(m *testing.M) {
	UseGroupMonitor()
	testutil.PrimeRuntime()
	os.Exit(m.Run())
}

// countingMonitor is an exits.Monitor that counts Hold calls and releases
// and notices a release called twice. The runtime never watches or signals
// through it (the register funcs the tests pass do their own), so Watch and
// Signal fail.
type countingMonitor struct {
	mu       sync.Mutex
	holds    int
	releases int
	active   int
	doubles  int
}

func (h *countingMonitor) Hold() func() {
	h.mu.Lock()
	h.holds++
	h.active++
	h.mu.Unlock()
	var calls atomic.Int32
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if calls.Add(1) > 1 {
			h.doubles++
			return
		}
		h.releases++
		h.active--
	}
}

// Watch refuses: a Runtime only holds.
func (h *countingMonitor) Watch(pid int, _ func(exits.Exit)) error {
	return fmt.Errorf("countingMonitor: watch %d: not a watcher", pid)
}

// Signal refuses: a Runtime only holds.
func (h *countingMonitor) Signal(pid int, _ syscall.Signal) error {
	return fmt.Errorf("countingMonitor: signal %d: not a watcher", pid)
}

// Active returns how many holds are not released.
func (h *countingMonitor) Active() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.active
}

// check fails the test unless exactly n holds were taken and all released.
func (h *countingMonitor) check(t *testing.T, n int) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.holds != n || h.releases != n || h.active != 0 || h.doubles != 0 {
		t.Fatalf("holder: %d holds, %d releases, %d active, %d double releases; want %d holds all released once",
			h.holds, h.releases, h.active, h.doubles, n)
	}
}

func TestReadPidFile(t *testing.T) {
	tests := []struct {
		name    string
		content string // "-" means no file
		want    int
		wantErr bool
	}{
		{"plain", "4242", 4242, false},
		{"trailing newline", "4242\n", 4242, false},
		{"surrounding space", " 17 \n", 17, false},
		{"garbage", "pid", 0, true},
		{"number and garbage", "42abc", 0, true},
		{"zero", "0", 0, true},
		{"negative", "-5", 0, true},
		{"empty", "", 0, true},
		{"missing", "-", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "create.pid")
			if tt.content != "-" {
				if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadPidFile(path)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ReadPidFile(%q) = %d, want an error", tt.content, got)
				}
				if tt.content == "-" && !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("missing pid file error = %v, want ErrNotExist", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadPidFile(%q) = %d, %v; want %d", tt.content, got, err, tt.want)
			}
		})
	}
}

func TestCountingMonitor(t *testing.T) {
	h := &countingMonitor{}
	r1, r2 := h.Hold(), h.Hold()
	if h.Active() != 2 {
		t.Fatalf("Active() = %d, want 2", h.Active())
	}
	r1()
	r2()
	h.check(t, 2)
	r1()
	if h.doubles != 1 {
		t.Fatalf("a second release was not noticed: %+v", h)
	}
}

func TestNewDefaults(t *testing.T) {
	h := &countingMonitor{}
	rt := New(Config{Root: "/run/x"}, h)
	if rt.Binary() != "runc" {
		t.Errorf("Binary() = %q, want runc", rt.Binary())
	}
	if rt.Root() != "/run/x" {
		t.Errorf("Root() = %q, want /run/x", rt.Root())
	}
	h.check(t, 0)
}

// fakeRuntime copies testdata/fake-runtime.sh into a temporary directory and
// returns its path. What it logs and prints is set with FAKE_RUNTIME_LOG and
// FAKE_RUNTIME_STDERR.
func fakeRuntime(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "fake-runtime.sh"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fake-runtime")
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// oldError is an error an earlier command left in the log.
const oldError = `{"level":"error","msg":"runc create failed: container with given ID already exists","time":"2026-01-01T00:00:00Z"}`

// TestLogMark checks that a failing command reports its own message, never
// an error an earlier command left in the same log.
func TestLogMark(t *testing.T) {
	testutil.CheckLeaks(t)
	binary := fakeRuntime(t)
	tests := []struct {
		name      string
		oldLog    bool   // the log holds oldError before the command
		logLine   string // what the command appends to the log
		stderr    string // what the command prints
		wantMsg   string // must be contained in Error.Message
		wantClass error
	}{
		{
			name: "message only on stderr", oldLog: true,
			stderr:  "container not running",
			wantMsg: "container not running", wantClass: errdefs.ErrFailedPrecondition,
		},
		{
			name: "warning in log, message on stderr", oldLog: true,
			logLine: `{"level":"warning","msg":"cgroup v1 is deprecated"}`,
			stderr:  "container not running",
			wantMsg: "container not running", wantClass: errdefs.ErrFailedPrecondition,
		},
		{
			name: "new error in log", oldLog: true,
			logLine: `{"level":"error","msg":"container not running"}`,
			stderr:  "something else",
			wantMsg: "container not running", wantClass: errdefs.ErrFailedPrecondition,
		},
		{
			name: "fatal entry in log", oldLog: true,
			logLine: `{"level":"fatal","msg":"container not running"}`,
			wantMsg: "container not running", wantClass: errdefs.ErrFailedPrecondition,
		},
		{
			name:    "no log before the command",
			logLine: `{"level":"error","msg":"the container ` + "`c1`" + ` is not running"}`,
			wantMsg: "the container `c1` is not running", wantClass: errdefs.ErrFailedPrecondition,
		},
		{
			name: "nothing said at all", oldLog: true,
			wantClass: errdefs.ErrUnknown,
		},
	}
	type op struct {
		name string
		run  func(rt *Runtime) error
	}
	ops := []op{
		{"kill", func(rt *Runtime) error { return rt.Kill(context.Background(), "c1", 9, false) }},
		{"start", func(rt *Runtime) error { return rt.Start(context.Background(), "c1") }},
		{"delete", func(rt *Runtime) error { return rt.Delete(context.Background(), "c1", true) }},
		{"ps", func(rt *Runtime) error { _, err := rt.Ps(context.Background(), "c1"); return err }},
		{"create", func(rt *Runtime) error {
			_, err := rt.Create(context.Background(), "c1", "/nonexistent", CreateOpts{PidFile: "/nonexistent/init.pid"},
				func(int) error { return errors.New("register called for a failed create") })
			return err
		}},
		{"exec", func(rt *Runtime) error {
			_, err := rt.Exec(context.Background(), "c1", specs.Process{Args: []string{"true"}, Cwd: "/"},
				ExecOpts{PidFile: "/nonexistent/exec.pid"},
				func(int) error { return errors.New("register called for a failed exec") })
			return err
		}},
	}
	for _, tt := range tests {
		for _, o := range ops {
			// Create and exec give the process /dev/null (or the client's
			// pipes) as stdio, and the runtime shares it: what it says on
			// stderr never reaches the shim, only its --log does (runc
			// and crun write both).
			if tt.wantMsg != "" && !strings.Contains(tt.logLine, tt.wantMsg) && (o.name == "create" || o.name == "exec") {
				continue
			}
			t.Run(tt.name+"/"+o.name, func(t *testing.T) {
				t.Setenv("FAKE_RUNTIME_LOG", tt.logLine)
				t.Setenv("FAKE_RUNTIME_STDERR", tt.stderr)
				log := filepath.Join(t.TempDir(), "log.json")
				if tt.oldLog {
					if err := os.WriteFile(log, []byte(oldError+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				h := &countingMonitor{}
				rt := New(Config{Binary: binary, Root: t.TempDir(), Log: log}, h)
				err := o.run(rt)
				h.check(t, 1)
				var rerr *Error
				if !errors.As(err, &rerr) {
					t.Fatalf("%s error = %v (%T), want *Error", o.name, err, err)
				}
				if rerr.Op != o.name || rerr.ID != "c1" {
					t.Errorf("Error.Op, ID = %q, %q; want %q, c1", rerr.Op, rerr.ID, o.name)
				}
				if strings.Contains(rerr.Message, "already exists") || errors.Is(err, errdefs.ErrAlreadyExists) {
					t.Fatalf("%s reported the old log entry: %v", o.name, err)
				}
				if !strings.Contains(rerr.Message, tt.wantMsg) {
					t.Errorf("Error.Message = %q, want it to contain %q", rerr.Message, tt.wantMsg)
				}
				// These are messages about an existing container, which
				// mean nothing particular from a create.
				want := tt.wantClass
				if o.name == "create" {
					want = errdefs.ErrUnknown
				}
				if !errors.Is(err, want) {
					t.Errorf("%s error %v is not %v", o.name, err, want)
				}
			})
		}
	}
}

// TestLogMarkDeleteNotFound checks that Delete's idempotence looks at the
// command's own message: an old "does not exist" in the log must not turn a
// real failure into success, and a new one must.
func TestLogMarkDeleteNotFound(t *testing.T) {
	testutil.CheckLeaks(t)
	binary := fakeRuntime(t)
	const oldNotFound = `{"level":"error","msg":"container does not exist"}`

	t.Run("old not-found, new failure", func(t *testing.T) {
		t.Setenv("FAKE_RUNTIME_LOG", `{"level":"error","msg":"unable to remove cgroup: device or resource busy"}`)
		t.Setenv("FAKE_RUNTIME_STDERR", "")
		log := filepath.Join(t.TempDir(), "log.json")
		if err := os.WriteFile(log, []byte(oldNotFound+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		h := &countingMonitor{}
		err := New(Config{Binary: binary, Log: log}, h).Delete(context.Background(), "c1", true)
		h.check(t, 1)
		if err == nil || !errors.Is(err, errdefs.ErrUnknown) || !strings.Contains(err.Error(), "device or resource busy") {
			t.Fatalf("Delete = %v, want the unknown cgroup error", err)
		}
	})
	t.Run("new not-found", func(t *testing.T) {
		t.Setenv("FAKE_RUNTIME_LOG", oldNotFound)
		t.Setenv("FAKE_RUNTIME_STDERR", "")
		log := filepath.Join(t.TempDir(), "log.json")
		if err := os.WriteFile(log, []byte(oldError+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		h := &countingMonitor{}
		if err := New(Config{Binary: binary, Log: log}, h).Delete(context.Background(), "c1", false); err != nil {
			t.Fatalf("Delete of a container the runtime does not know = %v, want nil", err)
		}
		h.check(t, 1)
	})
}

// TestRegressionErrorMessageCarriesGoRuncPrefix pins Error.Message to what
// the runtime said, as its documentation promises ("Message is what the
// runtime said, trimmed"), when the runtime said it on stderr rather than
// in its log (crun does so for ps). outputOf strips only an "exit status N: "
// prefix, but go-runc 1.2 formats its errors as "<binary> did not terminate
// successfully: exit status N: <output>".
func TestRegressionErrorMessageCarriesGoRuncPrefix(t *testing.T) {
	binary := fakeRuntime(t)
	t.Setenv("FAKE_RUNTIME_LOG", "")
	t.Setenv("FAKE_RUNTIME_STDERR", "container not running")
	h := &countingMonitor{}
	rt := New(Config{Binary: binary, Log: filepath.Join(t.TempDir(), "log.json")}, h)
	err := rt.Kill(context.Background(), "c1", 9, false)
	var rerr *Error
	if !errors.As(err, &rerr) {
		t.Fatalf("Kill = %v, want *Error", err)
	}
	if rerr.Message != "container not running" {
		t.Errorf("Error.Message = %q, want %q", rerr.Message, "container not running")
	}
}

// TestRegressionTimedOutCommandIsUnknown: a runtime command killed at its
// deadline was classed Unknown (its exit status said only "signal:
// killed"); containerd and the kubelet need DeadlineExceeded to tell a hung
// runtime from a failing one.
func TestRegressionTimedOutCommandIsUnknown(t *testing.T) {
	binary := fakeRuntime(t)
	t.Setenv("FAKE_RUNTIME_SLEEP", "30")
	h := &countingMonitor{}
	rt := New(Config{Binary: binary, Log: filepath.Join(t.TempDir(), "log.json")}, h)
	rt.controlLimit = 100 * time.Millisecond
	err := rt.Kill(context.Background(), "c1", 9, false)
	h.check(t, 1)
	var rerr *Error
	if !errors.As(err, &rerr) || !rerr.TimedOut {
		t.Fatalf("Kill = %v, want a timed-out *Error", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errdefs.ErrUnknown) {
		t.Errorf("Kill = %v: want context.DeadlineExceeded and not ErrUnknown", err)
	}
	if !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Kill = %q, want it to say it timed out", err)
	}
	// The caller's own deadline is not the command's: a cancelled request
	// ctx does not cut a runtime command short (detached), so a failure
	// after it is classed by what the runtime said.
	t.Setenv("FAKE_RUNTIME_SLEEP", "")
	t.Setenv("FAKE_RUNTIME_STDERR", "container not running")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := rt.Kill(ctx, "c1", 9, false); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Kill with a cancelled request ctx = %v, want FailedPrecondition", err)
	}
}

func TestMissingBinary(t *testing.T) {
	h := &countingMonitor{}
	rt := New(Config{Binary: filepath.Join(t.TempDir(), "no-such-runtime"), Log: filepath.Join(t.TempDir(), "log.json")}, h)
	err := rt.Kill(context.Background(), "c1", 9, false)
	var rerr *Error
	if !errors.As(err, &rerr) {
		t.Fatalf("Kill = %v, want *Error", err)
	}
	if !errors.Is(err, errdefs.ErrUnknown) || IsNotFound(err) {
		t.Fatalf("a missing runtime binary must be ErrUnknown, got %v", err)
	}
	// A missing binary is not a missing container: Delete must not hide it.
	if err := rt.Delete(context.Background(), "c1", true); err == nil {
		t.Fatal("Delete with a missing runtime binary returned nil")
	}
	h.check(t, 2)
}

// sleepsOf lists the pids of processes running `sleep <arg>`.
func sleepsOf(arg string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if len(args) == 2 && filepath.Base(args[0]) == "sleep" && args[1] == arg {
			pid, _ := strconv.Atoi(e.Name())
			out = append(out, pid)
		}
	}
	return out
}

// TestRegressionHungRuntimeChildHoldsOutput: a runtime that hangs in a
// child process (a helper, a hook) kept the command's output pipe open
// after the runtime itself was killed at its deadline, so Kill did not
// return until that child ended, holding the exit monitor's Hold (no
// orphan was reaped) all along. Now the runtime runs in its own process
// group, all of which is killed at the deadline, and Kill returns then.
func TestRegressionHungRuntimeChildHoldsOutput(t *testing.T) {
	binary := fakeRuntime(t)
	const sleep = "31.5"
	t.Setenv("FAKE_RUNTIME_SLEEP_CHILD", sleep)
	h := &countingMonitor{}
	rt := New(Config{Binary: binary, Log: filepath.Join(t.TempDir(), "log.json")}, h)
	rt.controlLimit = 200 * time.Millisecond
	errc := make(chan error, 1)
	go func() { errc <- rt.Kill(context.Background(), "c1", 9, false) }()
	var err error
	select {
	case err = <-errc:
	case <-time.After(15 * time.Second):
		for _, pid := range sleepsOf(sleep) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		err = <-errc
		t.Fatalf("Kill did not return within 15 s of its 200 ms deadline (it returned %v once the runtime's child was killed)", err)
	}
	h.check(t, 1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Kill = %v, want a timed-out error", err)
	}
	if left := sleepsOf(sleep); len(left) > 0 {
		t.Errorf("the runtime's child %v still runs after the command's deadline", left)
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// TestRegressionControlCommandIgnoresRequestDeadline: a control command
// (kill, delete, ps, pause, ...) of a hung runtime ran for its full minute
// whatever the request's deadline, so the caller gave up first and got no
// answer from the shim, and a Kill that containerd retried piled up hung
// runtimes. Now it ends shortly before the request's deadline, with a
// timed-out error the caller receives; without a deadline, a cancelled
// request still does not cut it short (see
// TestRegressionTimedOutCommandIsUnknown).
func TestRegressionControlCommandIgnoresRequestDeadline(t *testing.T) {
	binary := fakeRuntime(t)
	t.Setenv("FAKE_RUNTIME_SLEEP", "30")
	h := &countingMonitor{}
	rt := New(Config{Binary: binary, Log: filepath.Join(t.TempDir(), "log.json")}, h)
	for _, op := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"kill", func(ctx context.Context) error { return rt.Kill(ctx, "c1", 9, false) }},
		{"delete", func(ctx context.Context) error { return rt.Delete(ctx, "c1", true) }},
		{"ps", func(ctx context.Context) error { _, err := rt.Ps(ctx, "c1"); return err }},
		{"pause", func(ctx context.Context) error { return rt.Pause(ctx, "c1") }},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errc := make(chan error, 1)
		go func() { errc <- op.call(ctx) }()
		select {
		case err := <-errc:
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
				t.Errorf("%s = %v, want a timed-out error", op.name, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s did not return within 20 s of a 2 s request deadline", op.name)
		}
		cancel()
	}
	h.check(t, 4)
}
