package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// clientVersion is one containerd release whose integration/client suite runs
// against the containerd of the same release.
type clientVersion struct {
	Name       string // as in the table: 1.6, 2.4.2
	Release    string // the suite's release: 1.6.20, 2.4.2
	Major      int
	BinDir     string // holds containerd (and the stock shim)
	StockShim  string // the stock containerd-shim-runc-v2 of the release
	TestBinary string // go test -c of integration/client (scripts/build-suites.sh)
	SrcDir     string // the suite's package directory (its working directory)
	ToolsDir   string // more binaries the suite runs (runc-fp), if any
}

// shortClientTests is the `make test` subset of the client suite: tasks,
// exec, stdio, tty, kill, OOM score, runtime options, restart, and every
// test Tether once failed. Not in it: the 100 s large-output exec test, and
// TestContainerPids, which races the container's shell (README).
const shortClientTests = "^(TestContainerList|TestContainerStart|TestContainerOutput|TestContainerExec|TestContainerLargeExecArgs|TestContainerCloseIO|TestContainerAttach|TestContainerAttachProcess|TestContainerKill|TestContainerNoBinaryExists|TestContainerExecNoBinaryExists|TestContainerPTY|TestContainerUpdate|TestContainerHostname|TestContainerNoSTDIN|TestShimOOMScore|TestContainerRuntimeOptionsv2|TestKillContainerDeletedByRunc|TestContainerKillAll|TestContainerKillInitPidHost|TestContainerKillInitKillsChildWhenNotHostPid|TestTaskResize|TestContainerExitedAtSet|TestDeleteContainerExecCreated|TestContainerMetrics|TestContainerUserID|TestProcessForceDelete|TestContainerWait|TestWaitStoppedTask|TestWaitStoppedProcess|TestDaemonRestart|TestIssue9103|TestIssue10589|TestBindLowPortNonRoot|TestBindLowPortNonOpt)$"

// runClient runs one version's client suite with runtime (a runtime type),
// its log in work. runRe selects tests (-test.run) unless empty. The test
// process, its containerd and the shims run in a private mount namespace with
// a tmpfs on /run and a directory of work on /var/lib: containerd 2 recreates
// /run/nri/nri.sock at start, the runtime's state under
// /run/containerd/runc/<namespace> is not shared with the host's
// containerds, and the suite's fixed --root and --state
// (/var/lib/containerd-test, /run/containerd-test) are its own. They also run in a pid namespace of their own:
// the kill tests look for leftover "sleep 1" processes in `ps ax`, which must
// not see other work on the machine, and a container "in the host's pid
// namespace" shares the suite's.
// runBin is where, in the client suite's private /run, Tether's shim is.
const runBin = "/run/tether-suites-bin"

func runClient(ctx context.Context, log *slog.Logger, v clientVersion, runtime, shimDir string, reg *Registry, busyboxDigest, work, runRe string, timeout time.Duration, label string) (Counts, error) {
	for _, p := range []string{v.TestBinary, filepath.Join(v.BinDir, "containerd"), v.StockShim} {
		if _, err := os.Stat(p); err != nil {
			return Counts{}, fmt.Errorf("client suite %s: %w (make deps builds it)", v.Name, err)
		}
	}
	tag := strings.NewReplacer(".", "_", "io_containerd_", "").Replace(v.Name + "-" + runtime)
	logPath := filepath.Join(work, "client-"+tag+label+".log")
	// -no-criu: CRIU cannot checkpoint here (README); the suite then skips
	// its checkpoint tests, which would otherwise leave their containers
	// running and fail the tests that look for leftover processes.
	args := []string{"-test.root", "-test.v", "-test.count=1", "-test.timeout", timeout.String(), "-no-criu"}
	if runRe != "" {
		args = append(args, "-test.run", runRe)
	}
	if v.Major >= 2 {
		// 2.x reads its image names from a list; the by-digest one is the
		// stand-in busybox (the listed digest names content no registry here has).
		list := filepath.Join(work, "image-list-"+v.Name+".toml")
		content := fmt.Sprintf("BusyBoxByDigest = %q\n", "stand-in.invalid/containerd/busybox@"+busyboxDigest)
		if err := os.WriteFile(list, []byte(content), 0o644); err != nil {
			return Counts{}, err
		}
		args = append(args, "-image-list", list)
	}
	varLib := filepath.Join(work, "var-lib-"+tag+label)
	if err := os.RemoveAll(varLib); err != nil {
		return Counts{}, err
	}
	if err := os.MkdirAll(varLib, 0o755); err != nil {
		return Counts{}, err
	}
	defer os.RemoveAll(varLib)
	// The stock shim of this release must be the one found: its directory
	// comes first (1.6's is Debian's /usr/bin), then Tether's.
	// Tether's shim is copied into the private /run (runBin): the clone,
	// and so shimDir, may be under /tmp, which the private /tmp hides.
	path := filepath.Dir(v.StockShim) + ":" + v.BinDir + ":" + runBin + ":" + os.Getenv("PATH")
	if v.ToolsDir != "" {
		path += ":" + v.ToolsDir
	}
	env := append(filterEnv(os.Environ(), "PATH", "TEST_RUNTIME", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"),
		"PATH="+path, "TEST_RUNTIME="+runtime, "TETHER_SUITES_VAR_LIB="+varLib,
		"TETHER_SUITES_SHIM="+filepath.Join(shimDir, "containerd-shim-tether-v2"))
	env = append(env, reg.Env()...)
	// /tmp is private too (TestKillContainerDeletedByRunc keeps runc's
	// state in /tmp/runc-test); the CA file moves to /run first.
	script := `set -e; mount -t tmpfs -o mode=0755 tether-suites-run /run; mount --bind "$TETHER_SUITES_VAR_LIB" /var/lib
cp "$SSL_CERT_FILE" /run/tether-suites-ca.pem; export SSL_CERT_FILE=/run/tether-suites-ca.pem
mkdir -p ` + runBin + `; cp "$TETHER_SUITES_SHIM" ` + runBin + `/
mount -t tmpfs -o mode=1777 tether-suites-tmp /tmp; unset TETHER_SUITES_VAR_LIB TETHER_SUITES_SHIM; exec "$0" "$@"`
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", script, v.TestBinary}, args...)...)
	cmd.Dir = v.SrcDir
	cmd.Env = env
	start := time.Now()
	log.Info("client suite", "version", v.Name, "runtime", runtime, "run", runRe, "log", logPath)
	rctx, cancel := context.WithTimeout(ctx, timeout+2*time.Minute)
	defer cancel()
	err := runLogged(rctx, cmd, logPath)
	f, ferr := os.Open(logPath)
	if ferr != nil {
		return Counts{}, ferr
	}
	defer f.Close()
	c := parseGoTest(f)
	if len(c.Pass)+len(c.Fail)+len(c.Skip) == 0 {
		if c.Aborted == "" {
			c.Aborted = fmt.Sprintf("no test ran (exit: %v); see %s", err, logPath)
		}
	}
	log.Info("client suite done", "version", v.Name, "runtime", runtime, "counts", c.String(), "took", since(start))
	return c, nil
}

// filterEnv drops the named variables from env.
func filterEnv(env []string, drop ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, d := range drop {
			if strings.HasPrefix(kv, d+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}
