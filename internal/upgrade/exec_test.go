package upgrade

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/handover"
)

// The exec test runs the test binary as a helper that sets the process
// attributes a shim server has, starts a child that exits, and hands over
// to itself through Probe and Exec; the image after execve reports what it
// inherited. TestMain dispatches the helper's two images and its answer to
// the dry run.

const helperEnv = "TETHER_UPGRADE_TEST_HELPER"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == CheckFlag {
		os.Exit(RunCheck(os.Args[2:], "helper", os.Stdout))
	}
	switch os.Getenv(helperEnv) {
	case "before":
		os.Exit(helperBefore())
	case "after":
		os.Exit(helperAfter())
	}
	os.Exit(m.Run())
}

// attrs are the attributes the helper reports in each image.
type attrs struct {
	Image        string `json:"image"`
	Pid          int    `json:"pid"`
	Ppid         int    `json:"ppid"`
	Subreaper    int    `json:"subreaper"`
	OOMScoreAdj  string `json:"oom_score_adj"`
	Pdeathsig    int    `json:"pdeathsig"`
	NoNewPrivs   int    `json:"no_new_privs"`
	THPDisable   int    `json:"thp_disable"`
	MsgqueueCur  uint64 `json:"msgqueue_cur"`
	Cgroup       string `json:"cgroup"`
	SighupIgn    bool   `json:"sighup_ignored"`
	ChildPid     int    `json:"child_pid"`
	PidfdStatus  int    `json:"pidfd_status"`
	ReapedStatus int    `json:"reaped_status"`
	Generation   int    `json:"generation"`
	Conns        int    `json:"conns"`
	Accepted     bool   `json:"listener_accepts"`
	Error        string `json:"error,omitempty"`
}

func readAttrs(image string) attrs {
	a := attrs{Image: image, Pid: os.Getpid(), Ppid: os.Getppid()}
	a.Subreaper, _ = getPrctl(unix.PR_GET_CHILD_SUBREAPER)
	if b, err := os.ReadFile("/proc/self/oom_score_adj"); err == nil {
		a.OOMScoreAdj = strings.TrimSpace(string(b))
	}
	a.Pdeathsig, _ = getPrctl(unix.PR_GET_PDEATHSIG)
	a.NoNewPrivs, _ = unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	a.THPDisable, _ = unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0)
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MSGQUEUE, &rl) == nil {
		a.MsgqueueCur = rl.Cur
	}
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		a.Cgroup = string(b)
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
				mask, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				a.SighupIgn = mask&(1<<(uint(syscall.SIGHUP)-1)) != 0
			}
		}
	}
	return a
}

// getPrctl reads a prctl value returned through a pointer argument.
func getPrctl(option int) (int, error) {
	var v int32
	_, _, errno := unix.Syscall(unix.SYS_PRCTL, uintptr(option), uintptr(unsafe.Pointer(&v)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(v), nil
}

func report(a attrs) {
	_ = json.NewEncoder(os.Stdout).Encode(a)
}

// helperBefore sets the attributes, starts a child that exits at once and
// leaves it a zombie, and execs the binary at its own path as an upgrade.
func helperBefore() int {
	// PR_SET_PDEATHSIG and PR_SET_NO_NEW_PRIVS are attributes of a thread:
	// set them on the thread that will call execve.
	runtime.LockOSThread()
	fail := func(err error) int {
		report(attrs{Image: "before", Error: err.Error()})
		return 1
	}
	steps := []func() error{
		func() error { return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
		func() error { return os.WriteFile("/proc/self/oom_score_adj", []byte("700"), 0) },
		func() error { return unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGWINCH), 0, 0, 0) },
		func() error { return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
		func() error { return unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0) },
		func() error { return unix.Setrlimit(unix.RLIMIT_MSGQUEUE, &unix.Rlimit{Cur: 123456, Max: 123456}) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fail(err)
		}
	}
	signal.Ignore(syscall.SIGHUP)

	child := exec.Command("/bin/sh", "-c", "exit 7")
	if err := child.Start(); err != nil {
		return fail(err)
	}
	pidfd, err := unix.PidfdOpen(child.Process.Pid, 0)
	if err != nil {
		return fail(fmt.Errorf("pidfd_open: %w", err))
	}
	// Wait for the exit without reaping: the child is a zombie at execve.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, child.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		return fail(fmt.Errorf("waitid: %w", err))
	}
	a := readAttrs("before")
	a.ChildPid = child.Process.Pid
	report(a)

	// A listener, and a connection to it, handed over as a server's.
	sock := filepath.Join(os.Getenv("HELPER_DIR"), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	ln.SetUnlinkOnClose(false)
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	lfd, err := handover.Dup(ln)
	if err != nil {
		return fail(err)
	}
	cfd, err := handover.Dup(conn)
	if err != nil {
		return fail(err)
	}
	// The pidfd goes across like the listener: not close-on-exec.
	if _, err := unix.FcntlInt(uintptr(pidfd), unix.F_SETFD, 0); err != nil {
		return fail(err)
	}
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	bin, err := Probe(context.Background(), self, "helper")
	if err != nil {
		return fail(err)
	}
	env := append(os.Environ(), helperEnv+"=after", "HELPER_CHILD="+strconv.Itoa(child.Process.Pid), "HELPER_PIDFD="+strconv.Itoa(pidfd))
	env = slices.DeleteFunc(env, func(kv string) bool { return kv == helperEnv+"=before" })
	err = Exec(bin, []string{self}, env, State{Version: StateVersion, Generation: 1, From: "helper", Exe: self, ListenerFD: lfd,
		Conns: []Conn{{FD: cfd, PeerPID: os.Getpid()}}})
	return fail(fmt.Errorf("exec: %w", err))
}

// helperAfter reports what the image after execve inherited.
func helperAfter() int {
	a := readAttrs("after")
	s, ok, err := Inherited()
	if err != nil || !ok {
		a.Error = fmt.Sprintf("inherited state: ok %v, %v", ok, err)
		report(a)
		return 1
	}
	a.Generation = s.Generation
	ln, conns, err := Resumed(s)
	if err != nil {
		a.Error = err.Error()
		report(a)
		return 1
	}
	a.Conns = len(conns)
	// The listener still listens: the connection made before execve was
	// in its backlog, and is accepted now.
	if c, err := ln.AcceptUnix(); err == nil {
		a.Accepted = true
		c.Close()
	}
	a.ChildPid, _ = strconv.Atoi(os.Getenv("HELPER_CHILD"))
	pidfd, _ := strconv.Atoi(os.Getenv("HELPER_PIDFD"))
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		a.Error = fmt.Sprintf("waitid(P_PIDFD): %v", err)
	} else {
		a.PidfdStatus = siginfoStatus(&info)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(a.ChildPid, &ws, 0, nil); err != nil {
		a.Error = fmt.Sprintf("wait4: %v", err)
	} else {
		a.ReapedStatus = ws.ExitStatus()
	}
	report(a)
	return 0
}

// TestExecKeepsProcessAttributes checks what docs/design.md says survives
// the execve of a live upgrade.
func TestExecKeepsProcessAttributes(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=before", "HELPER_DIR="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var reports []attrs
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var a attrs
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("helper printed %q: %v", sc.Text(), err)
		}
		reports = append(reports, a)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v (reports %+v)", err, reports)
	}
	if len(reports) != 2 {
		t.Fatalf("helper reports: %+v, want before and after", reports)
	}
	before, after := reports[0], reports[1]
	if before.Error != "" || after.Error != "" {
		t.Fatalf("helper errors: before %q, after %q", before.Error, after.Error)
	}
	if after.Pid != before.Pid || after.Pid != cmd.Process.Pid || after.Ppid != os.Getpid() {
		t.Errorf("pid %d → %d (ppid %d), want %d with parent %d", before.Pid, after.Pid, after.Ppid, cmd.Process.Pid, os.Getpid())
	}
	want := before
	want.Image, want.PidfdStatus, want.ReapedStatus, want.Generation, want.Conns, want.Accepted = "after", 7, 7, 1, 1, true
	if after != want {
		t.Errorf("after execve:\n got %+v\nwant %+v", after, want)
	}
	if before.Subreaper != 1 || before.OOMScoreAdj != "700" || before.Pdeathsig != int(syscall.SIGWINCH) || before.NoNewPrivs != 1 ||
		before.THPDisable != 1 || before.MsgqueueCur != 123456 || !before.SighupIgn {
		t.Errorf("the helper did not set its attributes: %+v", before)
	}
}

// siginfoStatus is si_status of a waitid siginfo of an exited child: on
// 64-bit Linux it follows si_signo, si_errno, si_code, padding, si_pid and
// si_uid.
func siginfoStatus(info *unix.Siginfo) int {
	return int(*(*int32)(unsafe.Add(unsafe.Pointer(info), 24)))
}
