package exits

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

// childEnv selects what the test binary does when it runs as a child:
//
//	exit:N       exit with code N
//	sleep        sleep until killed
//	stdin:N      read stdin until EOF, then exit with code N
//	orphan:MODE  start a grandchild running MODE with this process's stdin,
//	             print its pid on stdout and exit 0 without waiting for it:
//	             the grandchild is reparented to the subreaper (the test)
const childEnv = "EXITS_TEST_CHILD"

// deadline bounds every wait of the tests; reaching it fails the test.
const deadline = 60 * time.Second

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(childEnv); ok {
		os.Exit(runChild(mode))
	}
	testutil.PrimeRuntime()
	os.Exit(m.Run())
}

// childEnviron is the environment of a child running mode
// (testutil.ChildEnv).
func childEnviron(mode string) []string { return testutil.ChildEnv(childEnv, mode) }

func runChild(mode string) int {
	name, arg, _ := strings.Cut(mode, ":")
	switch name {
	case "exit":
		n, _ := strconv.Atoi(arg)
		return n
	case "sleep":
		for {
			time.Sleep(time.Hour)
		}
	case "stdin":
		_, _ = io.Copy(io.Discard, os.Stdin)
		n, _ := strconv.Atoi(arg)
		return n
	case "orphan":
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 100
		}
		if strings.HasPrefix(arg, "orphan") {
			fmt.Fprintln(os.Stderr, "refusing a chain of orphan makers")
			return 103
		}
		pid, err := syscall.ForkExec(exe, []string{exe}, &syscall.ProcAttr{
			Env:   childEnviron(arg),
			Files: []uintptr{0, 2, 2},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 101
		}
		fmt.Println(pid)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown %s %q\n", childEnv, mode)
	return 102
}

// mode is one way of running a Reaper: the normal one, and the fallbacks for
// old kernels.
type mode struct {
	name string
	opts options
}

func testModes() []mode {
	return []mode{
		{"pidfd", options{}},
		{"fallback", options{noPidfd: true, statScan: true}},
	}
}

// logSink collects the Reaper's log lines and echoes them to the test log.
type logSink struct {
	t testing.TB

	// mu guards buf.
	mu  sync.Mutex
	buf strings.Builder
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.buf.Write(p)
	s.mu.Unlock()
	s.t.Logf("reaper: %s", strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// newTestReaper makes a Reaper that is closed when the test ends (before the
// leak check registered earlier runs).
func newTestReaper(t *testing.T, opts options) (*Reaper, *logSink) {
	t.Helper()
	sink := &logSink{t: t}
	logger := slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := newReaper(logger, opts, nil)
	if err != nil {
		t.Fatalf("newReaper: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r, sink
}

func testExe(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable: %v", err)
	}
	return exe
}

// spawn starts the test binary as a child running mode. stdin may be nil.
// The child is not waited for: the test must Watch or reap it.
func spawn(t testing.TB, mode string, stdin *os.File) int {
	t.Helper()
	exe := testExe(t)
	return spawnArgv(t, []string{exe}, childEnviron(mode), stdin, nil)
}

// spawnArgv starts argv[0] with no os/exec bookkeeping (no pidfd kept, no
// goroutine), so the Reaper is the only one who can collect its exit.
func spawnArgv(t testing.TB, argv, env []string, stdin, stdout *os.File) int {
	t.Helper()
	pid, err := forkExec(argv, env, stdin, stdout)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// forkExec is spawnArgv for goroutines other than the test's (no t.Fatal).
func forkExec(argv, env []string, stdin, stdout *os.File) (int, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	files := []uintptr{devnull.Fd(), devnull.Fd(), 2}
	if stdin != nil {
		files[0] = stdin.Fd()
	}
	if stdout != nil {
		files[1] = stdout.Fd()
	}
	pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{Env: env, Files: files})
	if err != nil {
		return 0, fmt.Errorf("fork/exec %v: %w", argv, err)
	}
	return pid, nil
}

// startOrphan makes an orphan: under a Hold, it starts a child that starts a
// grandchild running grandMode and exits; the child's exit is collected
// through Watch. It returns the grandchild's pid, by then a child of the test
// process, and the write end of the grandchild's stdin.
func startOrphan(t testing.TB, r *Reaper, grandMode string) (int, *os.File) {
	t.Helper()
	release := r.Hold()
	defer release()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	pid := spawnArgv(t, []string{testExe(t)}, childEnviron("orphan:"+grandMode), inR, outW)
	inR.Close()
	outW.Close()
	exits := make(chan Exit, 1)
	if err := r.Watch(pid, func(e Exit) { exits <- e }); err != nil {
		t.Fatalf("Watch orphan maker %d: %v", pid, err)
	}
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("read grandchild pid: %v", err)
	}
	gpid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("grandchild pid %q: %v", line, err)
	}
	if e := waitExit(t, exits); e.Status != 0 {
		t.Fatalf("orphan maker exit %+v", e)
	}
	waitFor(t, fmt.Sprintf("grandchild %d reparented to the test process", gpid), func() bool {
		_, ppid, ok := procStat(gpid)
		return ok && ppid == os.Getpid()
	})
	return gpid, inW
}

// waitExit waits for one exit on ch.
func waitExit(t testing.TB, ch <-chan Exit) Exit {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(deadline):
		t.Fatalf("no exit reported within %v", deadline)
		return Exit{}
	}
}

// waitFor polls cond until it holds; the test fails if it does not within
// the deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// procStat reads the state and ppid of pid; ok is false if pid is gone.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	return parseStat(b)
}

// zombieChild reports whether pid is an unreaped zombie child of the test.
func zombieChild(pid int) bool {
	state, ppid, ok := procStat(pid)
	return ok && state == 'Z' && ppid == os.Getpid()
}

// gone reports whether pid no longer exists as a child of the test (it was
// reaped; a reused pid would belong to someone else's child).
func gone(pid int) bool {
	_, ppid, ok := procStat(pid)
	return !ok || ppid != os.Getpid()
}

// ourZombies lists the zombie children of the test process.
func ourZombies(t testing.TB) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && zombieChild(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// threads reads the thread count of the test process.
func threads(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads in /proc/self/status")
	return 0
}

// isPending and resetPending observe the deferred-sweep flag.
func (r *Reaper) isPending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending
}

func (r *Reaper) resetPending() {
	r.mu.Lock()
	r.pending = false
	r.mu.Unlock()
}

// forceDeferredSweep proves a sweep ran while a Hold was active: it clears
// the pending flag, sends SIGCHLD to the test process and waits until the
// sweeper has set the flag again.
func forceDeferredSweep(t testing.TB, r *Reaper) {
	t.Helper()
	r.resetPending()
	if err := unix.Kill(os.Getpid(), unix.SIGCHLD); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sweep deferred by the Hold", r.isPending)
}

// reapDirect reaps a child the Reaper does not own (after Close).
func reapDirect(t testing.TB, pid int) unix.WaitStatus {
	t.Helper()
	var ws unix.WaitStatus
	if _, err := wait4(pid, &ws, 0); err != nil {
		t.Fatalf("wait4 %d: %v", pid, err)
	}
	return ws
}
