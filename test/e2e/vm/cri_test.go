//go:build tethervm

package vm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/tether-shim/tether/testkit"
)

// The CRI pod test: pods through containerd's CRI plugin, driven with
// crictl as kubelet drives CRI under the systemd cgroup driver.
const (
	criNamespace = "k8s.io" // the containerd namespace of the CRI plugin
	// pauseImage is the sandbox image the CRI config of test/e2e/testdata
	// pins; busyboxImage, the same image tagged, runs the containers.
	pauseImage   = "localhost/tether/pause:e2e"
	busyboxImage = "localhost/tether/busybox:vm"
	// kubepodsSlice is the top slice of kubelet's pods under the systemd driver.
	kubepodsSlice = "kubepods.slice"
	// tetherConfigFile is what the containerd 1.6 snippet's ConfigPath names.
	tetherConfigFile = "/etc/containerd/tether.toml"
	// runcRoot is runc's state root for the CRI namespace (both shims' default).
	runcRoot = "/run/containerd/runc/" + criNamespace
)

// TestCRIPodSystemd: for each containerd, a containerd with its CRI plugin
// configured by the README's snippets (test/e2e/testdata: the CRI config of
// the host's pod tests plus SystemdCgroup = true for the runtime tether, in
// its options table on 2.x, through a ConfigPath file on 1.6, whose CRI
// passes nothing else to a runtime that is not runc's) and, for the stock
// shim, a runtime runc (io.containerd.runc.v2, SystemdCgroup = true in its
// options, as kubeadm writes it). For each runtime selected, a pod as
// kubelet's systemd driver makes it (checkSystemdPod).
func TestCRIPodSystemd(t *testing.T) {
	crictl := os.Getenv(envCrictl)
	if st, err := os.Stat(crictl); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("%s: crictl %q is missing or not executable (%v)", envCrictl, crictl, err)
	}
	data := os.Getenv(envTestdata)
	if data == "" {
		t.Fatalf("%s is not set (the directory of test/e2e/testdata's TOML snippets)", envTestdata)
	}
	// One image, busybox running sleep (killed by the CRI plugin with
	// SIGKILL when the pod stops, like the real pause), imported as the
	// pause image and tagged as the containers' image: compressing a layer
	// in the guest (emulated, and the binary built with -race) takes
	// seconds, so it is done once.
	start := time.Now()
	pauseTar := filepath.Join(t.TempDir(), "pause.tar")
	if err := testkit.BuildImageTarCmd(rootfsDir, pauseTar, pauseImage, "tether vm pause image", "tether vm: busybox sleep as pause",
		[]string{"/bin/sleep", "2147483647"}); err != nil {
		t.Fatalf("pause image: %v", err)
	}
	t.Logf("image built in %v", time.Since(start).Round(time.Millisecond))
	// The file of the 1.6 snippet's ConfigPath (this is the throwaway VM).
	if err := os.MkdirAll(filepath.Dir(tetherConfigFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := testkit.CopyFile(filepath.Join(data, "tether-systemd.toml"), tetherConfigFile, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, v := range versions {
		t.Run("containerd-"+v.name, func(t *testing.T) {
			d := startCRIDaemon(t, v, "cri", criConfig(t, data, v.major))
			cd := &criDaemon{daemon: d, c: d.client(t), crictl: crictl, config: filepath.Join(libBase, v.tag+"-crictl.yaml")}
			yaml := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n", d.Sock, d.Sock)
			if err := os.WriteFile(cd.config, []byte(yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{"import", pauseTar}, {"tag", pauseImage, busyboxImage}} {
				ctx, cancel := opCtx(context.Background())
				r := d.RunCtr(ctx, criNamespace, append([]string{"image"}, args...)...)
				cancel()
				if r.Code != 0 {
					t.Fatalf("ctr image %s: exit %d (%v): %s%s", strings.Join(args, " "), r.Code, r.Err, r.Stdout, r.Stderr)
				}
			}
			waitFor(t, 60*time.Second, "crictl images to list the imported images", func() (bool, string) {
				r := cd.run("images")
				return r.Code == 0 && strings.Contains(r.Stdout, "localhost/tether/pause") && strings.Contains(r.Stdout, "localhost/tether/busybox"),
					fmt.Sprintf("exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
			})
			for _, rt := range runtimes {
				handler := "tether"
				if rt == stockRuntime {
					handler = "runc"
				}
				t.Run(handler, func(t *testing.T) {
					off := d.LogSize()
					t.Cleanup(func() {
						if t.Failed() {
							t.Log(d.LogTail(off, 80))
						}
						cd.run("rmp", "--all", "--force")
					})
					t.Run("pod", func(t *testing.T) { checkSystemdPod(t, cd, handler) })
					t.Run("driver-from-options", func(t *testing.T) { checkDriverFromOptions(t, cd, handler) })
				})
			}
		})
	}
}

// criConfig is the CRI config of a containerd of major version major: the
// host's pod tests' config and the systemd snippet, both from
// test/e2e/testdata verbatim (the README shows them), then the runtime runc.
func criConfig(t *testing.T, data string, major int) string {
	t.Helper()
	v := "v2"
	table := `plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc`
	if major >= 2 {
		v = "v3"
		table = `plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc`
	}
	var b strings.Builder
	for _, f := range []string{"cri-config-" + v + ".toml", "cri-systemd-" + v + ".toml"} {
		s, err := os.ReadFile(filepath.Join(data, f))
		if err != nil {
			t.Fatal(err)
		}
		b.Write(s)
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "[%s]\n  runtime_type = %q\n\n[%s.options]\n  SystemdCgroup = true\n", table, stockRuntime, table)
	return b.String()
}

// criDaemon is a containerd with its CRI plugin, its Go client and crictl.
type criDaemon struct {
	*daemon
	c      *containerd.Client
	crictl string // the binary
	config string // crictl's config file: the endpoints
}

// run runs crictl with a 2 minute deadline.
func (cd *criDaemon) run(args ...string) testkit.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return testkit.Run(ctx, nil, cd.crictl, append([]string{"--config", cd.config}, args...)...)
}

// must runs crictl, logs it, fails the test unless it exits 0, and returns stdout.
func (cd *criDaemon) must(t *testing.T, args ...string) string {
	t.Helper()
	r := cd.run(args...)
	t.Logf("crictl %s -> exit %d stdout=%q stderr=%q", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	if r.Code != 0 {
		t.Fatalf("crictl %s: exit %d (%v)", strings.Join(args, " "), r.Code, r.Err)
	}
	return r.Stdout
}

// mustID is must for a command that prints a new pod or container id.
func (cd *criDaemon) mustID(t *testing.T, args ...string) string {
	t.Helper()
	id := strings.TrimSpace(cd.must(t, args...))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
		t.Fatalf("crictl %s printed %q, want an id", args[0], id)
	}
	return id
}

// ctrStatus is what crictl inspect shows of a container's status.
type ctrStatus struct {
	State    string `json:"state"`
	ExitCode int    `json:"exitCode"`
	Reason   string `json:"reason"`
}

// status is the status crictl inspect shows for container id (zero if
// none), and what crictl printed.
func (cd *criDaemon) status(id string) (ctrStatus, string) {
	r := cd.run("inspect", "-o", "json", id)
	var m struct {
		Status ctrStatus `json:"status"`
	}
	if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &m) != nil {
		return ctrStatus{}, fmt.Sprintf("exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	return m.Status, r.Stdout
}

// waitState waits until container id is in state and returns its status.
func (cd *criDaemon) waitState(t *testing.T, id, state string) ctrStatus {
	t.Helper()
	var st ctrStatus
	waitFor(t, 60*time.Second, fmt.Sprintf("%.12s %s", id, state), func() (bool, string) {
		var detail string
		st, detail = cd.status(id)
		return st.State == state, detail
	})
	return st
}

// writeContainer writes the config of container name running command on
// busybox, logging to <log_directory>/<name>.log, with its memory limit
// unless it is 0.
func writeContainer(t *testing.T, file, name string, limit int, command ...string) {
	t.Helper()
	linux := map[string]any{}
	if limit > 0 {
		linux["resources"] = map[string]any{"memory_limit_in_bytes": limit}
	}
	writeJSON(t, file, map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": busyboxImage},
		"command":  command,
		"log_path": name + ".log",
		"linux":    linux,
	})
}

// checkSystemdPod runs a pod with runtime handler as kubelet's systemd driver
// does (cgroup_parent its pod slice, under kubepods-besteffort.slice; host
// network), a container with a memory limit and an exec in it, and a second
// container, and checks: the sandbox and each container are in a scope
// cri-containerd-<id>.scope of the pod's slice, active for systemd; runc ran
// with --systemd-cgroup (its state says Systemd); the limit is the scope's
// memory.max; the exec is in the container's scope; one shim serves the
// pod; stats are cgroup v2 metrics with non-zero values (also through CRI);
// the log; an in-place memory update reaches the scope; a third container
// OOM-killed in the pod exits 137 with reason OOMKilled; stop with a grace
// period (exit 0 for the container that handles SIGTERM, 137 for the one
// that ignores it). After removal: no shim, no scope, no runc state,
// nothing below the pod's slice, which goes away when stopped (as kubelet
// does).
func checkSystemdPod(t *testing.T, cd *criDaemon, handler string) {
	uid := newUID(t)
	slice := "kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	// kubelet passes the slice's full path; containerd takes its last element.
	parent := "/" + kubepodsSlice + "/kubepods-besteffort.slice/" + slice
	sliceDir := filepath.Join("/sys/fs/cgroup", parent)
	dir := t.TempDir()
	podFile := filepath.Join(dir, "pod.json")
	writePod(t, podFile, "sd-"+handler, uid, parent)
	const limit = 128 * mib
	// c1: a little shell loop first (so that its cpu usage is not nil),
	// then it waits for SIGTERM, which it handles. c2 ignores SIGTERM.
	// c3: OOM-killed under a 32 MiB limit.
	files := map[string]string{}
	for _, c := range []struct {
		name    string
		limit   int
		command []string
	}{
		{"c1", limit, []string{"/bin/sh", "-c", `i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo c1-up; trap 'echo got-TERM; exit 0' TERM; while :; do sleep 1; done`}},
		{"c2", 0, []string{"/bin/sh", "-c", `trap '' TERM; while :; do sleep 1; done`}},
		{"c3", 32 * mib, []string{"/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"}},
	} {
		files[c.name] = filepath.Join(dir, c.name+".json")
		writeContainer(t, files[c.name], c.name, c.limit, c.command...)
	}

	pod := cd.mustID(t, "runp", "--runtime", handler, podFile)
	t.Cleanup(func() {
		if cd.run("inspectp", pod).Code == 0 {
			cd.run("stopp", pod)
			cd.run("rmp", "--force", pod)
		}
	})
	c1 := cd.mustID(t, "create", pod, files["c1"], podFile)
	cd.must(t, "start", c1)
	c2 := cd.mustID(t, "create", pod, files["c2"], podFile)
	cd.must(t, "start", c2)
	for _, id := range []string{c1, c2} {
		cd.waitState(t, id, "CONTAINER_RUNNING")
	}
	scope := func(id string) string { return parent + "/cri-containerd-" + id + ".scope" }

	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), criNamespace), 5*time.Minute)
	defer cancel()
	tasks := map[string]containerd.Task{}
	for _, id := range []string{pod, c1, c2} {
		cont, err := cd.c.LoadContainer(ctx, id)
		if err != nil {
			t.Fatalf("LoadContainer %.12s: %v", id, err)
		}
		// containerd gives the shim's State 2 s; an emulated guest on a
		// busy host can stall for longer, so a deadline is tried again.
		var task containerd.Task
		if !waitFor(t, 60*time.Second, "the task of "+id[:12], func() (bool, string) {
			task, err = cont.Task(ctx, nil)
			return err == nil || !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "deadline exceeded"), fmt.Sprint(err)
		}) {
			t.FailNow()
		}
		if err != nil {
			t.Fatalf("Task of %.12s: %v", id, err)
		}
		tasks[id] = task
		got, err := procCgroup(int(task.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%.12s: pid %d in %s", id, task.Pid(), got)
		if got != scope(id) {
			t.Errorf("%.12s (pid %d) is in cgroup %q, want %q (a scope in the pod's slice)", id, task.Pid(), got, scope(id))
		}
		unit := filepath.Base(scope(id))
		if out, err := exec.Command("systemctl", "is-active", unit).CombinedOutput(); strings.TrimSpace(string(out)) != "active" {
			t.Errorf("systemctl is-active %s: %q (%v), want active", unit, out, err)
		}
		if sd, err := runcSystemd(id); err != nil || !sd {
			t.Errorf("runc's state of %.12s: Systemd %v (%v), want true: the shim did not pass --systemd-cgroup", id, sd, err)
		}
	}
	expectFile(t, filepath.Join("/sys/fs/cgroup", scope(c1), "memory.max"), strconv.Itoa(limit))

	// exec: in the container's scope. CRI gives the container a cgroup
	// namespace of its own on v2, rooted at its scope: a process in the
	// scope sees "/", one anywhere else a path with "..".
	out := cd.must(t, "exec", c1, "/bin/sh", "-c", "echo exec-ok; cat /proc/self/cgroup")
	if !strings.Contains(out, "exec-ok\n") || !(strings.Contains(out, "0::/\n") || strings.Contains(out, "0::"+scope(c1)+"\n")) {
		t.Errorf("crictl exec printed %q, want exec-ok and 0::/ (the root of the container's cgroup namespace, its scope) or 0::%s", out, scope(c1))
	}

	// One shim serves the pod.
	shims := testkit.ShimProcesses(cd.Sock)
	if len(shims) != 1 {
		t.Errorf("shims of this containerd: %v; want one, the pod's", shims)
	}

	// Stats: the task's metrics are cgroup v2's, with non-zero values...
	if s := checkV2Metrics(ctx, t, tasks[c1]); s.GetMemory().GetUsageLimit() != limit {
		t.Errorf("c1: memory usage_limit %d, want the container's limit %d", s.GetMemory().GetUsageLimit(), limit)
	}
	// ...and CRI, which reads them, reports them.
	var cs struct {
		Stats []struct {
			CPU struct {
				UsageCoreNanoSeconds struct {
					Value string `json:"value"`
				} `json:"usageCoreNanoSeconds"`
			} `json:"cpu"`
			Memory struct {
				WorkingSetBytes struct {
					Value string `json:"value"`
				} `json:"workingSetBytes"`
			} `json:"memory"`
		} `json:"stats"`
	}
	if out := cd.must(t, "stats", "-o", "json", c1); json.Unmarshal([]byte(out), &cs) != nil || len(cs.Stats) != 1 ||
		cs.Stats[0].CPU.UsageCoreNanoSeconds.Value == "" || cs.Stats[0].CPU.UsageCoreNanoSeconds.Value == "0" ||
		cs.Stats[0].Memory.WorkingSetBytes.Value == "" || cs.Stats[0].Memory.WorkingSetBytes.Value == "0" {
		t.Errorf("crictl stats of c1: %q, want non-zero usageCoreNanoSeconds and workingSetBytes", out)
	}

	// logs: CRI's log file, written through the shim's stdio.
	waitFor(t, 30*time.Second, "c1-up in crictl logs", func() (bool, string) {
		r := cd.run("logs", c1)
		return r.Code == 0 && strings.Contains(r.Stdout, "c1-up"), fmt.Sprintf("exit %d: %q %q", r.Code, r.Stdout, r.Stderr)
	})

	// update: an in-place resize reaches the scope (runc sets the unit's
	// properties under the systemd driver).
	cd.must(t, "update", "--memory", strconv.Itoa(64*mib), c1)
	expectFile(t, filepath.Join("/sys/fs/cgroup", scope(c1), "memory.max"), strconv.Itoa(64*mib))

	// OOM in the pod: exit 137, reason OOMKilled (what kubelet reports).
	c3 := cd.mustID(t, "create", pod, files["c3"], podFile)
	cd.must(t, "start", c3)
	st := cd.waitState(t, c3, "CONTAINER_EXITED")
	t.Logf("c3: exit code %d, reason %q", st.ExitCode, st.Reason)
	if st.ExitCode != 137 || st.Reason != "OOMKilled" {
		t.Errorf("c3, OOM-killed under its limit: exit code %d reason %q, want 137 and OOMKilled", st.ExitCode, st.Reason)
	}

	// Stop with a grace period, as kubelet does: c1 handles SIGTERM and
	// exits 0 within it; c2 ignores it and is SIGKILLed after it (137).
	cd.must(t, "stop", "--timeout", "30", c1)
	if st := cd.waitState(t, c1, "CONTAINER_EXITED"); st.ExitCode != 0 {
		t.Errorf("c1 (handles SIGTERM) after stop: exit code %d, want 0", st.ExitCode)
	}
	waitFor(t, 30*time.Second, "got-TERM in crictl logs", func() (bool, string) {
		r := cd.run("logs", c1)
		return r.Code == 0 && strings.Contains(r.Stdout, "got-TERM"), fmt.Sprintf("exit %d: %q %q", r.Code, r.Stdout, r.Stderr)
	})
	cd.must(t, "stop", "--timeout", "2", c2)
	if st := cd.waitState(t, c2, "CONTAINER_EXITED"); st.ExitCode != 137 {
		t.Errorf("c2 (ignores SIGTERM) after stop --timeout 2: exit code %d, want 137", st.ExitCode)
	}
	cd.must(t, "rm", c1, c2, c3)
	cd.must(t, "stopp", pod)
	cd.must(t, "rmp", pod)

	waitFor(t, 30*time.Second, "no shim left", func() (bool, string) {
		ps := testkit.ShimProcesses(cd.Sock)
		return len(ps) == 0, fmt.Sprintf("shims %v", ps)
	})
	for _, id := range []string{pod, c1, c2, c3} {
		unit := filepath.Base(scope(id))
		waitFor(t, 30*time.Second, "the scope of "+id[:12]+" gone", func() (bool, string) {
			_, err := os.Stat(filepath.Join("/sys/fs/cgroup", scope(id)))
			out, _ := exec.Command("systemctl", "is-active", unit).CombinedOutput()
			st := strings.TrimSpace(string(out))
			return os.IsNotExist(err) && st != "active" && st != "deactivating", fmt.Sprintf("stat: %v; systemctl is-active %s: %s", err, unit, st)
		})
		if _, err := os.Stat(filepath.Join(runcRoot, id)); !os.IsNotExist(err) {
			t.Errorf("runc state of %.12s left in %s (stat: %v)", id, runcRoot, err)
		}
	}
	// Nothing below the pod's slice. The slice itself is kubelet's: it
	// makes it (here systemd did, as the scopes' slice) and stops it once
	// the pod is gone, as done here; then its cgroup goes too.
	ents, err := os.ReadDir(sliceDir)
	var subs []string
	for _, e := range ents {
		if e.IsDir() {
			subs = append(subs, e.Name())
		}
	}
	populated, _ := readTrim(filepath.Join(sliceDir, "cgroup.events"))
	t.Logf("after rmp: %s: read %v; sub-cgroups %v; cgroup.events %q", sliceDir, err, subs, populated)
	if len(subs) > 0 || (err == nil && !strings.Contains(populated, "populated 0")) {
		t.Errorf("left in the pod's slice %s: sub-cgroups %v, cgroup.events %q", sliceDir, subs, populated)
	}
	if out, err := exec.Command("systemctl", "stop", slice).CombinedOutput(); err != nil {
		t.Errorf("systemctl stop %s: %v: %s", slice, err, out)
	}
	waitFor(t, 30*time.Second, "the pod's slice gone", func() (bool, string) {
		_, err := os.Stat(sliceDir)
		return os.IsNotExist(err), fmt.Sprintf("stat %s: %v", sliceDir, err)
	})
	if out := strings.TrimSpace(cd.must(t, "pods", "-q")); out != "" {
		t.Errorf("crictl pods after rmp: %q", out)
	}
	if out := strings.TrimSpace(cd.must(t, "ps", "-a", "-q")); out != "" {
		t.Errorf("crictl ps -a after rmp: %q", out)
	}
}

// checkDriverFromOptions: a pod whose cgroup_parent is a cgroupfs path (what
// kubelet's cgroupfs driver passes) gets a cgroupfs cgroupsPath from
// containerd, which runc refuses under --systemd-cgroup: a refused runp shows
// that the driver came from the runtime's options, not from the form of the
// path (a slice's path alone would have made Tether pass the flag too).
// Nothing of the failed pod may stay.
func checkDriverFromOptions(t *testing.T, cd *criDaemon, handler string) {
	uid := newUID(t)
	parent := "/kubepods/besteffort/pod" + uid
	podFile := filepath.Join(t.TempDir(), "pod.json")
	writePod(t, podFile, "cgroupfs-"+handler, uid, parent)
	r := cd.run("runp", "--runtime", handler, podFile)
	t.Logf("crictl runp with cgroup_parent %s -> exit %d stdout=%q stderr=%q", parent, r.Code, r.Stdout, r.Stderr)
	if r.Code == 0 || !strings.Contains(r.Stderr, "slice:prefix:name") {
		t.Errorf("runp of a pod with the cgroupfs parent %s: exit %d, stderr %q; want runc's refusal of a cgroupfs path under --systemd-cgroup (\"slice:prefix:name\")",
			parent, r.Code, r.Stderr)
	}
	waitFor(t, 30*time.Second, "no shim left after the failed runp", func() (bool, string) {
		ps := testkit.ShimProcesses(cd.Sock)
		return len(ps) == 0, fmt.Sprintf("shims %v", ps)
	})
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", parent)); !os.IsNotExist(err) {
		t.Errorf("the cgroupfs parent %s was made (stat: %v)", parent, err)
	}
	if out := strings.TrimSpace(cd.must(t, "pods", "-q")); out != "" {
		t.Errorf("crictl pods after the failed runp: %q", out)
	}
}

// writePod writes a pod sandbox config as kubelet sends it: name, uid, the
// cgroup parent; host network (no CNI needed), logs in a temp directory.
func writePod(t *testing.T, file, name, uid, parent string) {
	t.Helper()
	writeJSON(t, file, map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "vm", "uid": uid, "attempt": 0},
		"log_directory": filepath.Join(filepath.Dir(file), "logs"),
		"linux": map[string]any{
			"cgroup_parent": parent,
			// NODE: the host's network namespace, so no CNI is needed.
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}},
		},
	})
}

// runcSystemd reads runc's state of container id: whether runc was run with
// --systemd-cgroup (its config's cgroups.Systemd).
func runcSystemd(id string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(runcRoot, id, "state.json"))
	if err != nil {
		return false, err
	}
	var st struct {
		Config struct {
			Cgroups *struct {
				Systemd bool `json:"Systemd"`
			} `json:"cgroups"`
		} `json:"config"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return false, fmt.Errorf("runc state of %s: %w", id, err)
	}
	if st.Config.Cgroups == nil {
		return false, fmt.Errorf("runc state of %s has no config.cgroups", id)
	}
	return st.Config.Cgroups.Systemd, nil
}

// newUID is a random pod UID in the form kubelet's pods have (a UUID).
func newUID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
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
