package taskservice

// The runtime stub: the test binary itself, run as the OCI runtime when
// TETHER_STUB_RUNTIME is set. It speaks enough of runc's command line
// (create, start, kill, delete, ps) for the service tests, keeps its state
// under --root, logs errors as runc does (JSON lines in --log, and stderr),
// and behaves according to files in the bundle:
//
//	stub-block   create waits until the file is removed (a slow create)
//	stub-fail    create fails with the file's content as the message
//	stub-fail-late
//	             create makes the container's state, then fails with the
//	             file's content as the message (a failed hook)
//	stub-bad-console
//	             create connects to --console-socket and hangs up without
//	             sending a terminal
//	stub-leftover
//	             the init starts a process that holds its stdout and sleeps
//	             (what an init leaves behind in a shared pid namespace);
//	             kill --all writes "leftover killed" to that process's
//	             stdout, then SIGKILLs it, whether or not the init still runs
//
// and create writes its arguments, one a line, to stub-create-args.
// Exec'd processes run the test binary with TETHER_STUB_EXEC set to the
// process args: "exit N" or "sleep".
//
//	exit-code    the init process prints "hello <id>" and exits with this
//	             code as soon as it is started; without it, it sleeps until
//	             killed
//
// The container's init process is the test binary again, with
// TETHER_STUB_INIT naming its state directory. It is orphaned when create
// returns, so it is reparented to the test process, which the exit monitor
// makes a child subreaper, exactly as runc's init is reparented to the shim.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	stubRuntimeEnv = "TETHER_STUB_RUNTIME"
	stubInitEnv    = "TETHER_STUB_INIT"
	stubExecEnv    = "TETHER_STUB_EXEC"
	// stubOwnerEnv is the pid of the test process that ran the stub
	// runtime: a stub process that would sleep until killed ends once that
	// process is gone, so that a test that left a container running does
	// not leave its processes behind (they held CI's output open).
	stubOwnerEnv = "TETHER_STUB_OWNER"
)

// withOwner adds stubOwnerEnv to env, unless it is there: the stub runtime's
// parent, the test process, owns what it starts.
func withOwner(env []string) []string {
	if os.Getenv(stubOwnerEnv) != "" {
		return env
	}
	return append(env, stubOwnerEnv+"="+strconv.Itoa(os.Getppid()))
}

// sleepUntilOwnerGone sleeps until the process in stubOwnerEnv is gone (or
// forever without one) and returns 0; a kill ends it earlier.
func sleepUntilOwnerGone() int {
	owner, _ := strconv.Atoi(os.Getenv(stubOwnerEnv))
	for {
		time.Sleep(200 * time.Millisecond)
		if owner > 0 && syscall.Kill(owner, 0) == syscall.ESRCH {
			return 0
		}
	}
}

// stubMain runs the stub if the environment asks for it, and reports
// whether it did (the caller then exits with the returned code).
func stubMain() (int, bool) {
	if dir := os.Getenv(stubInitEnv); dir != "" {
		return stubInit(dir), true
	}
	if args := os.Getenv(stubExecEnv); args != "" {
		return stubExec(strings.Fields(args)), true
	}
	if os.Getenv(stubRuntimeEnv) != "" {
		return stubRuntime(os.Args[1:]), true
	}
	return 0, false
}

type stubArgs struct {
	root, log, cmd string
	flags          map[string]string
	pos            []string
}

func parseStubArgs(args []string) stubArgs {
	a := stubArgs{flags: map[string]string{}}
	withValue := map[string]bool{"--image-path": true, "--work-path": true, "--manage-cgroups-mode": true, "--empty-ns": true, "--process": true, "--root": true, "--log": true, "--log-format": true, "--bundle": true, "--pid-file": true, "--format": true, "--console-socket": true}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		switch {
		case withValue[arg] && i+1 < len(args):
			a.flags[arg] = args[i+1]
			i++
		case strings.HasPrefix(arg, "--"):
			a.flags[arg] = "true"
		case a.cmd == "":
			a.cmd = arg
		default:
			a.pos = append(a.pos, arg)
		}
	}
	a.root, a.log = a.flags["--root"], a.flags["--log"]
	return a
}

func stubRuntime(args []string) int {
	a := parseStubArgs(args)
	fail := func(msg string) int {
		if a.log != "" {
			line, _ := json.Marshal(map[string]string{"level": "error", "msg": msg, "time": time.Now().Format(time.RFC3339)})
			if f, err := os.OpenFile(a.log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Write(append(line, '\n'))
				f.Close()
			}
		}
		fmt.Fprintln(os.Stderr, msg)
		return 1
	}
	if len(a.pos) == 0 {
		return fail("no container id")
	}
	id := a.pos[0]
	dir := filepath.Join(a.root, id)
	exists := func() bool { _, err := os.Stat(dir); return err == nil }
	pid := func() int {
		data, _ := os.ReadFile(filepath.Join(dir, "pid"))
		n, _ := strconv.Atoi(string(data))
		return n
	}
	alive := func() bool { p := pid(); return p > 0 && syscall.Kill(p, 0) == nil && !zombie(p) }
	switch a.cmd {
	case "create":
		bundle := a.flags["--bundle"]
		if exists() {
			return fail("container with given ID already exists")
		}
		for deadline := time.Now().Add(time.Minute); fileExists(filepath.Join(bundle, "stub-block")); {
			if time.Now().After(deadline) {
				return fail("stub-block was never removed")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if msg, err := os.ReadFile(filepath.Join(bundle, "stub-fail")); err == nil {
			return fail(string(msg))
		}
		os.WriteFile(filepath.Join(bundle, "stub-create-args"), []byte(strings.Join(args, "\n")), 0o600)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fail(err.Error())
		}
		if msg, err := os.ReadFile(filepath.Join(bundle, "stub-fail-late")); err == nil {
			return fail(string(msg)) // its state stays, as a failed hook leaves runc's
		}
		code, _ := os.ReadFile(filepath.Join(bundle, "exit-code"))
		os.WriteFile(filepath.Join(dir, "exit-code"), code, 0o600)
		if fileExists(filepath.Join(bundle, "stub-leftover")) {
			os.WriteFile(filepath.Join(dir, "leftover"), nil, 0o600)
		}
		os.WriteFile(filepath.Join(dir, "id"), []byte(id), 0o600)
		self, _ := os.Executable()
		cmd := exec.Command(self)
		cmd.Env = append(withOwner(os.Environ()), stubInitEnv+"="+dir)
		// With a terminal, runc's init has the pty's slave as its stdio,
		// never the create command's.
		if a.flags["--console-socket"] == "" {
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		}
		if err := cmd.Start(); err != nil {
			return fail(err.Error())
		}
		p := strconv.Itoa(cmd.Process.Pid)
		os.WriteFile(filepath.Join(dir, "pid"), []byte(p), 0o600)
		if sock := a.flags["--console-socket"]; sock != "" && fileExists(filepath.Join(bundle, "stub-bad-console")) {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
			}
		}
		if pf := a.flags["--pid-file"]; pf != "" {
			os.WriteFile(pf, []byte(p), 0o600)
		}
		return 0
	case "start":
		if !exists() {
			return fail("container does not exist")
		}
		if fileExists(filepath.Join(dir, "started")) {
			if alive() {
				return fail("cannot start an already running container")
			}
			return fail("cannot start a container that has stopped")
		}
		os.WriteFile(filepath.Join(dir, "started"), nil, 0o600)
		return 0
	case "kill":
		if !exists() {
			return fail("container does not exist")
		}
		if a.flags["--all"] != "" {
			if data, err := os.ReadFile(filepath.Join(dir, "leftover-pid")); err == nil {
				lp, _ := strconv.Atoi(string(data))
				if f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/1", lp), os.O_WRONLY, 0); err == nil {
					f.WriteString("leftover killed\n")
					f.Close()
				}
				syscall.Kill(lp, syscall.SIGKILL)
				if !alive() {
					return 0
				}
			}
		}
		if !alive() {
			return fail("container not running")
		}
		sig, _ := strconv.Atoi(a.pos[len(a.pos)-1])
		if err := syscall.Kill(pid(), syscall.Signal(sig)); err != nil {
			return fail(err.Error())
		}
		return 0
	case "delete":
		if !exists() {
			return fail("container does not exist")
		}
		if alive() {
			if a.flags["--force"] == "" {
				return fail("cannot delete container that is not stopped")
			}
			syscall.Kill(pid(), syscall.SIGKILL)
		}
		os.RemoveAll(dir)
		return 0
	case "exec":
		if !exists() || !alive() {
			return fail("container not running")
		}
		data, err := os.ReadFile(a.flags["--process"])
		if err != nil {
			return fail(err.Error())
		}
		var spec struct {
			Args []string `json:"args"`
		}
		if err := json.Unmarshal(data, &spec); err != nil {
			return fail(err.Error())
		}
		self, _ := os.Executable()
		cmd := exec.Command(self)
		cmd.Env = append(withOwner(os.Environ()), stubExecEnv+"="+strings.Join(spec.Args, " "))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			return fail(err.Error())
		}
		if pf := a.flags["--pid-file"]; pf != "" {
			os.WriteFile(pf, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
		}
		return 0
	case "pause", "resume":
		if !exists() || !alive() {
			return fail("container not running")
		}
		sig := syscall.SIGSTOP
		if a.cmd == "resume" {
			sig = syscall.SIGCONT
		}
		syscall.Kill(pid(), sig)
		return 0
	case "update":
		if !exists() {
			return fail("container does not exist")
		}
		data, _ := io.ReadAll(os.Stdin)
		os.WriteFile(filepath.Join(dir, "resources"), data, 0o600)
		return 0
	case "checkpoint":
		if !exists() || !alive() {
			return fail("container not running")
		}
		os.WriteFile(filepath.Join(dir, "checkpoint-args"), []byte(strings.Join(args, " ")), 0o600)
		return 0
	case "ps":
		if !exists() {
			return fail("container does not exist")
		}
		// As runc's: the processes in the container's cgroup, none once
		// the init is gone.
		// A "ps-empty" file: the init is dying, its exit not collected yet.
		pids := []int{}
		if alive() && !fileExists(filepath.Join(dir, "ps-empty")) {
			pids = append(pids, pid())
		}
		out, _ := json.Marshal(pids)
		os.Stdout.Write(out)
		return 0
	}
	return fail("stub: unsupported command " + a.cmd)
}

// stubInit is the container's init process.
func stubInit(dir string) int {
	for deadline := time.Now().Add(time.Minute); !fileExists(filepath.Join(dir, "started")); {
		if time.Now().After(deadline) || !fileExists(dir) {
			return 111
		}
		time.Sleep(2 * time.Millisecond)
	}
	id, _ := os.ReadFile(filepath.Join(dir, "id"))
	if fileExists(filepath.Join(dir, "leftover")) {
		self, _ := os.Executable()
		cmd := exec.Command(self)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, stubInitEnv+"=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, stubExecEnv+"=sleep")
		cmd.Stdout = os.Stdout
		if err := cmd.Start(); err != nil {
			return 112
		}
		os.WriteFile(filepath.Join(dir, "leftover-pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
	}
	if code, err := os.ReadFile(filepath.Join(dir, "exit-code")); err == nil && len(code) > 0 {
		fmt.Printf("hello %s\n", id)
		n, _ := strconv.Atoi(strings.TrimSpace(string(code)))
		return n
	}
	return sleepUntilOwnerGone()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return !errors.Is(err, os.ErrNotExist)
}

func zombie(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// stubExec is an exec'd process: "exit N" prints "hi" and exits N, "sleep"
// sleeps until killed.
func stubExec(args []string) int {
	if len(args) == 2 && args[0] == "exit" {
		fmt.Println("hi")
		n, _ := strconv.Atoi(args[1])
		return n
	}
	return sleepUntilOwnerGone()
}
