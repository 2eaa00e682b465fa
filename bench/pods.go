package main

// Pods through CRI: two CRI-enabled private containerds per version of
// BENCH_PODS_VERSIONS, one with Tether as the runtime handler, one with the
// stock shim, driven with crictl. Pod start latency (RunPodSandbox +
// CreateContainer + StartContainer) for pods of 1 and 3 containers, and the
// memory of a pod of 3's shim.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tether-shim/tether/testkit"
)

const (
	// criNamespace is the containerd namespace of the CRI plugin.
	criNamespace = "k8s.io"
	// pauseImage is the sandbox image the bench's CRI config pins: the
	// busybox rootfs running sleep (no registry is reachable).
	pauseImage = "localhost/tether/pause:bench"
	// podHandler is the CRI runtime handler of both CRI containerds: Tether
	// on one, the stock shim on the other.
	podHandler = "bench"
)

// crictl is the crictl scripts/install-deps.sh builds.
func (b *bench) crictlPath() string {
	return filepath.Join(b.cfg.Deps, "cri-tools-1.34.0", "bin", "crictl")
}

// criConfig is the CRI part of the config (version 3, containerd 2.x) of a
// containerd whose handler podHandler runs runtimeType.
func criConfig(runtimeType string) string {
	return fmt.Sprintf(`[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = %q

[plugins."io.containerd.cri.v1.runtime"]
  # containerd here lacks nothing, but the e2e machines' containerd lacks
  # CAP_SYS_RESOURCE: keep the sandbox's oom_score_adj at containerd's or above.
  restrict_oom_score_adj = true

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = %q

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s]
  runtime_type = %q
`, pauseImage, podHandler, podHandler, runtimeType)
}

// podSide is a side on a CRI containerd.
type podSide struct {
	*side
	crictlConfig string
	cgroupParent string // the pods' cgroup parent (under nsPrefix, removed by globalCleanup)
	dir          string // pod and container configs, pod logs
}

// crictl runs crictl against the side's containerd with a one minute deadline.
func (b *bench) crictl(p *podSide, args ...string) result {
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	r := run(ctx, nil, b.crictlPath(), append([]string{"--config", p.crictlConfig}, args...)...)
	r.stderr = dropCgroupV1Warning(r.stderr)
	return r
}

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// podImages builds the OCI tarballs of the pause image and of the busybox
// image the pods' containers run.
func (b *bench) podImages() (pause, busybox string, err error) {
	pause = filepath.Join(b.tmp, "pause-oci.tar")
	// Killed with SIGKILL by the CRI plugin when the pod stops, like the real pause.
	if err := testkit.BuildImageTarCmd(b.rootfs, pause, pauseImage, "tether bench pause image", "tether bench: busybox sleep as pause",
		[]string{"/bin/sleep", "2147483647"}); err != nil {
		return "", "", fmt.Errorf("pause image: %w", err)
	}
	busybox = filepath.Join(b.tmp, "busybox-cri-oci.tar")
	if err := testkit.BuildImageTar(b.rootfs, busybox, imageName, "tether bench image", "tether bench: busybox rootfs"); err != nil {
		return "", "", fmt.Errorf("OCI image: %w", err)
	}
	return pause, busybox, nil
}

// podMetrics are the figures of the pods, for failures.
func podMetrics() []string {
	out := []string{"pod1_ms", "pod3_ms"}
	for _, f := range memFields {
		out = append(out, f.name+"_pod3")
	}
	return out
}

// runPods measures the pods on containerd v: BENCH_REPS rounds, Tether then
// stock, each BENCH_POD_ITERS pods of 1 and of 3 containers, the last pod of
// 3 sampled for memory after BENCH_SETTLE.
func (b *bench) runPods(v *cdVersion) error {
	logf("containerd %s, CRI pods: Tether vs %s", v.Name, v.StockShim)
	if v.Major < 2 {
		return fmt.Errorf("pods are measured on containerd 2.x only (its CRI config, version 3)")
	}
	if st, err := os.Stat(b.crictlPath()); err != nil || st.Mode()&0o111 == 0 {
		return fmt.Errorf("crictl %s is missing (run scripts/install-deps.sh): %v", b.crictlPath(), err)
	}
	pause, busybox, err := b.podImages()
	if err != nil {
		return err
	}
	mk := func(name, exe, runtimeType string, links map[string]string) (*podSide, error) {
		tag := v.Tag + "-cri-" + name
		binDir := filepath.Join(b.tmp, "bin-"+tag)
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			return nil, err
		}
		for link, target := range links {
			if err := os.Symlink(target, filepath.Join(binDir, link)); err != nil {
				return nil, err
			}
		}
		d := newDaemon(v, "cri-"+name, binDir)
		d.CRIConfig = criConfig(runtimeType)
		b.daemons = append(b.daemons, d)
		if err := d.start(b.ctx); err != nil {
			return nil, err
		}
		real, err := filepath.EvalSymlinks(exe)
		if err != nil {
			return nil, err
		}
		p := &podSide{
			side:         &side{name: name, d: d, ns: criNamespace, exe: real, warm: map[string]bool{}},
			crictlConfig: filepath.Join(libBase, tag+"-crictl.yaml"),
			cgroupParent: "/" + nsPrefix + tag,
			dir:          filepath.Join(b.tmp, "pods-"+tag),
		}
		yaml := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\ndebug: false\n", d.Sock, d.Sock)
		if err := os.WriteFile(p.crictlConfig, []byte(yaml), 0o644); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(p.dir, 0o755); err != nil {
			return nil, err
		}
		for _, tar := range []string{pause, busybox} {
			if r := b.ctr(p.side, "image", "import", tar); r.code != 0 {
				return nil, fmt.Errorf("containerd %s: ctr -n %s image import: %s", d.name, criNamespace, r)
			}
		}
		// The CRI plugin learns of imported images from events.
		deadline := time.Now().Add(60 * time.Second)
		for {
			r := b.crictl(p, "images")
			if r.code == 0 && strings.Contains(r.stdout, "localhost/tether/pause") && strings.Contains(r.stdout, "docker.io/tether/busybox") {
				break
			}
			if time.Now().After(deadline) || b.ctx.Err() != nil {
				return nil, fmt.Errorf("containerd %s: crictl images does not list the imported images: %s", d.name, r)
			}
			time.Sleep(200 * time.Millisecond)
		}
		return p, nil
	}
	// The stock shim must be the one found on its containerd's PATH.
	tether, err := mk("tether", b.shimBin, b.cfg.TetherRuntime, map[string]string{"containerd-shim-tether-v2": b.shimBin})
	if err != nil {
		return err
	}
	stock, err := mk("stock", v.StockShim, stockRuntime, map[string]string{"containerd-shim-runc-v2": v.StockShim})
	if err != nil {
		return err
	}
	sides := []*podSide{tether, stock}
	defer func() {
		for _, p := range sides {
			b.cleanPods(p)
			if err := p.d.stop(); err != nil {
				logf("stopping containerd %s: %v", p.d.name, err)
			}
		}
	}()
	for rep := 1; rep <= b.cfg.Reps; rep++ {
		if err := b.ctx.Err(); err != nil {
			return err
		}
		logf("containerd %s, CRI pods, round %d/%d: %d pods of 1 and of 3 containers per shim", v.Name, rep, b.cfg.Reps, b.cfg.PodIters)
		b.checkQuiet(v.Name)
		for _, p := range sides {
			b.podRound(p, v)
		}
	}
	return b.ctx.Err()
}

// podRound runs PodIters pods of 1 container, then PodIters pods of 3, on
// side p, each removed before the next; the last pod of 3 is sampled for
// memory after Settle. The first pod of the side is an untimed warm-up.
func (b *bench) podRound(p *podSide, v *cdVersion) {
	if b.rec.failedFor(key{v.Name, "runc", "pod1_ms"}, p.name) {
		return
	}
	fail := func(msg string) {
		for _, m := range podMetrics() {
			b.rec.fail(key{v.Name, "runc", m}, p.name, msg)
		}
		b.cleanPods(p)
	}
	if !p.warm["pod"] {
		if _, _, err := b.startPod(p, 1); err != nil {
			fail(err.Error())
			return
		}
		if err := b.removePods(p); err != nil {
			fail(err.Error())
			return
		}
		p.warm["pod"] = true
	}
	for _, n := range []int{1, 3} {
		k := key{v.Name, "runc", fmt.Sprintf("pod%d_ms", n)}
		for i := 0; i < b.cfg.PodIters; i++ {
			took, _, err := b.startPod(p, n)
			if err != nil {
				fail(err.Error())
				return
			}
			b.rec.add(k, p.name, ms(took))
			if n == 3 && i == b.cfg.PodIters-1 {
				b.podMemory(p, v)
			}
			if err := b.removePods(p); err != nil {
				fail(err.Error())
				return
			}
		}
	}
}

// podMemory samples the one shim of the running pod of 3 after Settle.
func (b *bench) podMemory(p *podSide, v *cdVersion) {
	if !b.sleep(b.cfg.Settle) {
		return
	}
	b.recordMem(p.side, v, "runc", "pod3", 1)
}

// startPod runs a pod of n containers (sleep) with crictl runp, create and
// start, and returns the wall time of the whole sequence and the pod's id.
func (b *bench) startPod(p *podSide, n int) (time.Duration, string, error) {
	p.seq++
	name := fmt.Sprintf("bench-%s-%d", p.name, p.seq)
	podFile := filepath.Join(p.dir, name+".json")
	if err := writeJSON(podFile, map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "bench", "uid": name + "-uid", "attempt": 0},
		"log_directory": filepath.Join(p.dir, "logs", name),
		"linux": map[string]any{
			"cgroup_parent": p.cgroupParent,
			// NODE: the host's network namespace, so no CNI is needed.
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}},
		},
	}); err != nil {
		return 0, "", err
	}
	var ctrFiles []string
	for i := 0; i < n; i++ {
		f := filepath.Join(p.dir, fmt.Sprintf("%s-c%d.json", name, i))
		if err := writeJSON(f, map[string]any{
			"metadata": map[string]any{"name": fmt.Sprintf("c%d", i)},
			"image":    map[string]any{"image": imageName},
			"command":  sleeper,
			"log_path": fmt.Sprintf("c%d.log", i),
			"linux":    map[string]any{},
		}); err != nil {
			return 0, "", err
		}
		ctrFiles = append(ctrFiles, f)
	}
	t0 := time.Now()
	r := b.crictl(p, "runp", "--runtime", podHandler, podFile)
	pod := strings.TrimSpace(r.stdout)
	if r.code != 0 || !hexID.MatchString(pod) {
		return 0, "", fmt.Errorf("crictl runp: %s", r)
	}
	for _, f := range ctrFiles {
		r := b.crictl(p, "create", pod, f, podFile)
		id := strings.TrimSpace(r.stdout)
		if r.code != 0 || !hexID.MatchString(id) {
			return 0, pod, fmt.Errorf("crictl create: %s", r)
		}
		if r := b.crictl(p, "start", id); r.code != 0 {
			return 0, pod, fmt.Errorf("crictl start: %s", r)
		}
	}
	took := time.Since(t0)
	if err := b.checkShims(p.side, 1); err != nil {
		return 0, pod, fmt.Errorf("pod of %d: %w", n, err)
	}
	return took, pod, nil
}

// removePods stops and removes every pod of side p and waits until its
// shims are gone.
func (b *bench) removePods(p *podSide) error {
	if r := b.crictl(p, "rmp", "--all", "--force"); r.code != 0 {
		return fmt.Errorf("crictl rmp --all --force: %s", r)
	}
	if left := b.waitNoShims(p.side, 15*time.Second); left > 0 {
		return fmt.Errorf("%d shims still running 15 s after crictl rmp", left)
	}
	return nil
}

// cleanPods removes what is left of side p's pods: pods, shims, container
// processes (by the pods' cgroup parent) and mounts. It never touches the
// k8s.io namespace's cgroups or runc state outside its own pods.
func (b *bench) cleanPods(p *podSide) {
	if p.d.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		run(ctx, nil, b.crictlPath(), "--config", p.crictlConfig, "rmp", "--all", "--force")
		cancel()
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(testkit.ShimProcesses(p.d.Sock)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	killShims(testkit.ShimProcesses(p.d.Sock))
	testkit.KillCgroup(p.cgroupParent + "/")
	testkit.UnmountUnder(p.d.taskDir(criNamespace))
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
