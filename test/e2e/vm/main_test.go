//go:build tethervm

package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// Environment knobs (set by the job script of make test-vm, see README.md).
const (
	envShimBin  = "TETHER_SHIM_BIN"       // the Tether shim binary; required
	envVersions = "TETHER_VM_VERSIONS"    // comma list of containerd versions; default 1.6,2.4.2
	envRuntimes = "TETHER_VM_RUNTIMES"    // comma list of runtimes; default io.containerd.tether.v2
	envDrivers  = "TETHER_VM_DRIVERS"     // comma list of cgroup drivers; default cgroupfs,systemd
	envLogDir   = "TETHER_VM_LOGDIR"      // where containerd logs go; default a temp dir
	envDeps     = "TETHER_DEPS"           // where install-deps.sh put containerd builds; default /opt/tether
	envTHPVer   = "TETHER_VM_THP_VERSION" // containerd of the THP measurement; default the last of the versions
	envOOMRuns  = "TETHER_VM_OOM_RUNS"    // OOM-kill runs per combination; default 3
	envCrictl   = "TETHER_VM_CRICTL"      // crictl, for TestCRIPodSystemd
	envTestdata = "TETHER_VM_TESTDATA"    // test/e2e/testdata's TOML snippets, for TestCRIPodSystemd

	tetherRuntime = "io.containerd.tether.v2"
	stockRuntime  = "io.containerd.runc.v2"

	// Cgroups of the containers: a plain path below cgroupRoot for the
	// cgroupfs driver, a scope in systemdSlice for the systemd driver.
	cgroupRoot   = "tethervm"
	systemdSlice = "tethervm.slice"
	scopePrefix  = "tether"

	runBase = "/run/tether-vm"
	libBase = "/var/lib/tether-vm"
)

// Set up by TestMain; read-only afterwards.
var (
	shimDir   string // the Tether shim as containerd-shim-tether-v2, first on containerd's PATH
	rootfsDir string // busybox rootfs of every container
	logDir    string // containerd logs
	versions  []*cdVersion
	runtimes  []string
	drivers   []string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if err := checkGuest(); err != nil {
		fmt.Fprintln(os.Stderr, "vm: not in the test VM:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "tether-vm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "vm:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if err := setup(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "vm: setup:", err)
		return 1
	}
	testkit.RemoveBases(runBase, libBase)
	code := m.Run()
	testkit.RemoveBases(runBase, libBase)
	return code
}

// checkGuest fails unless this is the machine the tests are for: systemd as
// PID 1 and the unified cgroup hierarchy alone, with the controllers used.
func checkGuest() error {
	comm, err := os.ReadFile("/proc/1/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "systemd" {
		return fmt.Errorf("PID 1 is %q (%v), not systemd", strings.TrimSpace(string(comm)), err)
	}
	ctrl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
	if err != nil {
		return fmt.Errorf("/sys/fs/cgroup is not cgroup2: %w", err)
	}
	have := strings.Fields(string(ctrl))
	for _, c := range []string{"memory", "cpu", "io", "pids"} {
		if !contains(have, c) {
			return fmt.Errorf("cgroup2 controller %s missing (have %v)", c, have)
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err == nil {
		return fmt.Errorf("a cgroup v1 memory hierarchy is mounted: not the unified hierarchy alone")
	}
	return nil
}

func setup(tmp string) error {
	src := os.Getenv(envShimBin)
	if src == "" {
		return fmt.Errorf("%s is not set", envShimBin)
	}
	shimDir = filepath.Join(tmp, "bin")
	if err := os.MkdirAll(shimDir, 0o755); err != nil {
		return err
	}
	if err := testkit.CopyFile(src, filepath.Join(shimDir, "containerd-shim-tether-v2"), 0o755); err != nil {
		return fmt.Errorf("the shim %s: %w", src, err)
	}
	rootfsDir = filepath.Join(tmp, "rootfs")
	if err := testkit.BuildRootfs(rootfsDir, "tether-vm"); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	logDir = os.Getenv(envLogDir)
	if logDir == "" {
		logDir = filepath.Join(tmp, "logs")
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	for _, name := range list(envVersions, "1.6,2.4.2") {
		v, err := lookupVersion(name)
		if err != nil {
			return err
		}
		versions = append(versions, v)
	}
	runtimes = list(envRuntimes, tetherRuntime)
	for _, r := range runtimes {
		if r != tetherRuntime && r != stockRuntime {
			return fmt.Errorf("%s: unknown runtime %q (want %s or %s)", envRuntimes, r, tetherRuntime, stockRuntime)
		}
	}
	drivers = list(envDrivers, "cgroupfs,systemd")
	for _, d := range drivers {
		if d != "cgroupfs" && d != "systemd" {
			return fmt.Errorf("%s: unknown cgroup driver %q", envDrivers, d)
		}
	}
	fmt.Fprintf(os.Stderr, "vm: containerd %s; runtimes %v; drivers %v; kernel %s",
		strings.Join(list(envVersions, "1.6,2.4.2"), ","), runtimes, drivers, readOr("/proc/sys/kernel/osrelease", "?"))
	return nil
}

// list is the comma list in the environment variable k, or def.
func list(k, def string) []string {
	s := strings.TrimSpace(os.Getenv(k))
	if s == "" {
		s = def
	}
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func contains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

func readOr(path, def string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return def
	}
	return string(data)
}

func readTrim(path string) (string, error) {
	data, err := os.ReadFile(path)
	return strings.TrimSpace(string(data)), err
}

// waitFor polls cond every 200ms until it holds, and fails the test with
// what and cond's last detail if it does not within limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) bool {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, detail := cond()
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: not within %v: %s", what, limit, detail)
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// opCtx is a context in namespace-less form with a deadline for one step.
func opCtx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, 2*time.Minute)
}
