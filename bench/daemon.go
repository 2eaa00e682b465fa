package main

// A private containerd per (version, shim), adapted from test/e2e/daemon_test.go.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Everything the bench puts outside its temp dir lives below these, so that a
// run can clean up what an earlier, killed run left behind. The e2e suite
// owns /run/tether-e2e and /var/lib/tether-e2e; the bench never goes there.
const (
	runBase = "/run/tether-bench"
	libBase = "/var/lib/tether-bench"
	// nsPrefix starts every namespace (and so every cgroup and runc root) of the bench.
	nsPrefix = "tbench-"
)

// cdVersion is one containerd release and the binaries that run it.
type cdVersion struct {
	Name       string `json:"name"` // 1.6, 2.4.2
	Major      int    `json:"-"`
	Containerd string `json:"containerd"`
	Ctr        string `json:"ctr"`
	StockShim  string `json:"stock_shim"`
	Tag        string `json:"-"` // 16, 242
	Version    string `json:"version"`
}

func lookupVersion(name, deps string) (*cdVersion, error) {
	v := &cdVersion{Name: name, Tag: strings.ReplaceAll(name, ".", "")}
	switch {
	case name == "1.6":
		// Debian 12's containerd package and its shim.
		v.Containerd, v.Ctr, v.StockShim = "/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2"
	default:
		dir := filepath.Join(deps, "containerd-"+name, "bin")
		v.Containerd, v.Ctr, v.StockShim = filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr"), filepath.Join(dir, "containerd-shim-runc-v2")
	}
	switch {
	case strings.HasPrefix(name, "1."):
		v.Major = 1
	case strings.HasPrefix(name, "2."):
		v.Major = 2
	default:
		return nil, fmt.Errorf("containerd version %q: only 1.x and 2.x are known", name)
	}
	for _, b := range []string{v.Containerd, v.Ctr, v.StockShim} {
		if st, err := os.Stat(b); err != nil || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("containerd %s: %s is missing or not executable (run scripts/install-deps.sh): %v", name, b, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := run(ctx, nil, v.Containerd, "--version")
	v.Version = strings.TrimSpace(r.stdout)
	return v, nil
}

// daemon is one private containerd. Its PATH starts with binDir, where the
// shim binaries it should find are.
type daemon struct {
	v       *cdVersion
	name    string // <tag>-<shim>
	binDir  string
	root    string
	state   string
	sock    string
	config  string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logf *os.File
}

func newDaemon(v *cdVersion, shim, binDir string) *daemon {
	name := v.Tag + "-" + shim
	return &daemon{
		v:       v,
		name:    name,
		binDir:  binDir,
		root:    filepath.Join(libBase, name),
		state:   filepath.Join(runBase, name),
		sock:    filepath.Join(runBase, name+".sock"),
		config:  filepath.Join(libBase, name+".toml"),
		logPath: filepath.Join(libBase, name+".log"),
	}
}

func (d *daemon) taskDir(ns string) string {
	return filepath.Join(d.state, "io.containerd.runtime.v2.task", ns)
}

func (d *daemon) writeConfig() error {
	var b strings.Builder
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
	if d.v.Major >= 2 {
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
	// Info, not debug: a shim's debug logging would be part of what is measured.
	b.WriteString("[debug]\n  level = \"info\"\n\n")
	b.WriteString("[metrics]\n  address = \"\"\n\n")
	fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n", filepath.Join(d.root, "opt"))
	return os.WriteFile(d.config, []byte(b.String()), 0o644)
}

// start wipes what an earlier run of this daemon left and starts containerd.
func (d *daemon) start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cleanupLeftovers()
	if err := os.MkdirAll(libBase, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(runBase, 0o711); err != nil {
		return err
	}
	if err := d.writeConfig(); err != nil {
		return err
	}
	if err := d.probeOverlay(); err != nil {
		return err
	}
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.v.Containerd, "--config", d.config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(filterEnv(os.Environ(), "PATH", "NOTIFY_SOCKET", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "GOMAXPROCS", "GOGC", "GOMEMLIMIT", "GODEBUG"),
		"PATH="+d.binDir+":"+os.Getenv("PATH"))
	// Its own process group (a ^C reaches the bench first, which cleans up),
	// and killed if the bench dies.
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

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("containerd %s exited during start: %v\n%s", d.name, cmd.ProcessState, d.logTail(40))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r := d.ctr(cctx, "", "version")
		cancel()
		if r.code == 0 && strings.Contains(r.stdout, "Server:") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd %s did not answer within 60s: %s\n%s", d.name, r, d.logTail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probeOverlay mounts a tmpfs on the root if overlayfs cannot be mounted there.
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

func (d *daemon) pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
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

// stop stops containerd: SIGTERM, then SIGKILL after 15 s.
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
	case <-time.After(15 * time.Second):
	}
	_ = d.cmd.Process.Kill()
	select {
	case <-d.done:
		return errors.New("did not stop on SIGTERM within 15s; killed")
	case <-time.After(10 * time.Second):
		return errors.New("did not exit even on SIGKILL within 10s")
	}
}

// cleanupLeftovers kills this daemon's containerd and shims of an earlier
// run and removes their sockets, mounts and directories.
func (d *daemon) cleanupLeftovers() {
	for _, p := range allProcesses() {
		if len(p.args) > 0 && filepath.Base(p.args[0]) == "containerd" && argValue(p.args, "--config") == d.config {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	killShims(shimProcesses(d.sock))
	unmountUnder(d.state)
	unmountUnder(d.root)
	_ = os.RemoveAll(d.state)
	_ = os.RemoveAll(d.root)
	_ = os.Remove(d.sock)
	_ = os.Remove(d.sock + ".ttrpc")
}

// killShims SIGKILLs shim processes and removes the sockets they listened on.
func killShims(ps []proc) {
	var socks []string
	for _, p := range ps {
		socks = append(socks, listeningPaths(p.pid)...)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	if len(ps) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
	for _, s := range socks {
		if st, err := os.Lstat(s); err == nil && st.Mode().Type() == os.ModeSocket {
			_ = os.Remove(s)
		}
	}
}

func (d *daemon) logTail(n int) string {
	data, err := os.ReadFile(d.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- containerd %s log (%s), last %d lines ---\n%s\n--- end ---", d.name, d.logPath, len(lines), strings.Join(lines, "\n"))
}

// result of a command.
type result struct {
	stdout, stderr string
	code           int // -1 if it did not run or was killed
	err            error
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d (err %v) stdout=%q stderr=%q", r.code, r.err, trim(r.stdout), trim(r.stderr))
}

func trim(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 1500 {
		s = s[:1500] + "..."
	}
	return s
}

// ctr runs this containerd's ctr against its socket in namespace ns.
func (d *daemon) ctr(ctx context.Context, ns string, args ...string) result {
	full := []string{"--address", d.sock}
	if ns != "" {
		full = append(full, "--namespace", ns)
	}
	r := run(ctx, nil, d.v.Ctr, append(full, args...)...)
	r.stderr = dropCgroupV1Warning(r.stderr)
	return r
}

// dropCgroupV1Warning removes the deprecation warning containerd 2.2+ prints
// on every ctr call on a cgroup v1 host.
func dropCgroupV1Warning(s string) string {
	if !strings.Contains(s, "cgroup v1 is deprecated") {
		return s
	}
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "cgroup v1 is deprecated") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// run runs a command until it exits or ctx ends; took is the wall time from
// fork to exit.
func run(ctx context.Context, env []string, name string, args ...string) result {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), code: -1, err: err, took: time.Since(start)}
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
