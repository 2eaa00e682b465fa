package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// The stress and fault suite of issue 13: TestStressSoak,
// TestStressContainerdKilled, TestStressShimKilled and TestStressHungRuntime.
// Each prints its figures as lines starting "stress-figure: <test>", so
// that a log can be grepped for them. TETHER_STRESS_SCALE (stressScale)
// multiplies their amounts: 1 in `make test`, 10 in `make stress`.

// groupLabel puts containers into one shim (an annotation of the spec).
const groupLabel = "io.containerd.runc.v2.group"

// stressEach runs f under the first and the last selected containerd with
// the first runc: what is stressed is the shim, not runc, and `make test`
// cannot afford more.
func stressEach(t *testing.T, short string, f func(t *testing.T, d *daemon, ns string)) {
	t.Helper()
	if len(versions) == 0 {
		t.Fatal("no containerd versions selected")
	}
	forOne(t, short, versions[0], runcs[0], f)
	if len(versions) > 1 {
		forOne(t, short, versions[len(versions)-1], runcs[0], f)
	}
}

// figure logs one greppable line of figures.
func figure(t *testing.T, test string, d *daemon, format string, args ...any) {
	t.Helper()
	t.Logf("stress-figure: %s containerd=%s %s", test, d.v.name, fmt.Sprintf(format, args...))
}

// fdCount is the number of open fds of pid, -1 if it is gone.
func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// leftovers is what a namespace may leave behind once all of its
// containers are deleted. Every field must be empty.
type leftovers struct {
	shims   []int    // shim processes of the namespace
	sockets []string // entries of /run/containerd/s that were not there before
	mounts  []string // mounts in the namespace's bundles or on this containerd's snapshots
	bundles []string // entries of the namespace's task directory
	runtime []string // the runtime's state: entries of <root>/<namespace>
	cgroups []string // cgroups below /<namespace>/ in any hierarchy
	procs   []int    // processes in those cgroups
	zombies []int    // zombie children of containerd or of the namespace's shims
}

func (l leftovers) empty() bool {
	return len(l.shims)+len(l.sockets)+len(l.mounts)+len(l.bundles)+len(l.runtime)+len(l.cgroups)+len(l.procs)+len(l.zombies) == 0
}

// figures is the counts, in the fixed order of the stress-figure lines.
func (l leftovers) figures() string {
	return fmt.Sprintf("left_shims=%d left_sockets=%d left_mounts=%d left_bundles=%d left_runtime_state=%d left_cgroups=%d left_procs=%d left_zombies=%d",
		len(l.shims), len(l.sockets), len(l.mounts), len(l.bundles), len(l.runtime), len(l.cgroups), len(l.procs), len(l.zombies))
}

func (l leftovers) String() string {
	return fmt.Sprintf("shims %v, sockets %v, mounts %v, bundles %v, runtime state %v, cgroups %v, processes in them %v, zombies %v",
		l.shims, l.sockets, l.mounts, l.bundles, l.runtime, l.cgroups, l.procs, l.zombies)
}

// shimsOf lists the pids of d's shims that serve ns.
func (d *daemon) shimsOf(ns string) []int {
	var pids []int
	for _, p := range testkit.ShimProcesses(d.Sock) {
		if testkit.ArgValue(p.Args, "-namespace") == ns {
			pids = append(pids, p.Pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// zombiesOf lists the zombies whose parent is one of parents.
func zombiesOf(parents ...int) []int {
	want := map[int]bool{}
	for _, p := range parents {
		want[p] = true
	}
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if procState(pid) != "Z" {
			continue
		}
		if pp, err := ppid(pid); err == nil && want[pp] {
			out = append(out, pid)
		}
	}
	return out
}

// leftoversOf collects what ns left behind: before is socketDirEntries
// from before the test; roots are the runtime state directories in use
// (each holding <namespace>/<id>).
func (d *daemon) leftoversOf(ns string, before map[string]bool, roots ...string) leftovers {
	var l leftovers
	l.shims = d.shimsOf(ns)
	for name := range socketDirEntries() {
		if !before[name] {
			l.sockets = append(l.sockets, name)
		}
	}
	sort.Strings(l.sockets)
	for _, m := range mountsMentioning(d.taskDir(ns)+"/", filepath.Join(d.Root, "io.containerd.snapshotter.v1.overlayfs")+"/") {
		l.mounts = append(l.mounts, m.String())
	}
	if ents, err := os.ReadDir(d.taskDir(ns)); err == nil {
		for _, e := range ents {
			l.bundles = append(l.bundles, e.Name())
		}
	}
	for _, root := range append([]string{"/run/containerd/runc"}, roots...) {
		if ents, err := os.ReadDir(filepath.Join(root, ns)); err == nil {
			for _, e := range ents {
				l.runtime = append(l.runtime, filepath.Join(root, ns, e.Name()))
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns, "*"))
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			l.cgroups = append(l.cgroups, dir)
			pids, _ := cgroupPids(dir)
			l.procs = append(l.procs, pids...)
		}
	}
	l.zombies = zombiesOf(append([]int{d.Pid()}, l.shims...)...)
	return l
}

// waitNoLeftovers waits up to timeout for ns to have left nothing behind
// and fails the test if something stays; it returns what it saw last.
func (d *daemon) waitNoLeftovers(t *testing.T, ns string, before map[string]bool, timeout time.Duration, roots ...string) leftovers {
	t.Helper()
	var l leftovers
	for deadline := time.Now().Add(timeout); ; time.Sleep(200 * time.Millisecond) {
		l = d.leftoversOf(ns, before, roots...)
		if l.empty() || time.Now().After(deadline) {
			break
		}
	}
	if !l.empty() {
		t.Errorf("left behind after %v: %s", timeout, l)
	}
	return l
}

// shimMetrics asks a shim started with -debug for its Go runtime figures
// (SIGUSR1 makes it write <bundle>/tether-metrics.txt, "name value" lines:
// goroutines, buckhash_sys, ...); nil if it did not answer within 5 s.
func shimMetrics(t *testing.T, pid int, bundle string) map[string]int64 {
	t.Helper()
	file := filepath.Join(bundle, "tether-metrics.txt")
	_ = os.Remove(file)
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		t.Fatalf("SIGUSR1 to the shim %d: %v", pid, err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		data, _ := os.ReadFile(file)
		m := map[string]int64{}
		for line := range strings.Lines(string(data)) {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					m[k] = n
				}
			}
		}
		if _, ok := m["goroutines"]; ok {
			return m
		}
	}
	return nil
}

// startWorkers starts workers goroutines on wg that call f once for each i
// of from..to-1, in order of i, as many at a time as there are workers; the
// caller waits on wg.
func startWorkers(wg *sync.WaitGroup, workers, from, to int, f func(i int)) {
	var next atomic.Int64
	next.Store(int64(from))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < to; i = int(next.Add(1) - 1) {
				f(i)
			}
		}()
	}
}
