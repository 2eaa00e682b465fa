package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// The CRI tests drive pods through containerd's CRI plugin with crictl, on a
// containerd per version of its own (the other tests' daemons keep CRI off
// and start faster). Its CRI config is testdata/cri-config-v2.toml (1.x) or
// testdata/cri-config-v3.toml (2.x), the snippets the README shows, plus two
// runtimes with options that only TestCRIRuntimeOptions uses.

const (
	criNamespace = "k8s.io" // the containerd namespace of the CRI plugin
	// pauseImage is the sandbox image the CRI config pins: busybox's sleep.
	pauseImage = "localhost/tether/pause:e2e"
	// criRuntime is the runtime handler of Tether in the CRI config.
	criRuntime = "tether"
	// runc153 is the runc release install-deps.sh builds.
	runc153 = "runc-1.5.3"
)

// crictlPath is the crictl scripts/install-deps.sh builds.
func crictlPath() string { return filepath.Join(depsDir(), "cri-tools-1.34.0", "bin", "crictl") }

// criConfigFile is the testdata file with the CRI config for containerd's major version.
func criConfigFile(major int) string {
	if major >= 2 {
		return filepath.Join("testdata", "cri-config-v3.toml")
	}
	return filepath.Join("testdata", "cri-config-v2.toml")
}

// criDaemon is a containerd with the CRI plugin on.
type criDaemon struct {
	*daemon
	crictlConfig string // crictl's config file: the endpoints
	optsDir      string // the runc wrapper and config file of TestCRIRuntimeOptions
	ready        bool   // the images are imported and CRI lists them
}

// criDaemons are the CRI daemons started so far, by version.
var criDaemons = map[string]*criDaemon{}

// runtimeTable is the TOML table name of CRI runtime name for containerd's major version.
func runtimeTable(major int, name string) string {
	if major >= 2 {
		return `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.` + name
	}
	return `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.` + name
}

// optionsRuntimes is the CRI config of the two runtimes with options:
// tether-path names a config file (runtimeoptions.v1.Options config_path,
// every version), tether-body has BinaryName in the options table itself
// (sent as config_body by 1.7 and 2.x; 1.6 drops keys it does not know).
func optionsRuntimes(major int, configPath, binary string) string {
	var b strings.Builder
	for _, r := range []struct{ name, kv string }{
		{"tether-path", fmt.Sprintf("ConfigPath = %q", configPath)},
		{"tether-body", fmt.Sprintf("BinaryName = %q", binary)},
	} {
		fmt.Fprintf(&b, "\n[%s]\n  runtime_type = %q\n\n[%s.options]\n  %s\n", runtimeTable(major, r.name), tetherRuntime, runtimeTable(major, r.name), r.kv)
	}
	return b.String()
}

// getCRIDaemon returns the running CRI containerd of version v (default
// runc), with the pause and busybox images imported into k8s.io and listed
// by CRI, starting it on first use.
func getCRIDaemon(t *testing.T, v *cdVersion) *criDaemon {
	t.Helper()
	if st, err := os.Stat(crictlPath()); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("crictl %s is missing (run scripts/install-deps.sh): %v", crictlPath(), err)
	}
	name, tag := "cri-"+v.name, "cri"+v.tag
	cd := criDaemons[v.name]
	if cd == nil {
		snippet, err := os.ReadFile(criConfigFile(v.major))
		if err != nil {
			t.Fatal(err)
		}
		// To check the tests against another shim (TETHER_E2E_RUNTIME), the
		// runtime named tether gets that shim's runtime type.
		snippet = []byte(strings.ReplaceAll(string(snippet), fmt.Sprintf("runtime_type = %q", tetherRuntime), fmt.Sprintf("runtime_type = %q", runtimeName)))
		optsDir := filepath.Join(libBase, tag+"-opts")
		d := &daemon{
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
				CRIConfig: string(snippet) + optionsRuntimes(v.major,
					filepath.Join(optsDir, "tether-runtime.toml"), filepath.Join(optsDir, "runc-wrapper")),
			},
			v:       v,
			r:       runcs[0],
			sockets: map[string][]string{},
		}
		cd = &criDaemon{daemon: d, crictlConfig: filepath.Join(libBase, tag+"-crictl.yaml"), optsDir: optsDir}
		criDaemons[v.name] = cd
		daemons[name] = d // stopped by TestMain
		if err := cd.prepare(); err != nil {
			d.broken = err
		}
	}
	if cd.broken != nil {
		t.Fatalf("containerd %s: %v", name, cd.broken)
	}
	if !cd.Running() {
		t.Fatalf("containerd %s is not running (log: %s)\n%s", name, cd.LogPath, cd.LogTail(0, 60))
	}
	if !cd.ready {
		cd.importImages(t)
		cd.ready = true
	}
	return cd
}

// prepare writes crictl's config and the files of the options runtimes, and starts containerd.
func (cd *criDaemon) prepare() error {
	yaml := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\ndebug: false\n", cd.Sock, cd.Sock)
	if err := os.MkdirAll(libBase, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(cd.crictlConfig, []byte(yaml), 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(cd.optsDir, 0o755); err != nil {
		return err
	}
	return cd.start(true)
}

// importImages imports the pause and busybox images into k8s.io with ctr and
// waits until the CRI plugin lists both (it learns of them from events).
func (cd *criDaemon) importImages(t *testing.T) {
	t.Helper()
	for _, tar := range []string{pauseTar, imageTar} {
		cd.mustCtr(t, criNamespace, "image", "import", tar)
	}
	waitFor(t, 60*time.Second, "crictl images to list the imported images", func() (bool, string) {
		r := cd.runCrictl(t, "images")
		ok := r.code == 0 && strings.Contains(r.stdout, "localhost/tether/pause") && strings.Contains(r.stdout, "docker.io/tether/busybox")
		return ok, r.String()
	})
}

// runCrictl runs crictl against the daemon with a 2 minute deadline.
func (cd *criDaemon) runCrictl(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return run(ctx, crictlPath(), append([]string{"--config", cd.crictlConfig}, args...)...)
}

// crictl runs crictl and logs what it did.
func (cd *criDaemon) crictl(t *testing.T, args ...string) result {
	t.Helper()
	r := cd.runCrictl(t, args...)
	t.Logf("crictl %s -> exit %d%s%s", strings.Join(args, " "), r.code, quoteIf(" stdout=", r.stdout), quoteIf(" stderr=", criStderr(r.stderr)))
	return r
}

// mustCrictl is crictl that fails the test unless crictl exits 0; it returns stdout.
func (cd *criDaemon) mustCrictl(t *testing.T, args ...string) string {
	t.Helper()
	r := cd.crictl(t, args...)
	if r.code != 0 {
		t.Fatalf("crictl %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// criStderr drops crictl's warnings about its default config files.
func criStderr(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" && !strings.Contains(l, "does not exist, trying next") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// crictlJSON runs crictl args (which print JSON) and decodes the output.
func (cd *criDaemon) crictlJSON(t *testing.T, args ...string) map[string]any {
	t.Helper()
	out := cd.mustCrictl(t, args...)
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("crictl %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
	return m
}

// jsonPath follows keys through nested JSON objects; nil if one is missing.
func jsonPath(m any, keys ...string) any {
	for _, k := range keys {
		o, ok := m.(map[string]any)
		if !ok {
			return nil
		}
		m = o[k]
	}
	return m
}

// jsonUint reads a protobuf JSON uint64 (a string) or number; -1 if neither.
func jsonUint(v any) int64 {
	switch x := v.(type) {
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil {
			return -1
		}
		return n
	case float64:
		return int64(x)
	}
	return -1
}

// criPod is a pod config the test writes: host network, logs in a temp dir,
// the cgroup parent /e2e-cri-<tag> (removed by globalCleanup).
type criPod struct {
	name, logDir, cgroupParent, file string
}

func (cd *criDaemon) newPod(t *testing.T, name string) criPod {
	t.Helper()
	dir := t.TempDir()
	p := criPod{
		name:         name,
		logDir:       filepath.Join(dir, "logs"),
		cgroupParent: "/e2e-cri-" + cd.v.tag,
		file:         filepath.Join(dir, "pod.json"),
	}
	writeJSON(t, p.file, map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "e2e", "uid": name + "-uid", "attempt": 0},
		"log_directory": p.logDir,
		"linux": map[string]any{
			"cgroup_parent": p.cgroupParent,
			// NODE: the host's network namespace, so no CNI is needed.
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}},
		},
	})
	return p
}

// containerConfig writes the config of container name running command on
// busybox, logging to <log_directory>/<name>.log.
func containerConfig(t *testing.T, name string, command ...string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name+".json")
	writeJSON(t, file, map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": imageName},
		"command":  command,
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
	return file
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// runPod runs the pod with runtime handler runtime and returns its id; the
// pod is removed in cleanup if the test did not.
func (cd *criDaemon) runPod(t *testing.T, p criPod, runtime string) string {
	t.Helper()
	id := strings.TrimSpace(cd.mustCrictl(t, "runp", "--runtime", runtime, p.file))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
		t.Fatalf("crictl runp printed %q, want a pod id", id)
	}
	t.Cleanup(func() {
		if r := cd.runCrictl(t, "inspectp", id); r.code == 0 {
			cd.crictl(t, "stopp", id)
			cd.crictl(t, "rmp", "-f", id)
		}
	})
	return id
}

// createStart creates container name in pod and starts it; it returns its id.
func (cd *criDaemon) createStart(t *testing.T, pod string, p criPod, name string, command ...string) string {
	t.Helper()
	cfg := containerConfig(t, name, command...)
	id := strings.TrimSpace(cd.mustCrictl(t, "create", pod, cfg, p.file))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
		t.Fatalf("crictl create printed %q, want a container id", id)
	}
	cd.mustCrictl(t, "start", id)
	cd.waitContainerState(t, id, "CONTAINER_RUNNING")
	return id
}

// containerStatus is crictl inspect's status of container id.
func (cd *criDaemon) containerStatus(t *testing.T, id string) map[string]any {
	t.Helper()
	st, _ := jsonPath(cd.crictlJSON(t, "inspect", "-o", "json", id), "status").(map[string]any)
	if st == nil {
		t.Fatalf("crictl inspect %s: no status", id)
	}
	return st
}

// waitContainerState waits until crictl inspect shows container id in state.
func (cd *criDaemon) waitContainerState(t *testing.T, id, state string) map[string]any {
	t.Helper()
	var st map[string]any
	waitFor(t, 60*time.Second, fmt.Sprintf("container %.12s %s", id, state), func() (bool, string) {
		r := cd.runCrictl(t, "inspect", "-o", "json", id)
		var m map[string]any
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &m) != nil {
			return false, r.String()
		}
		st, _ = jsonPath(m, "status").(map[string]any)
		return st != nil && st["state"] == state, fmt.Sprintf("status %v", st)
	})
	return st
}

// podShims lists the Tether shim processes of this daemon.
func (cd *criDaemon) podShims() []testkit.Proc {
	var out []testkit.Proc
	for _, p := range testkit.ShimProcesses(cd.Sock) {
		if len(p.Args) > 0 && filepath.Base(p.Args[0]) == shimBinaryName {
			out = append(out, p)
		}
	}
	return out
}

// bootstrapOf reads what containerd 2.x wrote into the bundle of
// container id: bootstrap.json (how to reach its shim: the answer of the
// shim's start, or the sandbox's if start was skipped) and the file
// sandbox, which it writes only when it skips the shim's start because the
// sandbox's shim answered version 3 (it then connects the container to the
// sandbox's shim directly). 1.x writes neither.
func (cd *criDaemon) bootstrapOf(t *testing.T, id string) (version int, address, sandbox string, hasBootstrap bool) {
	t.Helper()
	if data, err := os.ReadFile(filepath.Join(cd.bundle(criNamespace, id), "sandbox")); err == nil {
		sandbox = string(data)
	} else if !os.IsNotExist(err) {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(cd.bundle(criNamespace, id), "bootstrap.json"))
	if os.IsNotExist(err) {
		return 0, "", sandbox, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		Version  int    `json:"version"`
		Address  string `json:"address"`
		Protocol string `json:"protocol"`
	}
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatalf("bootstrap.json of %.12s: %v: %q", id, err, data)
	}
	return b.Version, b.Address, sandbox, true
}

// podShimOf is shimOf, or, if the bundle of id has no address file (the
// stock shim of 2.3+ writes none), the shim at the address of its
// bootstrap.json.
func (cd *criDaemon) podShimOf(t *testing.T, id string) shimInfo {
	t.Helper()
	if _, err := os.Stat(filepath.Join(cd.bundle(criNamespace, id), "address")); err == nil || isTether() {
		return cd.shimOf(t, criNamespace, id)
	}
	_, address, _, ok := cd.bootstrapOf(t, id)
	path, isUnix := strings.CutPrefix(address, "unix://")
	if !ok || !isUnix {
		t.Fatalf("container %.12s: no address file and bootstrap.json address %q", id, address)
	}
	cd.sockets[criNamespace] = append(cd.sockets[criNamespace], path)
	var pids []int
	waitFor(t, 10*time.Second, "a single process listening on "+path, func() (bool, string) {
		pids = listeners(path)
		return len(pids) == 1, fmt.Sprintf("listeners %v", pids)
	})
	return shimInfo{address: address, path: path, pid: pids[0]}
}

// forEachCRIVersion runs f as a subtest per containerd version against its CRI daemon.
func forEachCRIVersion(t *testing.T, f func(t *testing.T, cd *criDaemon)) {
	t.Helper()
	if len(versions) == 0 {
		t.Fatal("no containerd versions selected")
	}
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			cd := getCRIDaemon(t, v)
			off := cd.LogSize()
			t.Cleanup(func() {
				if t.Failed() {
					t.Log(cd.LogTail(off, 200))
				}
				// What a failed test may have left: pods (each test removes
				// its own in cleanup too), then stale shim sockets.
				if cd.Running() {
					cd.runCrictl(t, "rmp", "--all", "--force")
				}
				for _, path := range cd.sockets[criNamespace] {
					for deadline := time.Now().Add(5 * time.Second); len(listeners(path)) > 0 && time.Now().Before(deadline); {
						time.Sleep(50 * time.Millisecond)
					}
					removeStaleSocket(path)
				}
				delete(cd.sockets, criNamespace)
			})
			f(t, cd)
		})
	}
}

// A pod through CRI: runp with the tether handler, two containers created,
// started, exec'd into (plain, sync and with a terminal), their logs, stats,
// an in-place memory resize, stop with a grace period (a container that
// handles SIGTERM exits 0 within it, one that ignores it is SIGKILLed after
// it), removal. One shim serves the pod, and it is gone after rmp with its
// socket, bundles, mounts and processes.
func TestCRIPod(t *testing.T) {
	forEachCRIVersion(t, func(t *testing.T, cd *criDaemon) {
		if ver := cd.mustCrictl(t, "version"); !regexp.MustCompile(`(?m)^RuntimeName:\s+containerd$`).MatchString(ver) {
			t.Fatalf("crictl version: %q, want RuntimeName containerd", ver)
		}
		socketsBefore := socketDirEntries()
		p := cd.newPod(t, "tether-pod-"+cd.v.tag)
		pod := cd.runPod(t, p, criRuntime)
		insp := cd.crictlJSON(t, "inspectp", "-o", "json", pod)
		if st := jsonPath(insp, "status", "state"); st != "SANDBOX_READY" {
			t.Fatalf("pod state %v, want SANDBOX_READY", st)
		}
		// Where it shows depends on the version: status (CRI's field), info, or info's metadata.
		h := jsonPath(insp, "status", "runtimeHandler")
		for _, alt := range [][]string{{"info", "runtimeHandler"}, {"info", "sandboxMetadata", "RuntimeHandler"}} {
			if h == nil || h == "" {
				h = jsonPath(insp, alt...)
			}
		}
		if h != criRuntime {
			t.Errorf("pod runtime handler %v, want %s", h, criRuntime)
		}
		if rt := jsonPath(insp, "info", "runtimeType"); rt != runtimeName {
			t.Errorf("pod runtime type %v, want %s", rt, runtimeName)
		}
		sb := cd.podShimOf(t, pod)

		term := cd.createStart(t, pod, p, "term", "/bin/sh", "-c",
			`echo hello-from-term; echo to-stderr >&2; trap 'echo got-TERM; exit 0' TERM; while :; do sleep 1; done`)
		stubborn := cd.createStart(t, pod, p, "stubborn", "/bin/sh", "-c",
			`trap '' TERM; echo stubborn-ready; while :; do sleep 1; done`)

		// One shim process serves the sandbox and both containers.
		shims := cd.podShims()
		if len(shims) != 1 || shims[0].Pid != sb.pid {
			t.Fatalf("shim processes of this containerd: %v; want only the pod's, %d", shims, sb.pid)
		}
		for _, id := range []string{term, stubborn} {
			version, address, sandbox, hasBootstrap := cd.bootstrapOf(t, id)
			t.Logf("container %.12s: bootstrap.json %v (version %d, address %s), sandbox file %q", id, hasBootstrap, version, address, sandbox)
			switch {
			case cd.v.major == 1:
				if hasBootstrap || sandbox != "" {
					t.Errorf("container %.12s: containerd %s wrote bootstrap.json (%v) or sandbox (%q)", id, cd.v.name, hasBootstrap, sandbox)
				}
			case isTether():
				// Tether answered the sandbox's start with version 3:
				// containerd skips start and uses the sandbox's shim.
				if sandbox != pod || version != 3 || address != sb.address {
					t.Errorf("container %.12s: sandbox file %q, bootstrap.json version %d address %q; want %s, 3 and the sandbox shim's %s (start skipped)",
						id, sandbox, version, address, pod, sb.address)
				}
			case version >= 3:
				if sandbox != pod {
					t.Errorf("container %.12s: bootstrap.json version %d but sandbox file %q, want %s", id, version, sandbox, pod)
				}
			default:
				if sandbox != "" {
					t.Errorf("container %.12s: bootstrap.json version %d (start was run) but sandbox file %q", id, version, sandbox)
				}
			}
			if sandbox == "" {
				// containerd ran `start`, which found the pod's shim by the
				// io.kubernetes.cri.sandbox-id annotation.
				if s := cd.podShimOf(t, id); s.pid != sb.pid || s.address != sb.address {
					t.Errorf("container %.12s: shim %d at %s; want the sandbox's, %d at %s", id, s.pid, s.address, sb.pid, sb.address)
				}
			}
		}

		// exec: output and exit code (crictl exits 1 and names the code).
		r := cd.crictl(t, "exec", term, "/bin/sh", "-c", "echo exec-out; exit 3")
		if r.code == 0 || r.stdout != "exec-out\n" || !strings.Contains(r.stderr, "exit code 3") {
			t.Errorf("crictl exec ... exit 3: %s; want stdout exec-out, a non-zero exit and 'exit code 3' on stderr", r)
		}
		if out := cd.mustCrictl(t, "exec", "--sync", term, "/bin/echo", "sync-out"); strings.TrimSpace(out) != "sync-out" {
			t.Errorf("crictl exec --sync: stdout %q, want sync-out", out)
		}
		// exec -it on a terminal: crictl needs its stdin to be one.
		tp := startBinOnPty(t, 33, 97, crictlPath(), []string{"--config", cd.crictlConfig, "exec", "-it", term, "/bin/sh"}, "crictl exec -it")
		tp.waitOutput(t, 60*time.Second, "the shell's prompt", 0, func(s string) bool { return strings.Contains(s, "# ") })
		mark := tp.mark()
		tp.send(t, "echo typed-$((6*7)); tty; stty size\r")
		tp.waitOutput(t, 30*time.Second, "the echoed command, its output, a tty and the outer size 33 97", mark, func(s string) bool {
			return strings.Contains(s, "echo typed-$((6*7))") && hasLine(s, "typed-42") && hasLine(s, "/dev/pts/0") && hasLine(s, "33 97")
		})
		tp.send(t, "exit 7\r")
		tp.waitOutput(t, 60*time.Second, "crictl to report exit code 7", 0, func(s string) bool { return strings.Contains(s, "exit code 7") })
		if code := tp.wait(t, 60*time.Second); code == 0 {
			t.Errorf("crictl exec -it of a shell that exits 7 exited 0")
		}

		// logs: crictl reads the CRI log file, which holds both streams in CRI format.
		cd.waitLog(t, p, "term", "stdout F hello-from-term")
		if out := cd.mustCrictl(t, "logs", term); !strings.Contains(out, "hello-from-term") {
			t.Errorf("crictl logs: %q, want hello-from-term", out)
		}
		cd.waitLog(t, p, "term", "stderr F to-stderr")

		// stats: non-zero memory and cpu.
		waitFor(t, 60*time.Second, "non-zero stats", func() (bool, string) {
			r := cd.runCrictl(t, "stats", "-o", "json", term)
			var m map[string]any
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &m) != nil {
				return false, r.String()
			}
			list, _ := m["stats"].([]any)
			if len(list) != 1 {
				return false, r.stdout
			}
			mem := jsonUint(jsonPath(list[0], "memory", "workingSetBytes", "value"))
			cpu := jsonUint(jsonPath(list[0], "cpu", "usageCoreNanoSeconds", "value"))
			return mem > 0 && cpu > 0, fmt.Sprintf("workingSetBytes %d usageCoreNanoSeconds %d: %s", mem, cpu, r.stdout)
		})

		// update: an in-place memory resize reaches the cgroup.
		limitFile := cd.cgroupFile(t, criNamespace, term, "memory", "memory.limit_in_bytes")
		cd.mustCrictl(t, "update", "--memory", "67108864", term)
		if got, err := readTrim(limitFile); err != nil || got != "67108864" {
			t.Errorf("%s after crictl update --memory 67108864: %q (err %v)", limitFile, got, err)
		}

		// stop with a grace period: TERM handled → exit 0 within it.
		cd.mustCrictl(t, "stop", "--timeout", "30", term)
		st := cd.waitContainerState(t, term, "CONTAINER_EXITED")
		if code := jsonUint(st["exitCode"]); code != 0 {
			t.Errorf("the container that handles SIGTERM: exit code %d, want 0 (status %v)", code, st)
		}
		cd.waitLog(t, p, "term", "stdout F got-TERM")
		// TERM ignored → SIGKILL once the grace period is over: 137, not 143.
		cd.mustCrictl(t, "stop", "--timeout", "2", stubborn)
		st = cd.waitContainerState(t, stubborn, "CONTAINER_EXITED")
		if code := jsonUint(st["exitCode"]); code != 137 {
			t.Errorf("the container that ignores SIGTERM: exit code %d, want 137 (SIGKILL after the grace period) (status %v)", code, st)
		}

		// removal
		cd.mustCrictl(t, "rm", term, stubborn)
		if out := cd.mustCrictl(t, "ps", "-a", "-q", "--pod", pod); strings.TrimSpace(out) != "" {
			t.Errorf("containers left in the pod after crictl rm: %q", out)
		}
		if sh := cd.podShims(); len(sh) != 1 {
			t.Errorf("after the containers' removal, shims %v; want the pod's alone", sh)
		}
		cd.mustCrictl(t, "stopp", pod)
		cd.mustCrictl(t, "rmp", pod)
		cd.assertPodGone(t, p, sb, socketsBefore, pod, term, stubborn)
	})
}

// waitLog waits until the CRI log file of container name holds a line ending in want.
func (cd *criDaemon) waitLog(t *testing.T, p criPod, name, want string) {
	t.Helper()
	path := filepath.Join(p.logDir, name+".log")
	// <RFC 3339 time> <stream> <P|F> <text>
	line := regexp.MustCompile(`^\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d) (stdout|stderr) [PF] `)
	waitFor(t, 30*time.Second, fmt.Sprintf("%q in %s", want, path), func() (bool, string) {
		data, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
			if !line.MatchString(l) {
				return false, fmt.Sprintf("a line not in CRI log format: %q", l)
			}
			// A terminal's lines end in \r\n.
			if strings.HasSuffix(strings.TrimSuffix(l, "\r"), " "+want) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("content %q", data)
	})
}

// assertPodGone checks what rmp must leave: no shim (its process, its
// socket, any new socket in /run/containerd/s), no bundle of the pod or its
// containers, no mount below the daemon's state or snapshots, no process
// in the pod's cgroups, and CRI lists no pod or container.
func (cd *criDaemon) assertPodGone(t *testing.T, p criPod, sb shimInfo, socketsBefore map[string]bool, ids ...string) {
	t.Helper()
	cd.assertShimGone(t, criNamespace, sb, socketsBefore, ids...)
	waitFor(t, 10*time.Second, "no mount below the daemon's state", func() (bool, string) {
		ms := mountsMentioning(cd.State + "/")
		return len(ms) == 0, fmt.Sprintf("mounts: %v", ms)
	})
	if sh := cd.podShims(); len(sh) != 0 {
		t.Errorf("shim processes left: %v", sh)
	}
	for _, h := range v1Hierarchies() {
		dir := filepath.Join(h, p.cgroupParent)
		_ = filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				if pids, _ := cgroupPids(path); len(pids) > 0 {
					t.Errorf("processes left in %s: %v", path, pids)
				}
			}
			return nil
		})
	}
	if out := cd.mustCrictl(t, "pods", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("crictl pods after rmp: %q", out)
	}
	if out := cd.mustCrictl(t, "ps", "-a", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("crictl ps -a after rmp: %q", out)
	}
}

// Runtime options through CRI: tether-path's options name a Tether config
// file (config_path) and tether-body's options table holds BinaryName itself
// (config_body, sent by containerd 1.7 and 2.x; 1.6 keeps only config_path,
// so the body runtime is not configurable there and is not tested on it).
// Both name a wrapper of runc 1.5.3 that logs its arguments: the pod's
// sandbox and container must be created by it.
func TestCRIRuntimeOptions(t *testing.T) {
	forEachCRIVersion(t, func(t *testing.T, cd *criDaemon) {
		real := filepath.Join(depsDir(), runc153, "bin", "runc")
		if _, err := os.Stat(real); err != nil {
			t.Fatalf("%s (run scripts/install-deps.sh): %v", real, err)
		}
		wrapper := filepath.Join(cd.optsDir, "runc-wrapper")
		logFile := filepath.Join(cd.optsDir, "runc-wrapper.log")
		script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nexec %s \"$@\"\n", logFile, real)
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		conf := filepath.Join(cd.optsDir, "tether-runtime.toml")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf("binary_name = %q\n", wrapper)), 0o644); err != nil {
			t.Fatal(err)
		}
		handlers := []string{"tether-path", "tether-body"}
		if cd.v.name == "1.6" {
			handlers = handlers[:1]
		}
		for _, h := range handlers {
			t.Run(h, func(t *testing.T) {
				_ = os.Remove(logFile)
				socketsBefore := socketDirEntries()
				p := cd.newPod(t, "opts-"+h+"-"+cd.v.tag)
				pod := cd.runPod(t, p, h)
				sb := cd.podShimOf(t, pod)
				c := cd.createStart(t, pod, p, "c", "/bin/sh", "-c", "echo opts-ok; exec sleep 1000000")
				cd.waitLog(t, p, "c", "stdout F opts-ok")
				data, _ := os.ReadFile(logFile)
				for _, id := range []string{pod, c} {
					if !regexp.MustCompile(`(?m)\bcreate .*\b` + id + `$`).Match(data) {
						t.Errorf("%.12s was not created by %s (BinaryName of runtime %s); its log:\n%s", id, wrapper, h, data)
					}
				}
				cd.mustCrictl(t, "stop", "--timeout", "2", c)
				cd.mustCrictl(t, "rm", c)
				cd.mustCrictl(t, "stopp", pod)
				cd.mustCrictl(t, "rmp", pod)
				cd.assertPodGone(t, p, sb, socketsBefore, pod, c)
			})
		}
	})
}

// The README shows the CRI config the tests use, verbatim: the pod tests'
// here and the systemd driver's of the VM layer (test/e2e/vm, TestCRIPodSystemd).
func TestCRIConfigInReadme(t *testing.T) {
	root, err := testkit.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	files := []string{criConfigFile(1), criConfigFile(2)}
	for _, f := range []string{"cri-systemd-v2.toml", "cri-systemd-v3.toml", "tether-systemd.toml"} {
		files = append(files, filepath.Join("testdata", f))
	}
	for _, f := range files {
		snippet, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(readme), string(snippet)) {
			t.Errorf("README.md does not contain %s verbatim:\n%s", f, snippet)
		}
	}
}

// What a pod meets besides the happy path: a container that exits by itself
// (exit code and reason), one OOM-killed under its memory limit (reason
// OOMKilled), a containerd restart while the pod runs (CRI reconnects to
// the pod's shim and can still exec and stop), and stopp with containers
// still running (they are killed) followed by rmp: nothing is left.
func TestCRIPodEdges(t *testing.T) {
	forEachCRIVersion(t, func(t *testing.T, cd *criDaemon) {
		socketsBefore := socketDirEntries()
		p := cd.newPod(t, "edges-"+cd.v.tag)
		pod := cd.runPod(t, p, criRuntime)
		sb := cd.podShimOf(t, pod)

		// A container that exits 3 by itself.
		exiter := cd.createStartAny(t, pod, p, "exiter", nil, "/bin/sh", "-c", "echo bye; exit 3")
		st := cd.waitContainerState(t, exiter, "CONTAINER_EXITED")
		if code := jsonUint(st["exitCode"]); code != 3 || st["reason"] != "Error" {
			t.Errorf("a container that exits 3: exit code %d reason %v, want 3 and Error (status %v)", code, st["reason"], st)
		}

		// OOM: 32 MiB limit, a 256 MiB buffer.
		oom := cd.createStartAny(t, pod, p, "oom", map[string]any{"memory_limit_in_bytes": 32 << 20},
			"/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1")
		st = cd.waitContainerState(t, oom, "CONTAINER_EXITED")
		if code := jsonUint(st["exitCode"]); code != 137 || st["reason"] != "OOMKilled" {
			t.Errorf("an OOM-killed container: exit code %d reason %v, want 137 and OOMKilled (status %v)", code, st["reason"], st)
		}

		// A shell with stdin and a terminal, driven through crictl attach -it.
		sh := cd.createStartCfg(t, pod, p, "attached", map[string]any{"stdin": true, "tty": true}, nil, "/bin/sh")
		tp := startBinOnPty(t, 33, 97, crictlPath(), []string{"--config", cd.crictlConfig, "attach", "-it", sh}, "crictl attach -it")
		// The prompt was printed before attach; a newline asks for another.
		for deadline := time.Now().Add(60 * time.Second); !strings.Contains(tp.since(0), "# "); {
			tp.send(t, "\r")
			time.Sleep(time.Second)
			if time.Now().After(deadline) {
				t.Fatalf("no prompt through crictl attach -it within 60s; output %q", tp.since(0))
			}
		}
		mark := tp.mark()
		tp.send(t, "echo attached-$((40+2)); stty size\r")
		tp.waitOutput(t, 30*time.Second, "the attached shell to run the command on a 33x97 terminal", mark, func(s string) bool {
			return hasLine(s, "attached-42") && hasLine(s, "33 97")
		})
		tp.send(t, "exit 5\r")
		tp.wait(t, 60*time.Second)
		st = cd.waitContainerState(t, sh, "CONTAINER_EXITED")
		if code := jsonUint(st["exitCode"]); code != 5 {
			t.Errorf("the attached shell exited 5: exit code %d (status %v)", code, st)
		}
		cd.waitLog(t, p, "attached", "stdout F attached-42")

		// Two long-running containers, then a containerd restart.
		a := cd.createStart(t, pod, p, "a", "/bin/sleep", "1000000")
		b := cd.createStart(t, pod, p, "b", "/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done")
		cd.restart(t)
		cd.waitContainerState(t, a, "CONTAINER_RUNNING")
		if insp := cd.crictlJSON(t, "inspectp", "-o", "json", pod); jsonPath(insp, "status", "state") != "SANDBOX_READY" {
			t.Fatalf("after a containerd restart the pod is %v, want SANDBOX_READY", jsonPath(insp, "status", "state"))
		}
		if out := cd.mustCrictl(t, "exec", a, "/bin/echo", "after-restart"); out != "after-restart\n" {
			t.Errorf("exec after a containerd restart: %q", out)
		}
		if shims := cd.podShims(); len(shims) != 1 || shims[0].Pid != sb.pid {
			t.Errorf("after a containerd restart, shims %v; want only the pod's %d", shims, sb.pid)
		}

		// stopp with a and b running: CRI stops them (b ignores SIGTERM).
		cd.mustCrictl(t, "stopp", pod)
		for _, id := range []string{a, b} {
			st := cd.waitContainerState(t, id, "CONTAINER_EXITED")
			t.Logf("container %.12s after stopp: exit code %v reason %v", id, st["exitCode"], st["reason"])
		}
		cd.mustCrictl(t, "rmp", pod)
		cd.assertPodGone(t, p, sb, socketsBefore, pod, exiter, oom, a, b)
	})
}

// createStartAny is createStart without waiting for RUNNING (the container
// may have exited by then), with the resources of the container's linux section.
func (cd *criDaemon) createStartAny(t *testing.T, pod string, p criPod, name string, resources map[string]any, command ...string) string {
	t.Helper()
	return cd.createStartCfg(t, pod, p, name, nil, resources, command...)
}

// createStartCfg is createStartAny with extra top-level fields of the container config.
func (cd *criDaemon) createStartCfg(t *testing.T, pod string, p criPod, name string, extra, resources map[string]any, command ...string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name+".json")
	linux := map[string]any{}
	if resources != nil {
		linux["resources"] = resources
	}
	cfg := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": imageName},
		"command":  command,
		"log_path": name + ".log",
		"linux":    linux,
	}
	for k, v := range extra {
		cfg[k] = v
	}
	writeJSON(t, file, cfg)
	id := strings.TrimSpace(cd.mustCrictl(t, "create", pod, file, p.file))
	cd.mustCrictl(t, "start", id)
	return id
}
