package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cdVersion is one containerd release under test and the binaries that run it.
type cdVersion struct {
	name       string // as in TETHER_E2E_VERSIONS: 1.6, 1.7.35, ...
	major      int
	containerd string
	ctr        string
	tag        string // short form for paths and namespaces: 16, 1735, ...
}

func lookupVersion(name string) (*cdVersion, error) {
	v := &cdVersion{name: name, tag: strings.ReplaceAll(name, ".", "")}
	switch {
	case name == "1.6":
		// Debian 12's containerd package.
		v.containerd, v.ctr = "/usr/bin/containerd", "/usr/bin/ctr"
	default:
		dir := filepath.Join(os.Getenv("TETHER_DEPS"), "containerd-"+name, "bin")
		if os.Getenv("TETHER_DEPS") == "" {
			dir = filepath.Join("/opt/tether", "containerd-"+name, "bin")
		}
		v.containerd, v.ctr = filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr")
	}
	switch {
	case strings.HasPrefix(name, "1."):
		v.major = 1
	case strings.HasPrefix(name, "2."):
		v.major = 2
	default:
		return nil, fmt.Errorf("containerd version %q: only 1.x and 2.x are known", name)
	}
	for _, b := range []string{v.containerd, v.ctr} {
		if st, err := os.Stat(b); err != nil || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("containerd %s: %s is missing or not executable (run scripts/install-deps.sh): %v", name, b, err)
		}
	}
	return v, nil
}

// daemon is one private containerd.
type daemon struct {
	v       *cdVersion
	root    string // --root
	state   string // --state
	sock    string // grpc socket; ttrpc is sock + ".ttrpc"
	config  string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	logf   *os.File
	broken error // set when a start failed; later tests fail fast

	sockets map[string][]string // shim sockets seen per namespace, removed if stale at cleanup
}

// getDaemon returns the running containerd of version v, starting it on first use.
func getDaemon(t *testing.T, v *cdVersion) *daemon {
	t.Helper()
	d := daemons[v.name]
	if d == nil {
		d = &daemon{
			v:       v,
			root:    filepath.Join(libBase, v.tag),
			state:   filepath.Join(runBase, v.tag),
			sock:    filepath.Join(runBase, v.tag+".sock"),
			config:  filepath.Join(libBase, v.tag+".toml"),
			logPath: filepath.Join(libBase, v.tag+".log"),
			sockets: map[string][]string{},
		}
		daemons[v.name] = d
		if err := d.start(true); err != nil {
			d.broken = err
		}
	}
	if d.broken != nil {
		t.Fatalf("containerd %s: %v", v.name, d.broken)
	}
	if !d.running() {
		t.Fatalf("containerd %s is not running (log: %s)\n%s", v.name, d.logPath, d.logTail(0, 60))
	}
	return d
}

// taskDir is where containerd keeps the bundles of namespace ns.
func (d *daemon) taskDir(ns string) string {
	return filepath.Join(d.state, "io.containerd.runtime.v2.task", ns)
}

func (d *daemon) bundle(ns, id string) string { return filepath.Join(d.taskDir(ns), id) }

func (d *daemon) writeConfig() error {
	var b strings.Builder
	// Plugins this test never needs. Unknown names are ignored by containerd,
	// so the list may name plugins of other versions.
	disabled := []string{
		"io.containerd.grpc.v1.cri",
		"io.containerd.nri.v1.nri",
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.zfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.aufs",
		"io.containerd.tracing.processor.v1.otlp",
		"io.containerd.internal.v1.tracing",
	}
	if d.v.major >= 2 {
		disabled = append(disabled,
			"io.containerd.cri.v1.images",
			"io.containerd.cri.v1.runtime",
			"io.containerd.podsandbox.controller.v1.podsandbox",
			"io.containerd.snapshotter.v1.erofs",
			"io.containerd.differ.v1.erofs",
		)
		b.WriteString("version = 3\n")
	} else {
		b.WriteString("version = 2\n")
	}
	fmt.Fprintf(&b, "root = %q\nstate = %q\n", d.root, d.state)
	b.WriteString("disabled_plugins = [")
	for i, p := range disabled {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", p)
	}
	b.WriteString("]\n\n")
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n\n", d.sock)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n\n", d.sock+".ttrpc")
	b.WriteString("[debug]\n  level = \"debug\"\n\n")
	b.WriteString("[metrics]\n  address = \"\"\n\n")
	fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n", filepath.Join(d.root, "opt"))
	return os.WriteFile(d.config, []byte(b.String()), 0o644)
}

// start starts containerd; fresh wipes its root and state first.
func (d *daemon) start(fresh bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if fresh {
		cleanupDaemonLeftovers(d)
		if err := os.MkdirAll(libBase, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(runBase, 0o711); err != nil {
			return err
		}
		if err := d.writeConfig(); err != nil {
			return err
		}
		if err := os.Remove(d.logPath); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := d.probeOverlay(); err != nil {
		return err
	}
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "\n===== e2e: starting containerd %s at %s =====\n", d.v.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(d.v.containerd, "--config", d.config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(filterEnv(os.Environ(), "PATH", "NOTIFY_SOCKET", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"),
		"PATH="+shimDir+":"+os.Getenv("PATH"))
	// Its own process group, so a ^C of go test does not reach it first; and
	// killed if the test binary dies (a go test -timeout panic skips cleanup).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	d.cmd, d.done, d.logf = cmd, done, logf

	// Wait until it answers.
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("containerd %s exited during start: %v\n%s", d.v.name, cmd.ProcessState, d.logTail(0, 60))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r := d.runCtr(ctx, "", "version")
		cancel()
		if r.code == 0 && strings.Contains(r.stdout, "Server:") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd %s did not answer within 60s: ctr version: %s %s\n%s", d.v.name, r.stdout, r.stderr, d.logTail(0, 60))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// probeOverlay checks that overlayfs can be mounted in the daemon's root. If
// it cannot (the root is itself on overlayfs, say), a tmpfs is mounted there.
func (d *daemon) probeOverlay() error {
	if err := os.MkdirAll(d.root, 0o711); err != nil {
		return err
	}
	probe, err := os.MkdirTemp(d.root, "overlay-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(probe)
	for _, s := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(probe, s), 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", probe, probe, probe)
	merged := filepath.Join(probe, "merged")
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err == nil {
		return syscall.Unmount(merged, syscall.MNT_DETACH)
	}
	if mounted(d.root) {
		return fmt.Errorf("overlayfs cannot be mounted in %s", d.root)
	}
	if err := syscall.Mount("tmpfs", d.root, "tmpfs", 0, "mode=0711"); err != nil {
		return fmt.Errorf("overlayfs does not work on %s and mounting a tmpfs there failed: %w", d.root, err)
	}
	return nil
}

func (d *daemon) running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done == nil {
		return false
	}
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// pid is containerd's pid.
func (d *daemon) pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// stop stops containerd: SIGTERM, then SIGKILL if it is still there after 20s.
func (d *daemon) stop() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return nil
	}
	defer func() {
		d.logf.Close()
		d.cmd = nil
	}()
	select {
	case <-d.done:
		return nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(20 * time.Second):
	}
	_ = d.cmd.Process.Kill()
	select {
	case <-d.done:
		return errors.New("did not stop on SIGTERM within 20s; killed")
	case <-time.After(10 * time.Second):
		return errors.New("did not exit even on SIGKILL within 10s")
	}
}

// restart stops containerd and starts it again with the same config, root and state.
func (d *daemon) restart(t *testing.T) {
	t.Helper()
	if err := d.stop(); err != nil {
		t.Fatalf("stop containerd %s: %v", d.v.name, err)
	}
	if err := d.start(false); err != nil {
		d.broken = err
		t.Fatalf("restart containerd %s: %v", d.v.name, err)
	}
}

// logSize is the current size of the log, to print only what a test added.
func (d *daemon) logSize() int64 {
	st, err := os.Stat(d.logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// logTail returns at most n lines of the log written after offset.
func (d *daemon) logTail(offset int64, n int) string {
	data, err := os.ReadFile(d.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if offset > 0 && offset <= int64(len(data)) {
		data = data[offset:]
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- containerd %s log (%s), last %d lines ---\n%s\n--- end of log ---", d.v.name, d.logPath, len(lines), strings.Join(lines, "\n"))
}

// result of a command.
type result struct {
	stdout, stderr string
	code           int // -1 if it did not run or was killed
	err            error
}

func (r result) String() string {
	return fmt.Sprintf("exit %d (err %v)\nstdout: %q\nstderr: %q", r.code, r.err, r.stdout, r.stderr)
}

// runCtr runs this containerd's ctr against its socket in namespace ns (none if empty).
func (d *daemon) runCtr(ctx context.Context, ns string, args ...string) result {
	full := []string{"--address", d.sock}
	if ns != "" {
		full = append(full, "--namespace", ns)
	}
	full = append(full, args...)
	return run(ctx, d.v.ctr, full...)
}

// ctr runs ctr with a 2 minute deadline and logs what it did.
func (d *daemon) ctr(t *testing.T, ns string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := d.runCtr(ctx, ns, args...)
	t.Logf("ctr %s -> exit %d%s%s", strings.Join(args, " "), r.code, quoteIf(" stdout=", r.stdout), quoteIf(" stderr=", r.stderr))
	return r
}

// mustCtr is ctr that fails the test unless ctr exits 0.
func (d *daemon) mustCtr(t *testing.T, ns string, args ...string) string {
	t.Helper()
	r := d.ctr(t, ns, args...)
	if r.code != 0 {
		t.Fatalf("ctr %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

func quoteIf(prefix, s string) string {
	if s == "" {
		return ""
	}
	if len(s) > 2000 {
		s = s[:2000] + "..."
	}
	return prefix + fmt.Sprintf("%q", s)
}

// run runs a command until it exits or ctx ends.
func run(ctx context.Context, name string, args ...string) result {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), code: -1, err: err}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		r.err = fmt.Errorf("%v (deadline: %w)", err, ctx.Err())
	}
	return r
}

func filterEnv(env []string, drop ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, k := range drop {
			if strings.HasPrefix(kv, k+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}

// forEachVersion runs f as a subtest per containerd version, each with its
// own namespace e2e-<short>-<tag>, which is cleaned up afterwards. When a
// subtest fails, the part of containerd's log written during it is printed.
func forEachVersion(t *testing.T, short string, f func(t *testing.T, d *daemon, ns string)) {
	t.Helper()
	if len(versions) == 0 {
		t.Fatal("no containerd versions selected")
	}
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			d := getDaemon(t, v)
			ns := "e2e-" + short + "-" + v.tag
			off := d.logSize()
			t.Cleanup(func() {
				d.cleanupNamespace(t, ns)
				if t.Failed() {
					t.Log(d.logTail(off, 150))
				}
			})
			f(t, d, ns)
		})
	}
}

// cleanupNamespace removes whatever a test left in ns: tasks, containers,
// images, shims, container processes, mounts and the namespace itself.
func (d *daemon) cleanupNamespace(t *testing.T, ns string) {
	t.Helper()
	if d.running() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if r := d.runCtr(ctx, ns, "task", "ls", "-q"); r.code == 0 {
			for _, id := range strings.Fields(r.stdout) {
				d.runCtr(ctx, ns, "task", "kill", "-s", "SIGKILL", id)
				d.runCtr(ctx, ns, "task", "rm", "-f", id)
			}
		}
		if r := d.runCtr(ctx, ns, "container", "ls", "-q"); r.code == 0 {
			for _, id := range strings.Fields(r.stdout) {
				d.runCtr(ctx, ns, "container", "rm", id)
			}
		}
		if r := d.runCtr(ctx, ns, "image", "ls", "-q"); r.code == 0 {
			for _, ref := range strings.Fields(r.stdout) {
				d.runCtr(ctx, ns, "image", "rm", ref)
			}
		}
		d.runCtr(ctx, ns, "namespace", "rm", ns)
	}
	// Whatever survived: shims of this namespace, container processes, mounts.
	for _, p := range shimProcesses(d.sock) {
		if argValue(p.args, "-namespace") == ns {
			t.Logf("cleanup: killing leftover shim %d %q", p.pid, p.args)
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	killCgroup("/" + ns + "/")
	unmountUnder(d.taskDir(ns))
	// Sockets of shims that died without removing them (the shim-killed test).
	for _, path := range d.sockets[ns] {
		for deadline := time.Now().Add(5 * time.Second); len(listeners(path)) > 0 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		removeStaleSocket(path)
	}
	delete(d.sockets, ns)
	_ = os.RemoveAll(filepath.Join("/run/containerd/runc", ns))
}

// cleanupDaemonLeftovers removes what the containerd of d may have left
// behind in an earlier run: the daemon itself, its shims, mounts and directories.
func cleanupDaemonLeftovers(d *daemon) {
	for _, p := range allProcesses() {
		if len(p.args) > 0 && filepath.Base(p.args[0]) == "containerd" && argValue(p.args, "--config") == d.config {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	for _, p := range shimProcesses(d.sock) {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	unmountUnder(d.state)
	unmountUnder(d.root)
	_ = os.RemoveAll(d.state)
	_ = os.RemoveAll(d.root)
	_ = os.Remove(d.sock)
	_ = os.Remove(d.sock + ".ttrpc")
}

var e2eNamespace = regexp.MustCompile(`^e2e-[a-z0-9-]+$`)

// globalCleanup kills container processes and shims of earlier runs and
// unmounts and removes their directories. It is run before and after the tests.
func globalCleanup() {
	for _, p := range allProcesses() {
		if p.pid == os.Getpid() || len(p.args) == 0 {
			continue
		}
		base := filepath.Base(p.args[0])
		if base != "containerd" && !strings.HasPrefix(base, "containerd-shim-") {
			continue
		}
		if strings.HasPrefix(getenv(environ(p.pid), "TTRPC_ADDRESS"), runBase+"/") {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
			continue
		}
		for _, a := range p.args {
			if strings.HasPrefix(a, runBase+"/") || strings.HasPrefix(a, libBase+"/") {
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
				break
			}
		}
	}
	killCgroup("/e2e-")
	if ents, err := os.ReadDir("/run/containerd/runc"); err == nil {
		for _, e := range ents {
			if e2eNamespace.MatchString(e.Name()) {
				_ = os.RemoveAll(filepath.Join("/run/containerd/runc", e.Name()))
			}
		}
	}
	unmountUnder(runBase)
	unmountUnder(libBase)
	_ = os.RemoveAll(runBase)
	// Keep the logs of the last run for a post-mortem; remove the rest.
	if ents, err := os.ReadDir(libBase); err == nil {
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".log") {
				_ = os.RemoveAll(filepath.Join(libBase, e.Name()))
			}
		}
	}
	removeCgroups("e2e-")
}
