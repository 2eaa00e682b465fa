package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tether-shim/tether/testkit"
)

const (
	criToolsVersion   = "1.34.0"
	cniPluginsVersion = "1.9.1"
	// criSubnet is the pods' subnet on the critest bridge (criBridge).
	criSubnet = "10.231.0.0/24"
	criBridge = "tether-cri0"
)

// shortCritest is the `make test` subset of critest: pod sandboxes, container
// lifecycle, exec (sync and streaming), attach, logs, OOM, and the pid and
// ipc namespace options (host, pod and container pid namespaces).
const shortCritest = `PodSandbox runtime should support basic operations|Container runtime should support basic operations on container runtime should support (creating|starting|stopping|removing [a-z]+) container|should support execSync \[|Container runtime should support log|Streaming runtime should support streaming interfaces runtime should support (attach|exec)|NamespaceOption runtime should support (HostPID|PodPID|ContainerPID|HostIpc)|Container OOM`

// runCritest runs critest against a private containerd of v with runtime as
// its CRI's default runtime, pulling through the stand-in registry, with
// pods on a CNI bridge (criBridge). focus selects specs (-ginkgo.focus)
// unless empty; label is added to the log's name.
func runCritest(ctx context.Context, log *slog.Logger, v version, runtime, shimBin, deps string, reg *Registry, work, focus string, timeout time.Duration, label string) (Counts, error) {
	critest := filepath.Join(deps, "cri-tools-"+criToolsVersion, "bin", "critest")
	cniBin := filepath.Join(deps, "cni-plugins-"+cniPluginsVersion, "bin")
	for _, p := range []string{critest, filepath.Join(cniBin, "bridge"), filepath.Join(cniBin, "host-local"), filepath.Join(cniBin, "loopback"), filepath.Join(cniBin, "portmap"), filepath.Join(v.client.BinDir, "containerd"), v.client.StockShim} {
		if _, err := os.Stat(p); err != nil {
			return Counts{}, fmt.Errorf("critest on %s: %w (make deps builds it)", v.client.Name, err)
		}
	}
	shim := "tether"
	if runtime != tetherRuntime {
		shim = "stock"
	}
	// Short names: the socket path must stay under 108 bytes. A rerun
	// (label) gets its own directory, so that the first run's containerd
	// log, with the shim's, is kept.
	dir := filepath.Join(work, "cri-"+v.client.Name+"-"+shim+label)
	testkit.RemoveBases(filepath.Join(dir, "state"), filepath.Join(dir, "root"))
	if err := os.RemoveAll(dir); err != nil {
		return Counts{}, err
	}
	confDir := filepath.Join(dir, "net.d")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return Counts{}, err
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "tether-critest", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
  {"type": "portmap", "backend": "nftables", "capabilities": {"portMappings": true}}
]}
`, criBridge, criSubnet, filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(confDir, "10-tether-critest.conflist"), []byte(conf), 0o644); err != nil {
		return Counts{}, err
	}
	var cri string
	if v.client.Major >= 2 {
		cri = fmt.Sprintf(`[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = [%q]
  conf_dir = %q
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "critest"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.critest]
  runtime_type = %q
`, cniBin, confDir, runtime)
	} else {
		cri = fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %q
  conf_dir = %q
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "critest"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.critest]
  runtime_type = %q
`, cniBin, confDir, runtime)
	}
	d := &testkit.Daemon{
		Name: "critest " + v.client.Name + " " + shim, Major: v.client.Major,
		Containerd: filepath.Join(v.client.BinDir, "containerd"), Ctr: filepath.Join(v.client.BinDir, "ctr"),
		Root: filepath.Join(dir, "root"), State: filepath.Join(dir, "state"),
		Sock: filepath.Join(dir, "c.sock"), Config: filepath.Join(dir, "config.toml"),
		LogPath: filepath.Join(dir, "containerd.log"), CRIConfig: cri,
	}
	if err := d.WriteConfig("info"); err != nil {
		return Counts{}, err
	}
	// The release's stock shim first, then Tether's directory; the proxy and
	// CA for the CRI's pulls.
	path := filepath.Dir(v.client.StockShim) + ":" + v.client.BinDir + ":" + filepath.Dir(shimBin) + ":" + os.Getenv("PATH")
	env := append(filterEnv(os.Environ(), "PATH", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"), "PATH="+path)
	env = append(env, reg.Env()...)
	if err := d.Start(ctx, testkit.StartOptions{Env: env, Poll: 200 * time.Millisecond, TailLines: 40}); err != nil {
		return Counts{}, err
	}
	defer func() {
		if err := d.Stop(30 * time.Second); err != nil {
			log.Warn("critest containerd stop", "err", err)
		}
		d.RemoveLeftovers(func(ps []testkit.Proc) {
			for _, p := range ps {
				_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			}
		})
		testkit.RemoveBases(d.State, d.Root)
		_ = exec.Command("ip", "link", "del", criBridge).Run()
	}()

	logPath := filepath.Join(work, "critest-"+strings.ReplaceAll(v.client.Name, ".", "_")+"-"+shim+label+".log")
	args := []string{
		"-runtime-endpoint", "unix://" + d.Sock, "-image-endpoint", "unix://" + d.Sock,
		"-ginkgo.no-color", "-ginkgo.v", "-test.timeout", timeout.String(),
	}
	if focus != "" {
		args = append(args, "-ginkgo.focus", focus)
	}
	cmd := exec.Command(critest, args...)
	cmd.Dir = dir
	cmd.Env = env
	start := time.Now()
	log.Info("critest", "version", v.client.Name, "runtime", runtime, "focus", focus, "log", logPath)
	rctx, cancel := context.WithTimeout(ctx, timeout+2*time.Minute)
	defer cancel()
	err := runLogged(rctx, cmd, logPath)
	f, ferr := os.Open(logPath)
	if ferr != nil {
		return Counts{}, ferr
	}
	defer f.Close()
	c := parseGinkgo(f)
	if c.Aborted != "" {
		c.Aborted += fmt.Sprintf(" (exit: %v; see %s)", err, logPath)
	}
	log.Info("critest done", "version", v.client.Name, "runtime", runtime, "counts", c.String(), "took", since(start))
	return c, nil
}
