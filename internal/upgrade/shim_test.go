package upgrade

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v3"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/testutil"
)

// The shim tests run the real shim binary, built twice with different
// versions, as `serve` (what `start` launches), and talk to it over its
// socket with ttrpc, as containerd does.

const shimPkg = "github.com/tether-shim/tether/cmd/containerd-shim-tether-v2"

// buildShim builds the shim with main.version set to version.
func buildShim(t *testing.T, version string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is required: %v", err)
	}
	out := filepath.Join(t.TempDir(), "containerd-shim-tether-v2")
	cmd := exec.Command(goBin, "build", "-ldflags", "-X main.version="+version, "-o", out, shimPkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", shimPkg, err, b)
	}
	return out
}

// buildFutureShim builds a stand-in for a future build that no longer reads
// state version 1: it answers the dry run as such a build would.
func buildFutureShim(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module futureshim\n\ngo 1.21\n",
		"main.go": `package main

import "os"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-upgrade-check" {
		os.Stdout.WriteString(` + "`" + `{"shim":"containerd-shim-tether-v2","version":"future","reads":[3],"ok":false,"reason":"state version 2 is no longer read"}` + "`" + `)
		os.Exit(1)
	}
	os.Exit(2)
}
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "future")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build of the future shim: %v\n%s", err, b)
	}
	return out
}

// install puts a copy of src at dst by rename, as a package manager does:
// a running binary is never written to.
func install(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// lockedBuffer collects the shim's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testShim is a shim server started as `start` starts one.
type testShim struct {
	cmd  *exec.Cmd
	sock string
	log  *lockedBuffer
	// dir holds the shim's bundle; a container's bundle goes next to it.
	dir string
}

// startShim runs exe as a server with a listening socket on fd 3 and a log
// fifo in its bundle, whose content the test collects.
func startShim(t *testing.T, exe string) *testShim {
	t.Helper()
	dir := t.TempDir()
	// Named after the shim's id: containers' bundles are its siblings.
	bundle := filepath.Join(dir, "c1")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(bundle, "log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Read-write: the fifo never reports EOF, whatever image writes.
	logR, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := &testShim{sock: filepath.Join(dir, "s"), log: &lockedBuffer{}, dir: dir}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = s.log.ReadFrom(logR)
	}()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	s.cmd = exec.Command(exe, "-namespace", "upgrade-test", "-id", "c1", "-address", filepath.Join(dir, "containerd.sock"),
		"-bundle", bundle, "-debug", "serve")
	s.cmd.Dir = bundle
	s.cmd.ExtraFiles = []*os.File{lf}
	s.cmd.Env = append(os.Environ(), "TTRPC_ADDRESS=")
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		logR.Close()
		<-copied
		if t.Failed() {
			t.Logf("shim log:\n%s", s.log.String())
		}
	})
	return s
}

func (l *lockedBuffer) ReadFrom(f *os.File) (int64, error) {
	buf := make([]byte, 4096)
	var n int64
	for {
		k, err := f.Read(buf)
		if k > 0 {
			_, _ = l.Write(buf[:k])
			n += int64(k)
		}
		if err != nil {
			return n, err
		}
	}
}

// countingConn records, per stream id, the request frames a ttrpc client
// writes and the response frames it reads.
type countingConn struct {
	net.Conn
	mu        sync.Mutex
	in, out   frameScanner
	requests  map[uint32]int
	responses map[uint32]int
}

func newCountingConn(c net.Conn) *countingConn {
	return &countingConn{Conn: c, requests: map[uint32]int{}, responses: map[uint32]int{}}
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.count(&c.out, p[:n], typeRequest, c.requests)
	return n, err
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.count(&c.in, p[:n], typeResp, c.responses)
	return n, err
}

// count follows p through s, counting the frames of type typ per stream.
func (c *countingConn) count(s *frameScanner, p []byte, typ byte, counts map[uint32]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.scan(p, func(id uint32, t, _ byte) {
		if t == typ {
			counts[id]++
		}
	})
}

// check fails t unless every request was answered exactly once.
func (c *countingConn) check(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, n := range c.requests {
		if n != 1 || c.responses[id] != 1 {
			t.Errorf("stream %d: %d requests, %d responses", id, n, c.responses[id])
		}
	}
	for id, n := range c.responses {
		if c.requests[id] == 0 {
			t.Errorf("stream %d: %d responses to no request", id, n)
		}
	}
	if len(c.requests) == 0 {
		t.Error("no request went over the connection")
	}
}

// dial connects a ttrpc client to the shim, counting frames.
func dial(t *testing.T, sock string) (*ttrpc.Client, *countingConn) {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	cc := newCountingConn(conn)
	client := ttrpc.NewClient(cc)
	t.Cleanup(func() { client.Close() })
	return client, cc
}

// callCtx bounds one call.
func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// sameFile reports whether the running image of pid is the file at path
// (or the file whose FileInfo is fi).
func exeIs(t *testing.T, pid int, fi os.FileInfo) bool {
	t.Helper()
	got, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(got, fi)
}

// installedShim is a shim server started from a path of its own, where
// the test installs builds, with a connection to it.
type installedShim struct {
	*testShim
	exe     string
	pid     int
	counted *countingConn
	up      *Client
	tasks   taskapi.TTRPCTaskService
}

// startInstalled installs bin and starts it.
func startInstalled(t *testing.T, bin string) *installedShim {
	t.Helper()
	s := &installedShim{exe: filepath.Join(t.TempDir(), "containerd-shim-tether-v2")}
	install(t, bin, s.exe, 0o755)
	s.testShim = startShim(t, s.exe)
	s.pid = s.cmd.Process.Pid
	client, counted := dial(t, s.sock)
	s.counted, s.up, s.tasks = counted, NewClient(client), taskapi.NewTTRPCTaskClient(client)
	return s
}

// procStatus is the value of a field of /proc/PID/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

func TestShimLiveUpgrade(t *testing.T) {
	binA := buildShim(t, "upgrade-test-a")
	binB := buildShim(t, "upgrade-test-b")
	// Its connection is the one containerd would hold: tasks and status
	// requests flow on it from several goroutines across the upgrade.
	shim := startInstalled(t, binA)
	exe, pid, counted, up, tasks := shim.exe, shim.pid, shim.counted, shim.up, shim.tasks
	before, err := up.Status(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if before.Pid != pid || before.Version != "upgrade-test-a" || before.Generation != 0 || before.StateVersion != StateVersion {
		t.Fatalf("status before the upgrade: %+v (pid %d)", before, pid)
	}

	const workers, afterCalls = 4, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sawNew := 0
			for i := 0; sawNew < afterCalls; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := tasks.Connect(ctx, &taskapi.ConnectRequest{ID: fmt.Sprintf("none-%d-%d", w, i)})
				if status.Code(err) != codes.NotFound {
					cancel()
					errs <- fmt.Errorf("worker %d: Connect of no container: %v, want NotFound", w, err)
					return
				}
				st, err := up.Status(ctx)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("worker %d: Status: %w", w, err)
					return
				}
				if st.Pid != pid {
					errs <- fmt.Errorf("worker %d: pid %d, want %d", w, st.Pid, pid)
					return
				}
				if st.Version == "upgrade-test-b" {
					sawNew++
				}
			}
		}()
	}

	install(t, binB, exe, 0o755)
	installed, err := os.Stat(exe)
	if err != nil {
		t.Fatal(err)
	}
	// Another connection asks, as `tether upgrade` does.
	cli, cliCounted := dial(t, shim.sock)
	cliUp := NewClient(cli)
	acc, err := cliUp.Upgrade(callCtx(t), Request{ExpectVersion: "upgrade-test-b"})
	if err != nil {
		t.Fatal(err)
	}
	if acc.From != "upgrade-test-a" || acc.To != "upgrade-test-b" || acc.Exe != exe || acc.StateVersion != StateVersion {
		t.Fatalf("accepted: %+v", acc)
	}
	// Read after the accepting answer: the new image's.
	after, err := cliUp.Status(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if after.Pid != pid || after.Version != "upgrade-test-b" || after.Generation != 1 || after.LastError != "" {
		t.Fatalf("status after the upgrade: %+v (pid %d)", after, pid)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if !exeIs(t, pid, installed) {
		t.Errorf("/proc/%d/exe is not the binary installed at %s", pid, exe)
	}
	// PR_SET_THP_DISABLE, set for the new runtime's start, is cleared again:
	// children started later must get the host's huge page setting.
	if got := procStatus(t, pid, "THP_enabled"); got != "1" {
		t.Errorf("THP_enabled of the upgraded shim: %q, want 1", got)
	}
	if !strings.Contains(shim.log.String(), "resumed by live upgrade") {
		t.Errorf("the new image did not log its resumption")
	}

	// The same binary again: a no-op in effect, the generation counts it.
	if _, err := cliUp.Upgrade(callCtx(t), Request{}); err != nil {
		t.Fatal(err)
	}
	again, err := up.Status(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if again.Pid != pid || again.Version != "upgrade-test-b" || again.Generation != 2 {
		t.Fatalf("status after upgrading to the same binary: %+v", again)
	}
	counted.check(t)
	cliCounted.check(t)

	// Refusals change nothing.
	future := buildFutureShim(t)
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+binB+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	refusals := []struct {
		name    string
		prepare func()
		req     Request
		want    string
	}{
		{"a build that cannot read the state", func() { install(t, future, exe, 0o755) }, Request{}, "cannot take over state version 2: state version 2 is no longer read"},
		{"a script", func() { install(t, script, exe, 0o755) }, Request{}, "is not an ELF executable"},
		{"not a shim", func() { install(t, "/bin/true", exe, 0o755) }, Request{}, "gave no answer to -upgrade-check"},
		{"not executable", func() { install(t, binB, exe, 0o644) }, Request{}, "is not an executable file"},
		{"missing", func() { os.Remove(exe) }, Request{}, "no such file or directory"},
		{"another build than expected", func() { install(t, binA, exe, 0o755) }, Request{ExpectVersion: "upgrade-test-b"}, `is build "upgrade-test-a", not the expected "upgrade-test-b"`},
	}
	for _, r := range refusals {
		r.prepare()
		_, err := cliUp.Upgrade(callCtx(t), r.req)
		if err == nil || !strings.Contains(err.Error(), "upgrade refused") || !strings.Contains(err.Error(), r.want) {
			t.Errorf("%s: Upgrade = %v, want a refusal saying %q", r.name, err, r.want)
		}
		st, err := up.Status(callCtx(t))
		if err != nil {
			t.Fatalf("%s: Status after the refusal: %v", r.name, err)
		}
		if st.Pid != pid || st.Version != "upgrade-test-b" || st.Generation != 2 {
			t.Errorf("%s: status after the refusal: %+v", r.name, st)
		}
		if !exeIs(t, pid, installed) {
			t.Errorf("%s: /proc/%d/exe changed", r.name, pid)
		}
	}
	counted.check(t)

	// `tether upgrade PID`, back to the first build.
	tether := filepath.Join(t.TempDir(), "tether")
	if b, err := exec.Command("go", "build", "-o", tether, "github.com/tether-shim/tether/cmd/tether").CombinedOutput(); err != nil {
		t.Fatalf("go build tether: %v\n%s", err, b)
	}
	install(t, binA, exe, 0o755)
	out, err := exec.Command(tether, "upgrade", "--expect", "upgrade-test-a", fmt.Sprint(pid)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("shim %d: upgraded upgrade-test-b -> upgrade-test-a", pid)) {
		t.Fatalf("tether upgrade: %v\n%s", err, out)
	}
	final, err := up.Status(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if final.Pid != pid || final.Version != "upgrade-test-a" || final.Generation != 3 {
		t.Fatalf("status after tether upgrade: %+v", final)
	}
	out, err = exec.Command(tether, "upgrade", "--expect", "upgrade-test-b", fmt.Sprint(pid)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "upgrade refused") {
		t.Fatalf("tether upgrade to an unexpected build: %v\n%s", err, out)
	}
	counted.check(t)

	// The shim still stops as containerd stops it.
	if _, err := tasks.Shutdown(callCtx(t), &taskapi.ShutdownRequest{ID: "c1"}); err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := shim.cmd.Wait(); err != nil {
		t.Fatalf("shim exit: %v", err)
	}
}

// TestShimWithContainerUpgrades: a shim that holds a running container
// (state version 2) is upgraded; the container keeps its pid and its
// output, a counter every 10 ms to a file:// log, has no gap and no
// duplicate; after the upgrade an exec runs and a kill's exit is collected
// with its status, by a Wait sent before the upgrade (containerd holds one
// for every task: the old image leaves it to the new one) as well as by
// one sent after. A second container that exited before the upgrade keeps
// its exit status.
func TestShimWithContainerUpgrades(t *testing.T) {
	binA, binB := buildShim(t, "upgrade-test-a"), buildShim(t, "upgrade-test-b")
	shim := startInstalled(t, binA)
	pid, up, tasks := shim.pid, shim.up, shim.tasks

	id := fmt.Sprintf("upgrade-held-%d", os.Getpid())
	bundle := filepath.Join(shim.dir, id)
	testutil.BusyboxBundle(t, bundle, "/usr/sbin/runc", "sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done")
	logPath := filepath.Join(t.TempDir(), "counter.log")
	created, err := tasks.Create(callCtx(t), &taskapi.CreateTaskRequest{ID: id, Bundle: bundle, Stdout: "file://" + logPath})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = tasks.Kill(ctx, &taskapi.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL), All: true})
		_, _ = tasks.Delete(ctx, &taskapi.DeleteRequest{ID: id})
	})
	if _, err := tasks.Start(callCtx(t), &taskapi.StartRequest{ID: id}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	type waited struct {
		resp *taskapi.WaitResponse
		err  error
	}
	held := make(chan waited, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		r, err := tasks.Wait(ctx, &taskapi.WaitRequest{ID: id})
		held <- waited{r, err}
	}()

	exited := id + "-exited"
	exitedBundle := filepath.Join(shim.dir, exited)
	testutil.BusyboxBundle(t, exitedBundle, "/usr/sbin/runc", "sh", "-c", "exit 3")
	if _, err := tasks.Create(callCtx(t), &taskapi.CreateTaskRequest{ID: exited, Bundle: exitedBundle}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _, _ = tasks.Delete(context.Background(), &taskapi.DeleteRequest{ID: exited}) })
	if _, err := tasks.Start(callCtx(t), &taskapi.StartRequest{ID: exited}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if w, err := tasks.Wait(callCtx(t), &taskapi.WaitRequest{ID: exited}); err != nil || w.ExitStatus != 3 {
		t.Fatalf("Wait of the container that exits: %v, %v", w, err)
	}
	waitLines(t, logPath, 20)

	install(t, binB, shim.exe, 0o755)
	if _, err := up.Upgrade(callCtx(t), Request{ExpectVersion: "upgrade-test-b"}); err != nil {
		t.Fatalf("Upgrade with a container: %v", err)
	}
	st, err := up.Status(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Pid != pid || st.Version != "upgrade-test-b" || st.Generation != 1 || st.LastError != "" {
		t.Fatalf("status after the upgrade: %+v", st)
	}
	state, err := tasks.State(callCtx(t), &taskapi.StateRequest{ID: id})
	if err != nil {
		t.Fatalf("State after the upgrade: %v", err)
	}
	if state.Pid != created.Pid || state.Status != tasktypes.Status_RUNNING {
		t.Fatalf("container after the upgrade: pid %d status %v, created as %d", state.Pid, state.Status, created.Pid)
	}
	n := countLines(t, logPath)
	waitLines(t, logPath, n+20)
	if st, err := tasks.State(callCtx(t), &taskapi.StateRequest{ID: exited}); err != nil || st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 3 {
		t.Fatalf("the exited container after the upgrade: %v, %v; want stopped with status 3", st, err)
	}

	execID := "after-upgrade"
	spec := []byte(`{"args":["sh","-c","exit 7"],"cwd":"/","env":["PATH=/bin"]}`)
	if _, err := tasks.Exec(callCtx(t), &taskapi.ExecProcessRequest{ID: id, ExecID: execID, Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}); err != nil {
		t.Fatalf("Exec after the upgrade: %v", err)
	}
	if _, err := tasks.Start(callCtx(t), &taskapi.StartRequest{ID: id, ExecID: execID}); err != nil {
		t.Fatalf("exec Start after the upgrade: %v", err)
	}
	if w, err := tasks.Wait(callCtx(t), &taskapi.WaitRequest{ID: id, ExecID: execID}); err != nil || w.ExitStatus != 7 {
		t.Fatalf("exec Wait after the upgrade: %v, %v; want status 7", w, err)
	}
	if _, err := tasks.Kill(callCtx(t), &taskapi.KillRequest{ID: id, Signal: uint32(syscall.SIGKILL)}); err != nil {
		t.Fatalf("Kill after the upgrade: %v", err)
	}
	if w, err := tasks.Wait(callCtx(t), &taskapi.WaitRequest{ID: id}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("Wait after the upgrade: %v, %v; want status 137", w, err)
	}
	if w := <-held; w.err != nil || w.resp.ExitStatus != 137 {
		t.Fatalf("the Wait sent before the upgrade: %v, %v; want status 137", w.resp, w.err)
	}
	checkCounter(t, logPath)
}

// waitLines waits (bounded) until the file at path has n lines.
func waitLines(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for countLines(t, path) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d lines after 30 s, want %d", path, countLines(t, path), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

// checkCounter checks that the counter log holds 0, 1, 2, ... with no gap
// and no duplicate.
func checkCounter(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i, l := range lines {
		if l != strconv.Itoa(i) {
			t.Fatalf("counter log line %d is %q, want %d (of %d lines): a gap or a duplicate", i, l, i, len(lines))
		}
	}
	t.Logf("counter log: %d lines in order", len(lines))
}

// Twenty upgrades in a row, alternating two builds, while requests flow on
// one connection from several goroutines: every request is answered once,
// by whichever image reads it, and the shim keeps its pid.
func TestShimUpgradesInARow(t *testing.T) {
	builds := map[string]string{"upgrade-test-a": buildShim(t, "upgrade-test-a"), "upgrade-test-b": buildShim(t, "upgrade-test-b")}
	shim := startInstalled(t, builds["upgrade-test-a"])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	calls := make([]int, 4)
	for w := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := shim.tasks.Connect(ctx, &taskapi.ConnectRequest{ID: fmt.Sprintf("none-%d-%d", w, i)})
				cancel()
				if status.Code(err) != codes.NotFound {
					errs <- fmt.Errorf("worker %d, call %d: Connect of no container: %v, want NotFound", w, i, err)
					return
				}
				calls[w]++
			}
		}()
	}
	cli, cliCounted := dial(t, shim.sock)
	up := NewClient(cli)
	for gen := 1; gen <= 20; gen++ {
		to := "upgrade-test-a"
		if gen%2 == 1 {
			to = "upgrade-test-b"
		}
		install(t, builds[to], shim.exe, 0o755)
		if _, err := up.Upgrade(callCtx(t), Request{ExpectVersion: to}); err != nil {
			t.Fatalf("upgrade %d: %v", gen, err)
		}
		st, err := up.Status(callCtx(t))
		if err != nil {
			t.Fatalf("status after upgrade %d: %v", gen, err)
		}
		if st.Pid != shim.pid || st.Version != to || st.Generation != gen || st.LastError != "" {
			t.Fatalf("status after upgrade %d: %+v", gen, st)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("requests per worker across 20 upgrades: %v", calls)
	shim.counted.check(t)
	cliCounted.check(t)
}
