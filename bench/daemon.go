package main

// A private containerd per (version, shim), on top of testkit.Daemon.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tether-shim/tether/testkit"
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
	testkit.Daemon
	v      *cdVersion
	name   string // <tag>-<shim>
	binDir string
}

func newDaemon(v *cdVersion, shim, binDir string) *daemon {
	name := v.Tag + "-" + shim
	return &daemon{
		Daemon: testkit.Daemon{
			Name:       name,
			Major:      v.Major,
			Containerd: v.Containerd,
			Ctr:        v.Ctr,
			Root:       filepath.Join(libBase, name),
			State:      filepath.Join(runBase, name),
			Sock:       filepath.Join(runBase, name+".sock"),
			Config:     filepath.Join(libBase, name+".toml"),
			LogPath:    filepath.Join(libBase, name+".log"),
		},
		v:      v,
		name:   name,
		binDir: binDir,
	}
}

func (d *daemon) taskDir(ns string) string {
	return filepath.Join(d.State, "io.containerd.runtime.v2.task", ns)
}

// start wipes what an earlier run of this daemon left and starts containerd.
func (d *daemon) start(ctx context.Context) error {
	d.cleanupLeftovers()
	if err := os.MkdirAll(libBase, 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(runBase, 0o711); err != nil {
		return err
	}
	// Info, not debug: a shim's debug logging would be part of what is measured.
	if err := d.WriteConfig("info"); err != nil {
		return err
	}
	return d.Start(ctx, testkit.StartOptions{
		Env: append(testkit.FilterEnv(os.Environ(), "PATH", "NOTIFY_SOCKET", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "GOMAXPROCS", "GOGC", "GOMEMLIMIT", "GODEBUG"),
			"PATH="+d.binDir+":"+os.Getenv("PATH")),
		Poll:      100 * time.Millisecond,
		TailLines: 40,
	})
}

// stop stops containerd: SIGTERM, then SIGKILL after 15 s.
func (d *daemon) stop() error { return d.Stop(15 * time.Second) }

// cleanupLeftovers kills this daemon's containerd and shims of an earlier
// run and removes their sockets, mounts and directories.
func (d *daemon) cleanupLeftovers() { d.RemoveLeftovers(killShims) }

// killShims SIGKILLs shim processes and removes the sockets they listened on.
func killShims(ps []testkit.Proc) {
	var socks []string
	for _, p := range ps {
		socks = append(socks, listeningPaths(p.Pid)...)
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
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
	r := fromResult(d.RunCtr(ctx, ns, args...))
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
	return fromResult(testkit.Run(ctx, env, name, args...))
}

func fromResult(r testkit.Result) result {
	return result{stdout: r.Stdout, stderr: r.Stderr, code: r.Code, err: r.Err, took: r.Took}
}
