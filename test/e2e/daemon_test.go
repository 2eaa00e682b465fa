package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
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

// runcBin is one runc binary under test. The shim runs "runc" from its
// PATH, which it inherits from containerd: dir, which holds a symlink runc
// to path, comes first on the PATH of the containerd that tests it.
type runcBin struct {
	path    string // the binary
	version string // from runc --version: 1.1.5+ds1, 1.5.3, ...
	dir     string
	suffix  string // of subtest and daemon names: "" for the default runc, else -runc<version>
	tag     string // of paths and namespaces: "" for the default runc, else -r<version digits>
}

// newRuncBin checks path and makes dir with a runc symlink to it.
func newRuncBin(dir, path string, isDefault bool) (*runcBin, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := run(ctx, path, "--version")
	first, _, _ := strings.Cut(r.stdout, "\n")
	version, ok := strings.CutPrefix(first, "runc version ")
	if r.code != 0 || !ok {
		return nil, fmt.Errorf("runc %s (run scripts/install-deps.sh): --version: %s", path, r)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink(path, filepath.Join(dir, "runc")); err != nil {
		return nil, err
	}
	rb := &runcBin{path: path, version: version, dir: dir}
	if !isDefault {
		rb.suffix = "-runc" + version
		rb.tag = "-r" + strings.Map(func(c rune) rune {
			if c >= '0' && c <= '9' {
				return c
			}
			return -1
		}, version)
	}
	return rb, nil
}

// daemon is one private containerd.
type daemon struct {
	testkit.Daemon
	v      *cdVersion
	r      *runcBin
	broken error // set when a start failed; later tests fail fast

	sockets map[string][]string // shim sockets seen per namespace, removed if stale at cleanup
	path    string              // put on containerd's PATH after the shim's directory, unless empty
	bin     string              // the shim's directory, first on containerd's PATH; shimDir if empty
}

// getDaemon returns the running containerd of version v with the default
// runc, starting it on first use.
func getDaemon(t *testing.T, v *cdVersion) *daemon {
	t.Helper()
	return getDaemonRunc(t, v, runcs[0])
}

// getDaemonRunc returns the running containerd of version v whose shims run
// runc r, starting it on first use.
func getDaemonRunc(t *testing.T, v *cdVersion, r *runcBin) *daemon {
	t.Helper()
	name, tag := v.name+r.suffix, v.tag+r.tag
	d := daemons[name]
	if d == nil {
		d = &daemon{
			Daemon: testkit.Daemon{
				Name:       name,
				Major:      v.major,
				Containerd: v.containerd,
				Ctr:        v.ctr,
				Root:       filepath.Join(libBase, tag),
				State:      filepath.Join(runBase, tag),
				Sock:       filepath.Join(runBase, tag+".sock"),
				Config:     filepath.Join(libBase, tag+".toml"),
				LogPath:    filepath.Join(libBase, tag+".log"),
			},
			v:       v,
			r:       r,
			sockets: map[string][]string{},
		}
		daemons[name] = d
		if err := d.start(true); err != nil {
			d.broken = err
		}
	}
	if d.broken != nil {
		t.Fatalf("containerd %s: %v", name, d.broken)
	}
	if !d.Running() {
		t.Fatalf("containerd %s is not running (log: %s)\n%s", name, d.LogPath, d.LogTail(0, 60))
	}
	return d
}

// taskDir is where containerd keeps the bundles of namespace ns.
func (d *daemon) taskDir(ns string) string {
	return filepath.Join(d.State, "io.containerd.runtime.v2.task", ns)
}

func (d *daemon) bundle(ns, id string) string { return filepath.Join(d.taskDir(ns), id) }

// start starts containerd; fresh wipes its root and state first.
func (d *daemon) start(fresh bool) error {
	if fresh {
		cleanupDaemonLeftovers(d)
		if err := os.MkdirAll(libBase, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(runBase, 0o711); err != nil {
			return err
		}
		if err := d.WriteConfig("debug"); err != nil {
			return err
		}
		if err := os.Remove(d.LogPath); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	path := shimDir
	if d.bin != "" {
		path = d.bin
	}
	if d.path != "" {
		path += ":" + d.path
	}
	return d.Start(context.Background(), testkit.StartOptions{
		Env: append(testkit.FilterEnv(os.Environ(), "PATH", "NOTIFY_SOCKET", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"),
			"PATH="+path+":"+d.r.dir+":"+os.Getenv("PATH")),
		AppendLog: true,
		Banner:    fmt.Sprintf("\n===== e2e: starting containerd %s at %s =====\n", d.Name, time.Now().Format(time.RFC3339Nano)),
		Poll:      200 * time.Millisecond,
		TailLines: 60,
	})
}

// stop stops containerd: SIGTERM, then SIGKILL if it is still there after 20s.
func (d *daemon) stop() error { return d.Stop(20 * time.Second) }

// restart stops containerd and starts it again with the same config, root and state.
func (d *daemon) restart(t *testing.T) {
	t.Helper()
	if err := d.stop(); err != nil {
		t.Fatalf("stop containerd %s: %v", d.Name, err)
	}
	if err := d.start(false); err != nil {
		d.broken = err
		t.Fatalf("restart containerd %s: %v", d.Name, err)
	}
}

// atLogLevel restarts containerd at log level for the rest of the test,
// and at debug again after it. containerd starts shims with -debug only at
// level debug, and such a shim samples its heap for profiles, which costs
// memory that a shim as operators run it never holds; a test that measures
// a shim's memory starts its containers after atLogLevel(t, "info").
func (d *daemon) atLogLevel(t *testing.T, level string) {
	t.Helper()
	set := func(level string) error {
		if err := d.stop(); err != nil {
			return err
		}
		if err := d.WriteConfig(level); err != nil {
			return err
		}
		if err := d.start(false); err != nil {
			d.broken = err
			return err
		}
		return nil
	}
	if err := set(level); err != nil {
		t.Fatalf("restart containerd %s at log level %s: %v", d.Name, level, err)
	}
	t.Cleanup(func() {
		if err := set("debug"); err != nil {
			t.Errorf("restart containerd %s at log level debug: %v", d.Name, err)
		}
	})
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
	return fromResult(d.RunCtr(ctx, ns, args...))
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
	return fromResult(testkit.Run(ctx, nil, name, args...))
}

func fromResult(r testkit.Result) result {
	return result{stdout: r.Stdout, stderr: r.Stderr, code: r.Code, err: r.Err}
}

// forEachVersion runs f as a subtest per containerd version and runc (see
// TETHER_E2E_RUNC), each with its own namespace e2e-<short>-<tag>, which is
// cleaned up afterwards. The subtests of the default runc are named by the
// version alone, the others <version>-runc<runc version>. When a subtest
// fails, the part of containerd's log written during it is printed.
func forEachVersion(t *testing.T, short string, f func(t *testing.T, d *daemon, ns string)) {
	t.Helper()
	if len(versions) == 0 {
		t.Fatal("no containerd versions selected")
	}
	for _, v := range versions {
		for _, r := range runcs {
			forOne(t, short, v, r, f)
		}
	}
}

// forEachVersionFirstRunc is forEachVersion with the first runc of
// TETHER_E2E_RUNC only. It is for the stdio volume tests (TestStdoutGiB,
// TestHundredLines): they take about 35 s and 18 s per subtest, 70% of the
// suite with two runcs, and what they load is the shim's data path, which
// runc is not on once it has created the process (the shim passes the fds).
// Every runc still runs each create, start, exec, kill, tty, update, pause,
// OOM and delete test.
func forEachVersionFirstRunc(t *testing.T, short string, f func(t *testing.T, d *daemon, ns string)) {
	t.Helper()
	if len(versions) == 0 {
		t.Fatal("no containerd versions selected")
	}
	for _, v := range versions {
		forOne(t, short, v, runcs[0], f)
	}
}

// forOne is the subtest of forEachVersion for v and r.
func forOne(t *testing.T, short string, v *cdVersion, r *runcBin, f func(t *testing.T, d *daemon, ns string)) {
	t.Helper()
	t.Run(v.name+r.suffix, func(t *testing.T) {
		d := getDaemonRunc(t, v, r)
		ns := "e2e-" + short + "-" + v.tag + r.tag
		t.Logf("containerd %s, runc %s (%s)", v.name, r.version, r.path)
		off := d.LogSize()
		t.Cleanup(func() {
			d.cleanupNamespace(t, ns)
			if t.Failed() {
				t.Log(d.LogTail(off, 150))
			}
		})
		f(t, d, ns)
	})
}

// cleanupNamespace removes whatever a test left in ns: tasks, containers,
// images, shims, container processes, mounts and the namespace itself.
func (d *daemon) cleanupNamespace(t *testing.T, ns string) {
	t.Helper()
	if d.Running() {
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
	for _, p := range testkit.ShimProcesses(d.Sock) {
		if testkit.ArgValue(p.Args, "-namespace") == ns {
			t.Logf("cleanup: killing leftover shim %d %q", p.Pid, p.Args)
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
	}
	testkit.KillCgroup("/" + ns + "/")
	testkit.UnmountUnder(d.taskDir(ns))
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
	d.RemoveLeftovers(func(shims []testkit.Proc) {
		for _, p := range shims {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
	})
}

var e2eNamespace = regexp.MustCompile(`^e2e-[a-z0-9-]+$`)

// globalCleanup kills the containerds, dockerds, container processes and
// shims of earlier runs and unmounts and removes their directories. It is
// run before and after the tests.
func globalCleanup() {
	for _, p := range testkit.AllProcesses() {
		if p.Pid == os.Getpid() || len(p.Args) == 0 {
			continue
		}
		base := filepath.Base(p.Args[0])
		if base != "containerd" && base != "dockerd" && !strings.HasPrefix(base, "containerd-shim-") {
			continue
		}
		if strings.HasPrefix(testkit.Getenv(testkit.Environ(p.Pid), "TTRPC_ADDRESS"), runBase+"/") {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			continue
		}
		for _, a := range p.Args {
			if strings.HasPrefix(a, runBase+"/") || strings.HasPrefix(a, libBase+"/") {
				_ = syscall.Kill(p.Pid, syscall.SIGKILL)
				break
			}
		}
	}
	testkit.KillCgroup("/e2e-")
	if ents, err := os.ReadDir("/run/containerd/runc"); err == nil {
		for _, e := range ents {
			if e2eNamespace.MatchString(e.Name()) {
				_ = os.RemoveAll(filepath.Join("/run/containerd/runc", e.Name()))
			}
		}
	}
	removeCRIRuncState()
	// Keep the logs of the last run for a post-mortem; remove the rest.
	testkit.RemoveBases(runBase, libBase)
	testkit.RemoveCgroups("e2e-")
}

// removeCRIRuncState removes runc's state of the CRI tests' containers from
// /run/containerd/runc/k8s.io, the namespace a real CRI shares: only those
// whose cgroup is below /e2e-cri-.
func removeCRIRuncState() {
	dir := filepath.Join("/run/containerd/runc", criNamespace)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name(), "state.json"))
		if err != nil {
			continue
		}
		var st struct {
			Config struct {
				Cgroups struct {
					Path string `json:"path"`
				} `json:"cgroups"`
			} `json:"config"`
		}
		if json.Unmarshal(data, &st) == nil && strings.HasPrefix(st.Config.Cgroups.Path, "/e2e-cri-") {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}
