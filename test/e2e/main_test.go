package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// Environment knobs.
const (
	envShimBin  = "TETHER_SHIM_BIN"     // prebuilt shim binary; otherwise it is built from the repo
	envVersions = "TETHER_E2E_VERSIONS" // comma list of containerd versions; default all
	envRuntime  = "TETHER_E2E_RUNTIME"  // runtime name; default io.containerd.tether.v2
	envRunc     = "TETHER_E2E_RUNC"     // comma list of runc binaries; default Debian's and the built 1.5.3

	tetherRuntime = "io.containerd.tether.v2"
	imageName     = "docker.io/tether/busybox:e2e"
	// imageMarker is the content of testkit.ImageMarkerPath, a file that only
	// the OCI image has, so a test can tell that a container runs on the
	// image's snapshot and not on the --rootfs directory.
	imageMarker = "tether e2e image"

	// Everything the tests put outside their temp dir lives below these, so
	// that a run can clean up what an earlier, killed run left behind.
	runBase = "/run/tether-e2e"
	libBase = "/var/lib/tether-e2e"
)

// defaultVersions are the containerd versions tested when TETHER_E2E_VERSIONS is unset.
var defaultVersions = []string{"1.6", "1.7.35", "2.2.1", "2.4.2"}

// defaultRuncs are the runc binaries tested when TETHER_E2E_RUNC is unset:
// Debian's (1.1.5) and the current release scripts/install-deps.sh builds.
func defaultRuncs() []string {
	return []string{"/usr/sbin/runc", filepath.Join(depsDir(), "runc-1.5.3", "bin", "runc")}
}

// depsDir is where scripts/install-deps.sh installs: $TETHER_DEPS or /opt/tether.
func depsDir() string {
	if d := os.Getenv("TETHER_DEPS"); d != "" {
		return d
	}
	return "/opt/tether"
}

// Set up by TestMain.
var (
	runtimeName    string // the runtime ctr asks for
	shimBinaryName string // containerd-shim-<name>-<version>
	shimBin        string // the shim binary the tests run directly
	shimDir        string // directory put first on containerd's PATH
	rootfsDir      string // busybox rootfs for ctr run --rootfs
	imageTar       string // OCI image layout tarball of the same rootfs
	pauseTar       string // the CRI sandbox image pauseImage: the same rootfs running sleep
	versions       []*cdVersion
	runcs          []*runcBin // the first is the one of the plain version subtests
	daemons        = map[string]*daemon{}
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests start containerd and containers and must run as root")
		return 1
	}
	tmp, err := os.MkdirTemp("", "tether-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if err := setup(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: setup:", err)
		return 1
	}
	// Clean up what an earlier run may have left behind before starting anything.
	globalCleanup()
	code := m.Run()
	stopDocker() // before its containerd
	for _, d := range daemons {
		if err := d.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: stopping containerd %s: %v\n", d.v.name, err)
		}
	}
	globalCleanup()
	return code
}

func setup(tmp string) error {
	runtimeName = os.Getenv(envRuntime)
	if runtimeName == "" {
		runtimeName = tetherRuntime
	}
	var err error
	if shimBinaryName, err = binaryName(runtimeName); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "e2e: runtime %s (shim binary %s)\n", runtimeName, shimBinaryName)

	for _, tool := range []string{"runc", "busybox", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing (run scripts/install-deps.sh): %w", tool, err)
		}
	}

	list := defaultVersions
	if s := strings.TrimSpace(os.Getenv(envVersions)); s != "" {
		list = nil
		for _, v := range strings.Split(s, ",") {
			if v = strings.TrimSpace(v); v != "" {
				list = append(list, v)
			}
		}
	}
	for _, name := range list {
		v, err := lookupVersion(name)
		if err != nil {
			return err
		}
		versions = append(versions, v)
	}

	runcList := defaultRuncs()
	if s := strings.TrimSpace(os.Getenv(envRunc)); s != "" {
		runcList = nil
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				runcList = append(runcList, p)
			}
		}
	}
	for i, p := range runcList {
		r, err := newRuncBin(filepath.Join(tmp, fmt.Sprintf("runc-%d", i)), p, i == 0)
		if err != nil {
			return err
		}
		for _, o := range runcs {
			if o.tag == r.tag {
				r.tag += fmt.Sprint(i)
				r.suffix += fmt.Sprintf("-%d", i)
			}
		}
		runcs = append(runcs, r)
		fmt.Fprintf(os.Stderr, "e2e: runc %s (%s)%s\n", r.version, r.path, map[bool]string{true: ", the default", false: ", subtests named <version>" + r.suffix}[i == 0])
	}

	shimDir = filepath.Join(tmp, "bin")
	if err := os.MkdirAll(shimDir, 0o755); err != nil {
		return err
	}
	switch {
	case os.Getenv(envShimBin) != "":
		src, err := filepath.Abs(os.Getenv(envShimBin))
		if err != nil {
			return err
		}
		if st, err := os.Stat(src); err != nil || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s=%s is not an executable file (%v)", envShimBin, src, err)
		}
		shimBin = filepath.Join(shimDir, shimBinaryName)
		if err := testkit.CopyFile(src, shimBin, 0o755); err != nil {
			return err
		}
	case runtimeName == tetherRuntime:
		root, err := testkit.RepoRoot()
		if err != nil {
			return err
		}
		shimBin = filepath.Join(shimDir, shimBinaryName)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", shimBin, "./cmd/containerd-shim-tether-v2")
		cmd.Dir = root
		// Built as `make build` builds it: static, no cgo (see docs/performance.md).
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		fmt.Fprintf(os.Stderr, "e2e: building the shim in %s\n", root)
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/containerd-shim-tether-v2: %w", err)
		}
	default:
		// Validating the harness against another runtime: use its installed shim.
		p, err := exec.LookPath(shimBinaryName)
		if err != nil {
			return fmt.Errorf("runtime %s: %w", runtimeName, err)
		}
		shimBin = p
		shimDir = filepath.Dir(p)
	}
	fmt.Fprintf(os.Stderr, "e2e: shim binary %s\n", shimBin)

	rootfsDir = filepath.Join(tmp, "rootfs")
	if err := testkit.BuildRootfs(rootfsDir, "tether-e2e"); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	imageTar = filepath.Join(tmp, "busybox-oci.tar")
	if err := testkit.BuildImageTar(rootfsDir, imageTar, imageName, imageMarker, "tether e2e: busybox rootfs"); err != nil {
		return fmt.Errorf("OCI image: %w", err)
	}
	pauseTar = filepath.Join(tmp, "pause-oci.tar")
	// Killed by the CRI plugin with SIGKILL when the pod stops, like the real pause.
	if err := testkit.BuildImageTarCmd(rootfsDir, pauseTar, pauseImage, "tether e2e pause image", "tether e2e: busybox sleep as pause",
		[]string{"/bin/sleep", "2147483647"}); err != nil {
		return fmt.Errorf("pause image: %w", err)
	}
	return nil
}

// binaryName maps a runtime name io.containerd.<name>.<version> to the shim binary name.
func binaryName(runtime string) (string, error) {
	parts := strings.Split(runtime, ".")
	if len(parts) < 2 || parts[0] == "" {
		return "", fmt.Errorf("invalid runtime name %q", runtime)
	}
	return fmt.Sprintf("containerd-shim-%s-%s", parts[len(parts)-2], parts[len(parts)-1]), nil
}

// isTether tells whether the runtime under test is Tether.
func isTether() bool { return runtimeName == tetherRuntime }
