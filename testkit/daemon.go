package testkit

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

// Daemon is one private containerd: its binaries and paths, and once
// started, its process. Set the exported fields, then WriteConfig and Start.
type Daemon struct {
	Name       string // in messages: the version, say, or version and shim
	Major      int    // containerd's major version; 2 and up get config version 3
	Containerd string // containerd binary
	Ctr        string // ctr binary of the same release
	Root       string // --root
	State      string // --state
	Sock       string // grpc socket; ttrpc is Sock + ".ttrpc"
	Config     string // config file
	LogPath    string // containerd's stdout and stderr
	// CRIConfig, if not empty, keeps containerd's CRI plugins enabled and is
	// appended to the config file: TOML in the config version of Major
	// (see WriteConfig). Empty disables the CRI plugins, which keeps a
	// daemon that needs no CRI quick to start.
	CRIConfig string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	logf *os.File
}

// StartOptions are how Start runs containerd.
type StartOptions struct {
	Env       []string      // containerd's environment
	AppendLog bool          // append to LogPath instead of truncating it
	Banner    string        // written to the log before containerd starts, unless empty
	Poll      time.Duration // pause between two `ctr version` probes
	TailLines int           // lines of the log in the error of a failed start
}

// Start starts containerd with the config file (see WriteConfig), first
// mounting a tmpfs on Root if overlayfs does not work there (ProbeOverlay).
// containerd gets its own process group and is SIGKILLed if this process
// dies. Start returns once `ctr version` reaches the server, or an error if
// containerd exits, does not answer within 60s, or ctx ends.
func (d *Daemon) Start(ctx context.Context, o StartOptions) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.ProbeOverlay(); err != nil {
		return err
	}
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if o.AppendLog {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	logf, err := os.OpenFile(d.LogPath, flags, 0o644)
	if err != nil {
		return err
	}
	if o.Banner != "" {
		fmt.Fprint(logf, o.Banner)
	}
	cmd := exec.Command(d.Containerd, "--config", d.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = o.Env
	// Its own process group, so a ^C reaches the harness first; and killed if
	// the harness dies (a go test -timeout panic skips cleanup).
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
			return fmt.Errorf("containerd %s exited during start: %v\n%s", d.Name, cmd.ProcessState, d.LogTail(0, o.TailLines))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r := d.RunCtr(cctx, "", "version")
		cancel()
		if r.Code == 0 && strings.Contains(r.Stdout, "Server:") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd %s did not answer within 60s: ctr version: exit %d (err %v) stdout=%q stderr=%q\n%s",
				d.Name, r.Code, r.Err, r.Stdout, r.Stderr, d.LogTail(0, o.TailLines))
		}
		time.Sleep(o.Poll)
	}
}

// RunCtr runs ctr against d's socket in namespace ns (none if empty).
func (d *Daemon) RunCtr(ctx context.Context, ns string, args ...string) Result {
	full := []string{"--address", d.Sock}
	if ns != "" {
		full = append(full, "--namespace", ns)
	}
	return Run(ctx, nil, d.Ctr, append(full, args...)...)
}

// Result is how a command ended.
type Result struct {
	Stdout, Stderr string        // what it wrote
	Code           int           // exit code; -1 if it did not run or was killed
	Err            error         // of exec.Cmd.Run, with the deadline if ctx ended
	Took           time.Duration // wall time from fork to exit
}

// WriteConfig writes the config file of d: root, state, sockets, the plugins
// a test never needs disabled, metrics off, and debug.level set to
// debugLevel. Major picks the config format (version 3 for containerd 2).
// NRI is always disabled: containerd 2 would otherwise recreate the
// host-wide /var/run/nri/nri.sock. The CRI plugins are disabled unless
// CRIConfig is set, which is then appended.
func (d *Daemon) WriteConfig(debugLevel string) error {
	var b strings.Builder
	// Plugins no test or benchmark needs. Unknown names are ignored by containerd,
	// so the list may name plugins of other versions.
	var disabled []string
	if d.CRIConfig == "" {
		disabled = append(disabled, "io.containerd.grpc.v1.cri")
	}
	disabled = append(disabled,
		"io.containerd.nri.v1.nri",
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.zfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.aufs",
		"io.containerd.tracing.processor.v1.otlp",
		"io.containerd.internal.v1.tracing",
	)
	if d.Major >= 2 {
		if d.CRIConfig == "" {
			disabled = append(disabled,
				"io.containerd.cri.v1.images",
				"io.containerd.cri.v1.runtime",
				"io.containerd.podsandbox.controller.v1.podsandbox",
			)
		}
		disabled = append(disabled,
			"io.containerd.snapshotter.v1.erofs",
			"io.containerd.differ.v1.erofs",
		)
		b.WriteString("version = 3\n")
	} else {
		b.WriteString("version = 2\n")
	}
	fmt.Fprintf(&b, "root = %q\nstate = %q\n", d.Root, d.State)
	b.WriteString("disabled_plugins = [")
	for i, p := range disabled {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", p)
	}
	b.WriteString("]\n\n")
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n\n", d.Sock)
	fmt.Fprintf(&b, "[ttrpc]\n  address = %q\n\n", d.Sock+".ttrpc")
	fmt.Fprintf(&b, "[debug]\n  level = %q\n\n", debugLevel)
	b.WriteString("[metrics]\n  address = \"\"\n\n")
	fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n", filepath.Join(d.Root, "opt"))
	if d.CRIConfig != "" {
		b.WriteString("\n")
		b.WriteString(d.CRIConfig)
	}
	return os.WriteFile(d.Config, []byte(b.String()), 0o644)
}

// ProbeOverlay checks that overlayfs can be mounted in the daemon's root. If
// it cannot (the root is itself on overlayfs, say), a tmpfs is mounted there.
func (d *Daemon) ProbeOverlay() error {
	if err := os.MkdirAll(d.Root, 0o711); err != nil {
		return err
	}
	probe, err := os.MkdirTemp(d.Root, "overlay-probe-")
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
	if Mounted(d.Root) {
		return fmt.Errorf("overlayfs cannot be mounted in %s", d.Root)
	}
	if err := syscall.Mount("tmpfs", d.Root, "tmpfs", 0, "mode=0711"); err != nil {
		return fmt.Errorf("overlayfs does not work on %s and mounting a tmpfs there failed: %w", d.Root, err)
	}
	return nil
}

// Running tells whether containerd has been started and has not exited.
func (d *Daemon) Running() bool {
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

// Pid is containerd's pid.
func (d *Daemon) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Stop stops containerd: SIGTERM, then SIGKILL if it is still there after
// grace. It closes the log; Start may be called again.
func (d *Daemon) Stop(grace time.Duration) error {
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
	case <-time.After(grace):
	}
	_ = d.cmd.Process.Kill()
	select {
	case <-d.done:
		return fmt.Errorf("did not stop on SIGTERM within %v; killed", grace)
	case <-time.After(10 * time.Second):
		return errors.New("did not exit even on SIGKILL within 10s")
	}
}

// LogSize is the current size of the log, to print only what a test added.
func (d *Daemon) LogSize() int64 {
	st, err := os.Stat(d.LogPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// LogTail returns at most n lines of the log written after offset.
func (d *Daemon) LogTail(offset int64, n int) string {
	data, err := os.ReadFile(d.LogPath)
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
	return fmt.Sprintf("--- containerd %s log (%s), last %d lines ---\n%s\n--- end of log ---", d.Name, d.LogPath, len(lines), strings.Join(lines, "\n"))
}

// Run runs a command with environment env (this process's if nil) until it
// exits or ctx ends.
func Run(ctx context.Context, env []string, name string, args ...string) Result {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String(), Code: -1, Err: err, Took: time.Since(start)}
	if cmd.ProcessState != nil {
		r.Code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		r.Err = fmt.Errorf("%v (deadline: %w)", err, ctx.Err())
	}
	return r
}

// FilterEnv returns env without the entries of the variables named in drop.
func FilterEnv(env []string, drop ...string) []string {
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

// RemoveBases unmounts everything below runBase and libBase, the two
// directories a harness keeps its daemons' state and roots in, removes
// runBase, and removes everything in libBase except the *.log files, which
// are kept for a post-mortem of the last run.
func RemoveBases(runBase, libBase string) {
	UnmountUnder(runBase)
	UnmountUnder(libBase)
	_ = os.RemoveAll(runBase)
	if ents, err := os.ReadDir(libBase); err == nil {
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".log") {
				_ = os.RemoveAll(filepath.Join(libBase, e.Name()))
			}
		}
	}
}

// RemoveLeftovers removes what an earlier run of d may have left behind: it
// SIGKILLs every containerd running with d's config file, hands the shim
// processes of d's socket (see ShimProcesses) to killShims, and unmounts and
// removes State, Root and the two sockets.
func (d *Daemon) RemoveLeftovers(killShims func([]Proc)) {
	for _, p := range AllProcesses() {
		if len(p.Args) > 0 && filepath.Base(p.Args[0]) == "containerd" && ArgValue(p.Args, "--config") == d.Config {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
	}
	killShims(ShimProcesses(d.Sock))
	UnmountUnder(d.State)
	UnmountUnder(d.Root)
	_ = os.RemoveAll(d.State)
	_ = os.RemoveAll(d.Root)
	_ = os.Remove(d.Sock)
	_ = os.Remove(d.Sock + ".ttrpc")
}
