// Command bench compares Tether with the stock containerd-shim-runc-v2 of the
// same containerd, each under its own private containerd: latency of
// `ctr run --rm` and `ctr task exec`, start and stop throughput, shim CPU per
// container lifecycle, and memory, threads and fds per shim, with runc and
// crun. It prints a table and writes results/latest.{json,svg,md}. Run it as
// root with `make bench`; see README.md.
package main

import (
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tether-shim/tether/testkit"
)

const (
	stockRuntime = "io.containerd.runc.v2"
	groupLabel   = "io.containerd.runc.v2.group"
	imageName    = "docker.io/tether/busybox:bench"
)

var sleeper = []string{"/bin/sleep", "1000000"}

func main() {
	os.Exit(mainErr())
}

var debug = os.Getenv("BENCH_DEBUG") != ""

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func mainErr() int {
	if len(os.Args) == 3 && os.Args[1] == "-render" {
		// Re-render the table, Markdown and chart of an earlier run's JSON.
		if err := render(os.Args[2]); err != nil {
			logf("render: %v", err)
			return 1
		}
		return 0
	}
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: tether-bench (configured by BENCH_* variables, see README.md)\n       tether-bench -render results/latest.json")
		return 2
	}
	cfg, err := loadConfig()
	if err != nil {
		logf("config: %v", err)
		return 2
	}
	if os.Geteuid() != 0 {
		logf("must run as root (it starts containerd and containers)")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		if s, ok := <-sigs; ok {
			logf("%v: stopping and cleaning up", s)
			cancel()
		}
	}()

	if err := waitForE2E(ctx, cfg.WaitE2E); err != nil {
		logf("%v", err)
		return 1
	}
	b := &bench{cfg: cfg, ctx: ctx, rec: newRecorder(), started: time.Now()}
	code := 0
	if err := b.run(); err != nil {
		logf("FAILED: %v", err)
		code = 1
	}
	b.teardown()
	if b.res != nil {
		if err := b.res.write(cfg.Out); err != nil {
			logf("writing results: %v", err)
			code = 1
		}
	}
	return code
}

// waitForE2E waits until no process of the e2e suite runs (pgrep -f tether-e2e).
func waitForE2E(ctx context.Context, max time.Duration) error {
	deadline := time.Now().Add(max)
	last := time.Time{}
	for {
		var busy []string
		for _, p := range testkit.AllProcesses() {
			if p.Pid != os.Getpid() && strings.Contains(strings.Join(p.Args, " "), "tether-e2e") {
				busy = append(busy, fmt.Sprintf("%d %s", p.Pid, filepath.Base(p.Args[0])))
			}
		}
		if len(busy) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the e2e suite is still running after %v (%s); not benchmarking on a busy machine", max, strings.Join(busy, ", "))
		}
		if time.Since(last) > 30*time.Second {
			logf("waiting for the e2e suite to finish (%d processes, e.g. %s)", len(busy), busy[0])
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// e2eBusy tells whether e2e processes are running now (they distort numbers).
func e2eBusy() bool {
	for _, p := range testkit.AllProcesses() {
		if p.Pid != os.Getpid() && strings.Contains(strings.Join(p.Args, " "), "tether-e2e") {
			return true
		}
	}
	return false
}

type bench struct {
	cfg     config
	ctx     context.Context
	rec     *recorder
	reaper  *reaper
	tmp     string
	rootfs  string
	image   string
	shimBin string // the Tether binary built for this run
	// floorBin is the memory floor (bench/floor) built for this run;
	// empty if the repository is not at hand.
	floorBin string
	started  time.Time
	daemons  []*daemon
	res      *results
	meta     meta
}

// side is one shim under test on its own containerd.
type side struct {
	name string // "tether" or "stock"
	d    *daemon
	ns   string
	exe  string // the binary its shim processes must run
	seq  int
	warm map[string]bool
}

func (s *side) newID(prefix string) string {
	s.seq++
	return fmt.Sprintf("%s%d", prefix, s.seq)
}

// runtimeArgs are the ctr flags that pick the shim and the OCI runtime.
// ctr sends runtime options (BinaryName) only with runtime
// io.containerd.runc.v2, so with crun Tether runs under that name on its own
// containerd, whose PATH has Tether as containerd-shim-runc-v2.
func (b *bench) runtimeArgs(s *side, rt string) []string {
	if rt == "crun" {
		return []string{"--runtime", stockRuntime, "--runc-binary", "crun"}
	}
	if s.name == "tether" {
		return []string{"--runtime", b.cfg.TetherRuntime}
	}
	return []string{"--runtime", stockRuntime}
}

// ctrRunArgs builds `ctr run` arguments.
func (b *bench) ctrRunArgs(s *side, rt string, detach bool, id string, labels []string, cmd ...string) []string {
	args := []string{"run"}
	if detach {
		args = append(args, "-d")
	} else {
		args = append(args, "--rm")
	}
	args = append(args, b.runtimeArgs(s, rt)...)
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	if b.cfg.Image {
		args = append(args, imageName, id)
	} else {
		args = append(args, "--rootfs", b.rootfs, id)
	}
	return append(args, cmd...)
}

// ctr runs ctr of side s with a one minute deadline.
func (b *bench) ctr(s *side, args ...string) result {
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	return s.d.ctr(ctx, s.ns, args...)
}

func (b *bench) run() error {
	var err error
	if b.reaper, err = startReaper(); err != nil {
		return err
	}
	b.meta.CPUSource = "servers: the process CPU-time clock of each server's zombie (the bench is their subreaper), exact; start: the growth of containerd's cutime+cstime over the lifecycles (exact sum, read in 10 ms ticks)"
	if b.tmp, err = os.MkdirTemp("", "tether-bench-"); err != nil {
		return err
	}
	globalCleanup()

	var versions []*cdVersion
	for _, name := range b.cfg.Versions {
		v, err := lookupVersion(name, b.cfg.Deps)
		if err != nil {
			return err
		}
		versions = append(versions, v)
	}
	for _, tool := range append([]string{"busybox"}, b.cfg.Runtimes...) {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing (run scripts/install-deps.sh): %w", tool, err)
		}
	}
	if err := b.buildShim(); err != nil {
		return err
	}
	if root, err := testkit.RepoRoot(); err == nil {
		if err := b.buildFloor(root); err != nil {
			return err
		}
	}
	if contains(b.cfg.Runtimes, "crun") || contains(b.cfg.MemRuntimes, "crun") {
		if err := ensureHugetlb(); err != nil {
			return err
		}
	}
	b.rootfs = filepath.Join(b.tmp, "rootfs")
	if err := testkit.BuildRootfs(b.rootfs, "tether-bench"); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	if b.cfg.Image {
		b.image = filepath.Join(b.tmp, "busybox-oci.tar")
		if err := testkit.BuildImageTar(b.rootfs, b.image, imageName, "tether bench image", "tether bench: busybox rootfs"); err != nil {
			return fmt.Errorf("OCI image: %w", err)
		}
	}
	// The versions of the pod figures, looked up once; those not in
	// BENCH_VERSIONS get tables of their own.
	all := append([]*cdVersion(nil), versions...)
	var podVersions []*cdVersion
	for _, name := range b.cfg.PodVersions {
		var v *cdVersion
		for _, x := range all {
			if x.Name == name {
				v = x
			}
		}
		if v == nil {
			if v, err = lookupVersion(name, b.cfg.Deps); err != nil {
				return err
			}
			all = append(all, v)
		}
		podVersions = append(podVersions, v)
	}
	b.collectMeta(all)
	b.res = &results{Meta: &b.meta, Config: b.cfg}
	defer func() { b.res.fill(b.rec, b.cfg, all, &b.meta) }()

	for _, v := range versions {
		if err := b.runVersion(v); err != nil {
			return fmt.Errorf("containerd %s: %w", v.Name, err)
		}
	}
	for _, v := range podVersions {
		if err := b.runPods(v); err != nil {
			if b.ctx.Err() != nil {
				return fmt.Errorf("containerd %s, CRI pods: %w", v.Name, err)
			}
			// Setting up the CRI containerds failed: the pod figures of
			// both shims are failed, the others stand.
			for _, m := range podMetrics() {
				for _, s := range []string{"tether", "stock"} {
					b.rec.fail(key{v.Name, "runc", m}, s, err.Error())
				}
			}
		}
	}
	b.meta.Finished = time.Now()
	return nil
}

// buildShim builds Tether from the repository root (or copies TETHER_SHIM_BIN).
func (b *bench) buildShim() error {
	out := filepath.Join(b.tmp, "build", "containerd-shim-tether-v2")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if b.cfg.ShimBin != "" {
		logf("using prebuilt shim %s", b.cfg.ShimBin)
		b.shimBin = out
		return testkit.CopyFile(b.cfg.ShimBin, out, 0o755)
	}
	root, err := testkit.RepoRoot()
	if err != nil {
		return err
	}
	// `make build` with BIN pointed here: the shim is built exactly as it
	// ships (today CGO_ENABLED=0 go build ./cmd/containerd-shim-tether-v2).
	logf("building the shim in %s (make build BIN=%s)", root, out)
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", root, "build", "BIN="+out)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("make build: %w", err)
	}
	b.shimBin = out
	b.meta.RepoRoot = root
	b.meta.Commit, b.meta.Dirty = gitInfo(root)
	return nil
}

// gitInfo reads (never changes) the commit and whether the tree has changes.
func gitInfo(root string) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := run(ctx, nil, "git", "-C", root, "rev-parse", "--short", "HEAD")
	if r.code != 0 {
		return "", false
	}
	// Changes that reach the binary: tests and untracked test files do not.
	d := run(ctx, nil, "git", "-C", root, "status", "--porcelain", "--", "cmd", "internal", "go.mod", "go.sum", "third_party", "Makefile")
	dirty := false
	for _, l := range strings.Split(d.stdout, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasSuffix(l, "_test.go") && !strings.HasSuffix(l, "/") {
			dirty = true
		}
	}
	return strings.TrimSpace(r.stdout), dirty
}

// ensureHugetlb mounts the hugetlb cgroup v1 hierarchy if it is missing:
// crun 1.8.1 refuses this host's hybrid cgroups without it.
func ensureHugetlb() error {
	const dir = "/sys/fs/cgroup/hugetlb"
	if testkit.Mounted(dir) {
		return nil
	}
	if _, err := os.Stat("/sys/fs/cgroup/cpu"); err != nil {
		return nil // not a cgroup v1 host: nothing to do
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("cgroup", dir, "cgroup", 0, "hugetlb"); err != nil {
		return fmt.Errorf("mount the hugetlb cgroup for crun: %w", err)
	}
	logf("mounted the hugetlb cgroup at %s (crun needs it)", dir)
	return nil
}

func (b *bench) runVersion(v *cdVersion) error {
	logf("containerd %s (%s): Tether vs %s", v.Name, v.Version, v.StockShim)
	mk := func(name, exe string, links map[string]string) (*side, error) {
		binDir := filepath.Join(b.tmp, "bin-"+v.Tag+"-"+name)
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			return nil, err
		}
		for link, target := range links {
			if err := os.Symlink(target, filepath.Join(binDir, link)); err != nil {
				return nil, err
			}
		}
		d := newDaemon(v, name, binDir)
		b.daemons = append(b.daemons, d)
		if err := d.start(b.ctx); err != nil {
			return nil, err
		}
		real, err := filepath.EvalSymlinks(exe)
		if err != nil {
			return nil, err
		}
		return &side{name: name, d: d, ns: nsPrefix + v.Tag + "-" + name, exe: real, warm: map[string]bool{}}, nil
	}
	tether, err := mk("tether", b.shimBin, map[string]string{
		"containerd-shim-tether-v2": b.shimBin,
		"containerd-shim-runc-v2":   b.shimBin, // for crun: ctr passes BinaryName only to io.containerd.runc.v2
	})
	if err != nil {
		return err
	}
	stock, err := mk("stock", v.StockShim, map[string]string{"containerd-shim-runc-v2": v.StockShim})
	if err != nil {
		return err
	}
	sides := []*side{tether, stock} // A B, in this order every round
	defer func() {
		for _, s := range sides {
			b.cleanNamespace(s)
			if err := s.d.stop(); err != nil {
				logf("stopping containerd %s: %v", s.d.name, err)
			}
		}
	}()
	if b.cfg.Image {
		for _, s := range sides {
			if r := b.ctr(s, "image", "import", b.image); r.code != 0 {
				return fmt.Errorf("ctr image import: %s", r)
			}
		}
	}
	b.binaryFigures(v, tether, stock)

	floors := map[string]string{}
	usable := map[string]bool{}
	for _, rt := range b.cfg.Runtimes {
		bundle, err := b.floorBundle(stock, v, rt)
		if err != nil {
			return fmt.Errorf("floor bundle: %w", err)
		}
		floors[rt] = bundle
		usable[rt] = b.probeRuntime(v, rt, bundle, sides)
	}

	for _, rt := range b.cfg.Runtimes {
		for rep := 1; rep <= b.cfg.Reps && usable[rt]; rep++ {
			if err := b.ctx.Err(); err != nil {
				return err
			}
			logf("containerd %s, %s, round %d/%d: ctr run --rm, runtime run, ctr exec, throughput", v.Name, rt, rep, b.cfg.Reps)
			b.checkQuiet(v.Name)
			for _, s := range sides {
				b.runLatency(s, v, rt)
			}
			b.floorRun(v, rt, floors[rt])
			for _, s := range sides {
				b.execLatency(s, v, rt)
			}
			for _, s := range sides {
				b.throughput(s, v, rt)
			}
		}
	}
	for _, rt := range b.cfg.MemRuntimes {
		if ok, probed := usable[rt]; probed && !ok {
			continue
		}
		for rep := 1; rep <= b.cfg.MemReps; rep++ {
			if err := b.ctx.Err(); err != nil {
				return err
			}
			logf("containerd %s, %s, memory round %d/%d: %d shims, then one group shim of %v", v.Name, rt, rep, b.cfg.MemReps, b.cfg.Shims, b.cfg.Groups)
			b.checkQuiet(v.Name)
			for _, s := range sides {
				b.memSingles(s, v, rt, rep)
			}
			for _, s := range sides {
				b.memSinglesTHP(s, v, rt)
			}
			b.memFloor(v, rt)
			for _, s := range sides {
				b.memGroup(s, v, rt, rep)
			}
		}
	}
	return b.ctx.Err()
}

// checkQuiet notes when the e2e suite runs during the benchmark.
func (b *bench) checkQuiet(version string) {
	if e2eBusy() {
		b.meta.Warnings = appendOnce(b.meta.Warnings, fmt.Sprintf("containerd %s: the e2e suite was running during the benchmark; numbers are distorted", version))
	}
	var la string
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		la = strings.Join(strings.Fields(string(data))[:3], " ")
	}
	b.meta.LoadAvg = append(b.meta.LoadAvg, fmt.Sprintf("%s %s", time.Now().Format("15:04:05"), la))
}

func appendOnce(list []string, s string) []string {
	if contains(list, s) {
		return list
	}
	return append(list, s)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// binaryFigures records the shim binaries' sizes: the file, and the loaded
// segments (what can be paged in; without symbols and DWARF).
func (b *bench) binaryFigures(v *cdVersion, tether, stock *side) {
	for _, s := range []*side{tether, stock} {
		st, err := os.Stat(s.exe)
		if err != nil {
			b.rec.fail(key{v.Name, "", "size_mb"}, s.name, err.Error())
			continue
		}
		b.rec.add(key{v.Name, "", "size_mb"}, s.name, mib(st.Size()))
		if f, err := elf.Open(s.exe); err == nil {
			var load uint64
			for _, p := range f.Progs {
				if p.Type == elf.PT_LOAD {
					load += p.Filesz
				}
			}
			f.Close()
			b.rec.add(key{v.Name, "", "load_mb"}, s.name, mib(int64(load)))
		}
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// runtimeRoot is where both shims keep the runtime state of namespace ns.
func runtimeRoot(ns string) string { return filepath.Join("/run/containerd/runc", ns) }

// floorBundle makes a bundle whose config.json is the one ctr and containerd
// generate for `ctr run --rootfs <rootfs> /bin/true` (taken from a container
// of the stock side), with its own cgroup, for `runc run` alone.
func (b *bench) floorBundle(s *side, v *cdVersion, rt string) (string, error) {
	id := s.newID("spec")
	if r := b.ctr(s, b.ctrRunArgs(s, "runc", true, id, nil, sleeper...)...); r.code != 0 {
		return "", fmt.Errorf("ctr run -d: %s", r)
	}
	data, err := os.ReadFile(filepath.Join(s.d.taskDir(s.ns), id, "config.json"))
	b.remove(s, []string{id})
	if err != nil {
		return "", err
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		return "", err
	}
	proc, _ := spec["process"].(map[string]any)
	root, _ := spec["root"].(map[string]any)
	linux, _ := spec["linux"].(map[string]any)
	if proc == nil || root == nil || linux == nil {
		return "", fmt.Errorf("config.json lacks process, root or linux")
	}
	proc["args"] = []string{"/bin/true"}
	proc["terminal"] = false
	root["path"] = b.rootfs
	linux["cgroupsPath"] = "/" + nsPrefix + "floor-" + v.Tag + "-" + rt
	out, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(b.tmp, "floor-"+v.Tag+"-"+rt)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "config.json"), out, 0o644)
}

// probeRuntime runs the floor bundle with the runtime alone once. If that
// fails, no shim can do better: every figure of the runtime is marked failed,
// with the runtime's own message and what each shim answers to one
// `ctr run --rm`, and the runtime is skipped for this containerd.
func (b *bench) probeRuntime(v *cdVersion, rt, bundle string, sides []*side) bool {
	root := filepath.Join(runBase, "floor-"+rt)
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	r := run(ctx, nil, rt, "--root", root, "run", "--bundle", bundle, "probe")
	cancel()
	if r.code == 0 {
		return true
	}
	ctx, cancel = context.WithTimeout(b.ctx, 30*time.Second)
	run(ctx, nil, rt, "--root", root, "delete", "-f", "probe")
	cancel()
	ociVersion := "?"
	if data, err := os.ReadFile(filepath.Join(bundle, "config.json")); err == nil {
		var spec struct {
			OCIVersion string `json:"ociVersion"`
		}
		if json.Unmarshal(data, &spec) == nil {
			ociVersion = spec.OCIVersion
		}
	}
	why := map[string]string{
		"floor": fmt.Sprintf("%s alone fails: %s (on the OCI spec containerd %s writes, ociVersion %s)", rt, firstLine(r.stderr+r.stdout), v.Name, ociVersion),
	}
	for _, s := range sides {
		id := s.newID("p")
		sr := b.ctr(s, b.ctrRunArgs(s, rt, false, id, nil, "/bin/true")...)
		if sr.code == 0 {
			why[s.name] = "the shim ran it, but " + why["floor"]
		} else {
			why[s.name] = fmt.Sprintf("ctr run --rm fails: %s (%s alone fails the same way: ociVersion %s)", lastLine(sr.stderr), rt, ociVersion)
		}
		b.cleanNamespace(s)
	}
	metrics := []string{"run_ms", "exec_ms", "start_tput", "stopdel_tput", "cpu_ms"}
	if contains(b.cfg.MemRuntimes, rt) {
		for _, f := range memFields {
			metrics = append(metrics, f.name+"_single", f.name+"_steady", f.name+"_thp")
			for _, n := range b.cfg.Groups {
				metrics = append(metrics, fmt.Sprintf("%s_group%d", f.name, n))
			}
		}
	}
	for _, m := range metrics {
		for side, w := range why {
			if side == "floor" && m != "run_ms" && m != "exec_ms" {
				continue
			}
			b.rec.fail(key{v.Name, rt, m}, side, w)
		}
	}
	return false
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// lastLine is the last line of ctr's stderr without containerd 2.x's cgroup v1 warning.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// floorRun times `<runtime> run` of the floor bundle: create, start, wait
// and delete of /bin/true by the runtime alone.
func (b *bench) floorRun(v *cdVersion, rt, bundle string) {
	k := key{v.Name, rt, "run_ms"}
	root := filepath.Join(runBase, "floor-"+rt)
	for i := 0; i < b.cfg.Iters; i++ {
		id := fmt.Sprintf("floor%d", i)
		ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
		r := run(ctx, nil, rt, "--root", root, "run", "--bundle", bundle, id)
		cancel()
		if r.code != 0 {
			b.rec.fail(k, "floor", fmt.Sprintf("%s run: %s", rt, r))
			ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
			run(ctx, nil, rt, "--root", root, "delete", "-f", id)
			cancel()
			return
		}
		if i > 0 || b.rec.has(k, "floor") { // the very first run warms the caches
			b.rec.add(k, "floor", ms(r.took))
		}
	}
}

// runLatency times Iters sequential `ctr run --rm ... /bin/true` and
// measures the shim CPU they cost: the servers' own utime+stime (read from
// their zombies, see reaper.go) plus the `start` processes' (the growth of
// containerd's cutime+cstime).
func (b *bench) runLatency(s *side, v *cdVersion, rt string) {
	k := key{v.Name, rt, "run_ms"}
	if b.rec.failedFor(k, s.name) {
		return
	}
	if !s.warm[rt] {
		id := s.newID("w")
		if r := b.ctr(s, b.ctrRunArgs(s, rt, false, id, nil, "/bin/true")...); r.code != 0 {
			b.rec.fail(k, s.name, fmt.Sprintf("ctr run --rm: %s", r))
			b.rec.fail(key{v.Name, rt, "cpu_ms"}, s.name, "no lifecycle completed")
			b.cleanNamespace(s)
			return
		}
		s.warm[rt] = true
		b.waitNoShims(s, 10*time.Second)
	}
	mark := b.reaper.mark()
	c0, err0 := readStat(s.d.Pid())
	for i := 0; i < b.cfg.Iters; i++ {
		id := s.newID("r")
		r := b.ctr(s, b.ctrRunArgs(s, rt, false, id, nil, "/bin/true")...)
		if r.code != 0 {
			b.rec.fail(k, s.name, fmt.Sprintf("ctr run --rm: %s", r))
			b.cleanNamespace(s)
			return
		}
		b.rec.add(k, s.name, ms(r.took))
	}
	left := b.waitNoShims(s, 10*time.Second)
	server, n, inexact := b.reaper.cpuSince(mark)
	c1, err1 := readStat(s.d.Pid())
	ck := key{v.Name, rt, "cpu_ms"}
	iters := float64(b.cfg.Iters)
	switch {
	case left > 0:
		b.rec.fail(ck, s.name, fmt.Sprintf("%d shim servers still running after the lifecycles", left))
	case err0 != nil || err1 != nil:
		b.rec.fail(ck, s.name, fmt.Sprintf("containerd's /proc/<pid>/stat: %v %v", err0, err1))
	case n != b.cfg.Iters:
		b.rec.fail(ck, s.name, fmt.Sprintf("the bench reaped %d shim servers for %d lifecycles (not their subreaper?)", n, b.cfg.Iters))
	default:
		start := float64((c1.cutime+c1.cstime)-(c0.cutime+c0.cstime)) * 1000 / clockTick // ms
		serverMS := float64(server.Microseconds()) / 1000
		b.rec.add(ck, s.name, (serverMS+start)/iters)
		b.rec.add(key{v.Name, rt, "cpu_server_ms"}, s.name, serverMS/iters)
		b.rec.add(key{v.Name, rt, "cpu_start_ms"}, s.name, start/iters)
		if inexact > 0 {
			b.rec.note(ck, fmt.Sprintf("%s: %d servers' CPU only from /proc/<pid>/stat (10 ms ticks, truncated)", s.name, inexact))
		}
	}
}

// execLatency times Iters `ctr task exec ... /bin/true` into a running
// container, and `<runtime> exec` into the same container as the floor.
func (b *bench) execLatency(s *side, v *cdVersion, rt string) {
	k := key{v.Name, rt, "exec_ms"}
	if b.rec.failedFor(k, s.name) {
		return
	}
	id := s.newID("x")
	if r := b.ctr(s, b.ctrRunArgs(s, rt, true, id, nil, sleeper...)...); r.code != 0 {
		b.rec.fail(k, s.name, fmt.Sprintf("ctr run -d: %s", r))
		b.cleanNamespace(s)
		return
	}
	defer b.remove(s, []string{id})
	if err := b.checkShims(s, 1); err != nil {
		b.rec.fail(k, s.name, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	st := run(ctx, nil, rt, "--root", runtimeRoot(s.ns), "state", id)
	cancel()
	if st.code != 0 {
		b.rec.fail(k, s.name, fmt.Sprintf("the container is not %s's (%s --root %s state %s: %s)", rt, rt, runtimeRoot(s.ns), id, st))
		return
	}
	for i := 0; i <= b.cfg.Iters; i++ {
		r := b.ctr(s, "task", "exec", "--exec-id", fmt.Sprintf("e%d", i), id, "/bin/true")
		if r.code != 0 {
			b.rec.fail(k, s.name, fmt.Sprintf("ctr task exec: %s", r))
			return
		}
		if i > 0 { // the first is a warm-up
			b.rec.add(k, s.name, ms(r.took))
		}
	}
	fk := key{v.Name, rt, "exec_ms"}
	for i := 0; i < b.cfg.Iters; i++ {
		ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
		r := run(ctx, nil, rt, "--root", runtimeRoot(s.ns), "exec", id, "/bin/true")
		cancel()
		if r.code != 0 {
			b.rec.fail(fk, "floor", fmt.Sprintf("%s exec: %s", rt, r))
			return
		}
		b.rec.add(fk, "floor", ms(r.took))
	}
}

// throughput starts TputN containers with Parallel ctr run -d at a time,
// then stops and deletes them (ctr task rm -f, ctr c rm) the same way.
func (b *bench) throughput(s *side, v *cdVersion, rt string) {
	k := key{v.Name, rt, "start_tput"}
	kd := key{v.Name, rt, "stopdel_tput"}
	if b.rec.failedFor(k, s.name) {
		return
	}
	ids := make([]string, b.cfg.TputN)
	for i := range ids {
		ids[i] = s.newID("t")
	}
	t0 := time.Now()
	errs := parallel(b.cfg.Parallel, ids, func(id string) error {
		if r := b.ctr(s, b.ctrRunArgs(s, rt, true, id, nil, sleeper...)...); r.code != 0 {
			return fmt.Errorf("ctr run -d %s: %s", id, r)
		}
		return nil
	})
	el := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		b.rec.fail(k, s.name, firstErr(errs))
		b.rec.fail(kd, s.name, "start failed")
		b.cleanNamespace(s)
		return
	}
	b.rec.add(k, s.name, float64(len(ids))/el.Seconds())
	t0 = time.Now()
	errs = parallel(b.cfg.Parallel, ids, func(id string) error {
		if r := b.ctr(s, "task", "rm", "-f", id); r.code != 0 {
			return fmt.Errorf("ctr task rm -f %s: %s", id, r)
		}
		if r := b.ctr(s, "container", "rm", id); r.code != 0 {
			return fmt.Errorf("ctr container rm %s: %s", id, r)
		}
		return nil
	})
	el = time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		b.rec.fail(kd, s.name, firstErr(errs))
		b.cleanNamespace(s)
		return
	}
	b.rec.add(kd, s.name, float64(len(ids))/el.Seconds())
	if left := b.waitNoShims(s, 15*time.Second); left > 0 {
		b.rec.note(kd, fmt.Sprintf("%s: %d shims still running 15 s after the deletes", s.name, left))
		b.cleanNamespace(s)
	}
}

func firstErr(errs []error) string {
	n := 0
	var first error
	for _, e := range errs {
		if e != nil {
			if first == nil {
				first = e
			}
			n++
		}
	}
	if n > 1 {
		return fmt.Sprintf("%v (and %d more failures)", first, n-1)
	}
	return fmt.Sprint(first)
}

// parallel runs f on every item, at most n at a time; errs[i] is item i's.
func parallel(n int, items []string, f func(string) error) []error {
	errs := make([]error, len(items))
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = f(it)
		}()
	}
	wg.Wait()
	return errs
}

var memFields = []struct {
	name string
	get  func(memSample) float64
}{
	{"rss", func(m memSample) float64 { return float64(m.RssKB) / 1024 }},
	{"pss", func(m memSample) float64 { return float64(m.PssKB) / 1024 }},
	{"uss", func(m memSample) float64 { return float64(m.USSKB) / 1024 }},
	{"anon", func(m memSample) float64 { return float64(m.AnonKB) / 1024 }},
	{"hwm", func(m memSample) float64 { return float64(m.VmHWMKB) / 1024 }},
	{"threads", func(m memSample) float64 { return float64(m.Threads) }},
	{"fds", func(m memSample) float64 { return float64(m.FDs) }},
}

// memSingles runs Shims single-container shims and samples each server.
func (b *bench) memSingles(s *side, v *cdVersion, rt string, rep int) {
	k := key{v.Name, rt, "rss_single"}
	if b.rec.failedFor(k, s.name) {
		return
	}
	ids := make([]string, b.cfg.Shims)
	for i := range ids {
		ids[i] = s.newID("m")
	}
	defer b.remove(s, ids)
	errs := parallel(b.cfg.Parallel, ids, func(id string) error {
		if r := b.ctr(s, b.ctrRunArgs(s, rt, true, id, nil, sleeper...)...); r.code != 0 {
			return fmt.Errorf("ctr run -d %s: %s", id, r)
		}
		return nil
	})
	started := time.Now()
	if errors.Join(errs...) != nil {
		b.failMem(v, rt, "single", s.name, firstErr(errs))
		return
	}
	if !b.sleep(b.cfg.Settle) {
		return
	}
	samples := b.recordMem(s, v, rt, "single", len(ids))
	if samples == nil {
		return
	}
	if rep == 1 {
		// Where the memory of a typical shim is: the one of median RSS.
		sort.Slice(samples, func(i, j int) bool { return samples[i].RssKB < samples[j].RssKB })
		m := samples[len(samples)/2]
		b.rec.breakdown(v.Name, rt, s.name, "single", m)
	}
	if rep == 1 && b.cfg.Steady > 0 {
		b.memSteady(s, v, rt, len(ids), started)
	}
}

// thpSetting is the kernel's transparent huge page setting.
const thpSetting = "/sys/kernel/mm/transparent_hugepage/enabled"

// readTHP returns the selected word of thpSetting ("always [madvise] never"
// gives "madvise").
func readTHP() (string, error) {
	data, err := os.ReadFile(thpSetting)
	if err != nil {
		return "", err
	}
	for _, w := range strings.Fields(string(data)) {
		if strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return strings.Trim(w, "[]"), nil
		}
	}
	return "", fmt.Errorf("%s: no selected setting in %q", thpSetting, data)
}

// memSinglesTHP samples Shims single shims started and idle under the
// transparent huge page setting BENCH_THP, then puts the host's setting
// back: with "always" (Debian's and RHEL's kernel default) the kernel can
// back a Go runtime's first touches with 2 MiB pages.
func (b *bench) memSinglesTHP(s *side, v *cdVersion, rt string) {
	if b.cfg.THP == "" || b.cfg.THP == "off" || b.cfg.THP == b.cfg.HostTHP {
		return
	}
	k := key{v.Name, rt, "rss_thp"}
	if b.rec.failedFor(k, s.name) {
		return
	}
	if err := os.WriteFile(thpSetting, []byte(b.cfg.THP), 0o644); err != nil {
		b.failMem(v, rt, "thp", s.name, fmt.Sprintf("set %s to %s: %v", thpSetting, b.cfg.THP, err))
		return
	}
	defer func() {
		if err := os.WriteFile(thpSetting, []byte(b.cfg.HostTHP), 0o644); err != nil {
			logf("could not restore %s to %s: %v", thpSetting, b.cfg.HostTHP, err)
		}
	}()
	ids := make([]string, b.cfg.Shims)
	for i := range ids {
		ids[i] = s.newID("h")
	}
	defer b.remove(s, ids)
	errs := parallel(b.cfg.Parallel, ids, func(id string) error {
		if r := b.ctr(s, b.ctrRunArgs(s, rt, true, id, nil, sleeper...)...); r.code != 0 {
			return fmt.Errorf("ctr run -d %s: %s", id, r)
		}
		return nil
	})
	if errors.Join(errs...) != nil {
		b.failMem(v, rt, "thp", s.name, firstErr(errs))
		return
	}
	if b.sleep(b.cfg.Settle) {
		b.recordMem(s, v, rt, "thp", len(ids))
	}
}

// memSteady samples the single shims again once they have been idle for
// Steady since they started: past the garbage collection the Go runtime
// forces every two minutes, which is what a long-running shim looks like.
func (b *bench) memSteady(s *side, v *cdVersion, rt string, n int, started time.Time) {
	logf("containerd %s, %s, %s: waiting until %d shims are %s old for the steady-state sample", v.Name, rt, s.name, n, b.cfg.Steady)
	if b.sleep(time.Until(started.Add(b.cfg.Steady))) {
		b.recordMem(s, v, rt, "steady", n)
	}
}

// recordMem checks that side s runs want shim servers, all of its binary,
// samples each and records every memory figure under what. On failure it
// records the failure for every figure of what and returns nil.
func (b *bench) recordMem(s *side, v *cdVersion, rt, what string, want int) []memSample {
	if err := b.checkShims(s, want); err != nil {
		b.failMem(v, rt, what, s.name, err.Error())
		return nil
	}
	samples, err := sampleServers(s.d.Sock)
	if err != nil {
		b.failMem(v, rt, what, s.name, err.Error())
		return nil
	}
	for _, m := range samples {
		for _, f := range memFields {
			b.rec.add(key{v.Name, rt, f.name + "_" + what}, s.name, f.get(m))
		}
	}
	return samples
}

// memGroup runs one group shim (io.containerd.runc.v2.group=g) and samples
// it at each count of Groups.
func (b *bench) memGroup(s *side, v *cdVersion, rt string, rep int) {
	var ids []string
	defer func() { b.remove(s, ids) }()
	for _, n := range b.cfg.Groups {
		what := fmt.Sprintf("group%d", n)
		if b.rec.failedFor(key{v.Name, rt, "rss_" + what}, s.name) {
			return
		}
		for len(ids) < n {
			id := s.newID("g")
			ids = append(ids, id)
			if r := b.ctr(s, b.ctrRunArgs(s, rt, true, id, []string{groupLabel + "=g"}, sleeper...)...); r.code != 0 {
				b.failMem(v, rt, what, s.name, fmt.Sprintf("ctr run -d --label %s=g: %s", groupLabel, r))
				return
			}
		}
		if !b.sleep(b.cfg.Settle) {
			return
		}
		samples := b.recordMem(s, v, rt, what, 1)
		if samples == nil {
			return
		}
		m := samples[0]
		if rep == 1 && n == b.cfg.Groups[len(b.cfg.Groups)-1] {
			b.rec.breakdown(v.Name, rt, s.name, what, m)
		}
	}
}

func (b *bench) failMem(v *cdVersion, rt, what, sideName, msg string) {
	for _, f := range memFields {
		b.rec.fail(key{v.Name, rt, f.name + "_" + what}, sideName, msg)
	}
}

func sampleServers(sock string) ([]memSample, error) {
	var out []memSample
	for _, p := range shimServers(sock) {
		m, err := sampleMemory(p.Pid)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("no shim server found")
	}
	return out, nil
}

// checkShims checks that side s runs exactly want shim servers, all of its binary.
func (b *bench) checkShims(s *side, want int) error {
	servers := shimServers(s.d.Sock)
	for _, p := range servers {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.Pid))
		if err != nil {
			return err
		}
		if exe != s.exe {
			return fmt.Errorf("shim server %d runs %s, not %s", p.Pid, exe, s.exe)
		}
	}
	if len(servers) != want {
		return fmt.Errorf("%d shim servers, want %d", len(servers), want)
	}
	return nil
}

// sleep waits d unless the run is cancelled.
func (b *bench) sleep(d time.Duration) bool {
	select {
	case <-b.ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// remove deletes the tasks and containers ids, Parallel at a time.
func (b *bench) remove(s *side, ids []string) {
	if len(ids) == 0 {
		return
	}
	parallel(b.cfg.Parallel, ids, func(id string) error {
		b.ctr(s, "task", "rm", "-f", id)
		b.ctr(s, "container", "rm", id)
		return nil
	})
	if left := b.waitNoShims(s, 15*time.Second); left > 0 {
		logf("%s: %d shims still running after their containers were removed; killing them", s.d.name, left)
		b.cleanNamespace(s)
	}
}

// waitNoShims waits until side s has no shim process left; it returns how
// many are still there at the deadline.
func (b *bench) waitNoShims(s *side, max time.Duration) int {
	deadline := time.Now().Add(max)
	for {
		n := len(testkit.ShimProcesses(s.d.Sock))
		if n == 0 || time.Now().After(deadline) || b.ctx.Err() != nil {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cleanNamespace removes whatever is left in side s's namespace: tasks,
// containers, shims, container processes and mounts.
func (b *bench) cleanNamespace(s *side) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if s.d.Running() {
		if r := s.d.ctr(ctx, s.ns, "task", "ls", "-q"); r.code == 0 {
			for _, id := range strings.Fields(r.stdout) {
				s.d.ctr(ctx, s.ns, "task", "rm", "-f", id)
			}
		}
		if r := s.d.ctr(ctx, s.ns, "container", "ls", "-q"); r.code == 0 {
			for _, id := range strings.Fields(r.stdout) {
				s.d.ctr(ctx, s.ns, "container", "rm", id)
			}
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(testkit.ShimProcesses(s.d.Sock)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	killShims(testkit.ShimProcesses(s.d.Sock))
	testkit.KillCgroup("/" + s.ns + "/")
	testkit.UnmountUnder(s.d.taskDir(s.ns))
}

// teardown stops what is still running and removes everything under the
// bench's paths; it runs on success, failure and ^C.
func (b *bench) teardown() {
	// A run stopped during the THP sample leaves the kernel's setting changed.
	if cur, err := readTHP(); err == nil && b.cfg.HostTHP != "" && cur != b.cfg.HostTHP {
		if err := os.WriteFile(thpSetting, []byte(b.cfg.HostTHP), 0o644); err != nil {
			logf("could not restore %s to %s: %v", thpSetting, b.cfg.HostTHP, err)
		} else {
			logf("restored %s to %s", thpSetting, b.cfg.HostTHP)
		}
	}
	for _, d := range b.daemons {
		if err := d.stop(); err != nil {
			logf("stopping containerd %s: %v", d.name, err)
		}
	}
	globalCleanup()
	if b.reaper != nil {
		b.reaper.close()
	}
	if b.tmp != "" {
		_ = os.RemoveAll(b.tmp)
	}
}

// globalCleanup kills containerds, shims and container processes of earlier
// runs and unmounts and removes their directories (keeping containerd logs).
func globalCleanup() {
	for _, p := range testkit.AllProcesses() {
		if p.Pid == os.Getpid() || len(p.Args) == 0 {
			continue
		}
		base := filepath.Base(p.Args[0])
		if base == "containerd" && strings.HasPrefix(testkit.ArgValue(p.Args, "--config"), libBase+"/") {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
	}
	var shims []testkit.Proc
	for _, p := range testkit.AllProcesses() {
		if !testkit.IsShim(p) {
			continue
		}
		if strings.HasPrefix(testkit.Getenv(testkit.Environ(p.Pid), "TTRPC_ADDRESS"), runBase+"/") || strings.HasPrefix(testkit.ArgValue(p.Args, "-address"), runBase+"/") {
			shims = append(shims, p)
		}
	}
	killShims(shims)
	testkit.KillCgroup("/" + nsPrefix)
	// Floor containers of the runtimes alone.
	for _, rt := range []string{"runc", "crun"} {
		root := filepath.Join(runBase, "floor-"+rt)
		if ents, err := os.ReadDir(root); err == nil {
			for _, e := range ents {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				run(ctx, nil, rt, "--root", root, "delete", "-f", e.Name())
				cancel()
			}
		}
	}
	if ents, err := os.ReadDir("/run/containerd/runc"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), nsPrefix) {
				_ = os.RemoveAll(filepath.Join("/run/containerd/runc", e.Name()))
			}
		}
	}
	// Keep the logs of the last run for a post-mortem; remove the rest.
	testkit.RemoveBases(runBase, libBase)
	testkit.RemoveCgroups(nsPrefix)
}

// meta describes the run.
type meta struct {
	Started   time.Time          `json:"started"`
	Finished  time.Time          `json:"finished"`
	Host      map[string]string  `json:"host"`
	RepoRoot  string             `json:"repo_root,omitempty"`
	Commit    string             `json:"commit,omitempty"`
	Dirty     bool               `json:"dirty,omitempty"`
	Tether    binInfo            `json:"tether"`
	Stock     map[string]binInfo `json:"stock"`
	Versions  []*cdVersion       `json:"containerd"`
	Runtimes  map[string]string  `json:"runtimes"`
	LoadAvg   []string           `json:"loadavg"`
	Warnings  []string           `json:"warnings,omitempty"`
	CPUSource string             `json:"cpu_source"`
	Command   string             `json:"command"`
}

type binInfo struct {
	Path     string `json:"path"`
	Size     int64  `json:"size"`
	Go       string `json:"go,omitempty"`
	Settings string `json:"build_settings,omitempty"`
}

func describeBinary(path string) binInfo {
	bi := binInfo{Path: path}
	if st, err := os.Stat(path); err == nil {
		bi.Size = st.Size()
	}
	if info, err := buildinfo.ReadFile(path); err == nil {
		bi.Go = info.GoVersion
		var s []string
		for _, kv := range info.Settings {
			switch kv.Key {
			case "CGO_ENABLED", "-ldflags", "-trimpath", "-tags", "GOAMD64":
				s = append(s, kv.Key+"="+kv.Value)
			}
		}
		bi.Settings = strings.Join(s, " ")
	}
	return bi
}

func (b *bench) collectMeta(versions []*cdVersion) {
	m := &b.meta
	m.Started = b.started
	m.Command = "make bench"
	m.Host = map[string]string{"cpus": fmt.Sprint(runtime.NumCPU()), "go": runtime.Version()}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Host["kernel"] = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.Host["mem_total_kb"] = fmt.Sprint(parseKB(string(data))["MemTotal"])
	}
	if testkit.Mounted("/sys/fs/cgroup/unified") || !testkit.Mounted("/sys/fs/cgroup") {
		m.Host["cgroups"] = "v1 (hybrid)"
	}
	m.Tether = describeBinary(b.shimBin)
	m.Stock = map[string]binInfo{}
	for _, v := range versions {
		m.Stock[v.Name] = describeBinary(v.StockShim)
	}
	m.Versions = versions
	m.Runtimes = map[string]string{}
	for _, rt := range []string{"runc", "crun"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r := run(ctx, nil, rt, "--version")
		cancel()
		if r.code == 0 {
			m.Runtimes[rt] = strings.SplitN(strings.TrimSpace(r.stdout), "\n", 2)[0]
		}
	}
}
