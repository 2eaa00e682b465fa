package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/tether-shim/tether/testkit"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// legacyRuncOptionsTypeURL is containerd 1.x's containerd.linux.runc.RuncOptions
// (runtime/linux/runctypes), which the api module does not have.
const legacyRuncOptionsTypeURL = "containerd.linux.runc.RuncOptions"

// legacyRuncOptions encodes containerd.linux.runc.RuncOptions{runtime} by
// hand (string runtime = 1; string runtime_root = 2; string criu_path = 3;
// bool systemd_cgroup = 4; proto3 leaves the empty ones out).
func legacyRuncOptions(runtime string) *anypb.Any {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, runtime)
	return &anypb.Any{TypeUrl: legacyRuncOptionsTypeURL, Value: b}
}

// optionsDir makes a directory for the runtime state and config files of a
// test, below runBase so that a killed run's leftovers are removed by the
// next one. It is removed after the namespace cleanup (which deletes the
// containers, so the runtime's delete still finds its state).
func (d *daemon) optionsDir(t *testing.T, ns string) string {
	t.Helper()
	dir := filepath.Join(runBase, "opts-"+ns)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.cleanupNamespace(t, ns)
		_ = os.RemoveAll(dir)
	})
	return dir
}

// assertRunsOnCrun checks that the running container id was created by crun
// with runtime state directory root: crun keeps <root>/<id>/status (JSON
// with the init's pid and the bundle), runc keeps <root>/<id>/state.json
// instead, and `crun --root <root> state <id>` shows it running with the
// task's pid. Then an exec goes through the same runtime, and after kill and
// delete crun's state is gone (the shim ran crun delete with that root).
func (d *daemon) assertRunsOnCrun(t *testing.T, ns, id, root string) {
	t.Helper()
	tk := d.waitStatus(t, ns, id, "RUNNING")
	stateDir := filepath.Join(root, id)
	listing := func() string {
		var names []string
		ents, err := os.ReadDir(stateDir)
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return fmt.Sprintf("%s: %v (err %v)", stateDir, names, err)
	}
	data, err := os.ReadFile(filepath.Join(stateDir, "status"))
	if err != nil {
		t.Fatalf("no crun state for %s: %v; the runtime state dir holds %s", id, err, listing())
	}
	var status struct {
		Pid    int    `json:"pid"`
		Bundle string `json:"bundle"`
	}
	if err := json.Unmarshal(data, &status); err != nil {
		t.Fatalf("%s/status is not crun's JSON status: %v: %q", stateDir, err, data)
	}
	if status.Pid != tk.pid {
		t.Errorf("crun's status names pid %d, ctr task ls says %d", status.Pid, tk.pid)
	}
	if status.Bundle != d.bundle(ns, id) {
		t.Errorf("crun's status names bundle %q, want %q", status.Bundle, d.bundle(ns, id))
	}
	if _, err := os.Stat(filepath.Join(stateDir, "state.json")); err == nil {
		t.Errorf("%s has runc's state.json too: %s", stateDir, listing())
	}
	if def := filepath.Join("/run/containerd/runc", ns, id); def != stateDir {
		if _, err := os.Stat(def); err == nil {
			t.Errorf("the default runc state dir %s exists although the runtime root is %s", def, root)
		}
	}
	// crun itself knows the container in that root.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	r := run(ctx, "crun", "--root", root, "state", id)
	cancel()
	var state struct {
		Status string `json:"status"`
		Pid    int    `json:"pid"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &state); r.code != 0 || err != nil || state.Status != "running" || state.Pid != tk.pid {
		t.Errorf("crun --root %s state %s: %s (parse: %v); want status running, pid %d", root, id, r, err, tk.pid)
	}
	t.Logf("%s runs on crun: %s, status %s", id, listing(), strings.Join(strings.Fields(string(data)), " "))

	// An exec goes through crun exec with the same root.
	r = d.ctr(t, ns, "task", "exec", "--exec-id", "x1", id, "/bin/echo", "via-crun")
	if r.code != 0 || r.stdout != "via-crun\n" {
		t.Errorf("ctr task exec in the crun container: %s; want exit 0 and %q", r, "via-crun\n")
	}

	d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", id)
	d.waitStatus(t, ns, id, "STOPPED")
	d.ctr(t, ns, "task", "rm", id) // exits non-zero for a SIGKILLed task in some versions
	waitFor(t, 30*time.Second, "crun's state of "+id+" to be removed by the shim's crun delete", func() (bool, string) {
		_, err := os.Stat(stateDir)
		return os.IsNotExist(err), listing()
	})
	d.mustCtr(t, ns, "container", "rm", id)
}

// containerd.runc.v1.Options{BinaryName: "crun", Root: dir}, sent by the Go
// client as the container's runtime options, runs the container on crun
// with its state in <dir>/<namespace>, as containerd's shim keeps it.
func TestCrunRuncV1Options(t *testing.T) {
	forEachVersion(t, "crunv1", func(t *testing.T, d *daemon, ns string) {
		ensureCrun(t)
		root := filepath.Join(d.optionsDir(t, ns), "state")
		c := d.goClient(t, ns)
		d.startWithClient(t, c, ns, "v1", []oci.SpecOpts{withSpecVersion(crunSpecVersion)}, []containerd.NewContainerOpts{
			containerd.WithRuntime(runtimeName, &runcoptions.Options{BinaryName: "crun", Root: root}),
		}, nil)
		d.assertRunsOnCrun(t, ns, "v1", filepath.Join(root, ns))
	})
}

// A legacy containerd.linux.runc.RuncOptions{runtime: "crun"} Any runs the
// container on crun, with the default runtime root
// /run/containerd/runc/<namespace>. The Go client sends exactly that Any
// (typeurl.MarshalAny passes an Any through unchanged) as the container's
// runtime options, which every containerd hands to the shim as they are;
// and, on containerd 1.x, also as the task's create options, the way
// containerd 1.x's client sent these types. containerd 2.x decodes task
// create options itself and refuses any type but containerd.runc.v1.Options
// there ("type with url containerd.linux.runc.RuncOptions: not found"), so
// on 2.x the legacy types can only come as runtime options.
func TestCrunLegacyRuncOptions(t *testing.T) {
	forEachVersion(t, "crunlegacy", func(t *testing.T, d *daemon, ns string) {
		ensureCrun(t)
		c := d.goClient(t, ns)
		root := filepath.Join("/run/containerd/runc", ns)
		spec := []oci.SpecOpts{withSpecVersion(crunSpecVersion)}

		d.startWithClient(t, c, ns, "l1", spec, []containerd.NewContainerOpts{
			containerd.WithRuntime(runtimeName, legacyRuncOptions("crun")),
		}, nil)
		d.assertRunsOnCrun(t, ns, "l1", root)

		if d.v.major >= 2 {
			t.Logf("containerd %s refuses task create options other than %s: the legacy Any went as runtime options only", d.v.name, runcOptionsTypeURL)
			return
		}
		d.startWithClient(t, c, ns, "l2", spec, []containerd.NewContainerOpts{
			containerd.WithRuntime(runtimeName, nil),
		}, []containerd.NewTaskOpts{
			func(_ context.Context, _ *containerd.Client, ti *containerd.TaskInfo) error {
				ti.Options = legacyRuncOptions("crun")
				return nil
			},
		})
		d.assertRunsOnCrun(t, ns, "l2", root)
	})
}

// ctr run --runtime-config-path F (a runtimeoptions.v1.Options naming F)
// with F a TOML file of binary_name and root runs the container on crun.
// The spec comes from a file (ctr run --config) to give it an ociVersion
// crun 1.8.1 accepts (see crunSpecVersion).
func TestCrunConfigFile(t *testing.T) {
	forEachVersion(t, "crunconfig", func(t *testing.T, d *daemon, ns string) {
		ensureCrun(t)
		dir := d.optionsDir(t, ns)
		root := filepath.Join(dir, "state")
		config := filepath.Join(dir, "tether.toml")
		body := fmt.Sprintf("# Tether runtime options\nbinary_name = \"crun\"\nroot = %q\n", root)
		if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		spec := filepath.Join(dir, "spec.json")
		writeSpec(t, spec, ns, "f1", sleeper, withSpecVersion(crunSpecVersion))
		d.mustCtr(t, ns, "run", "-d", "--runtime", runtimeName, "--runtime-config-path", config, "--config", spec, "f1")
		d.assertRunsOnCrun(t, ns, "f1", filepath.Join(root, ns))
	})
}

// ShimCgroup (containerd.runc.v1.Options, via the Go client) puts the shim
// into that cgroup: its /proc/<pid>/cgroup names it in every v1 hierarchy.
// The cgroup is made in every hierarchy beforehand and removed afterwards.
func TestShimCgroup(t *testing.T) {
	forEachVersion(t, "shimcg", func(t *testing.T, d *daemon, ns string) {
		// The e2e- prefix lets the harness's global cleanup remove it after a killed run.
		cg := "/e2e-tether-shim-" + d.v.tag + d.r.tag
		dirs := makeCgroup(t, cg)
		t.Cleanup(func() {
			d.cleanupNamespace(t, ns) // the shim exits with its last container
			removeCgroupDirs(t, dirs)
		})
		c := d.goClient(t, ns)
		d.startWithClient(t, c, ns, "s1", nil, []containerd.NewContainerOpts{
			containerd.WithRuntime(runtimeName, &runcoptions.Options{ShimCgroup: cg}),
		}, nil)
		s := d.shimOf(t, ns, "s1")
		var bad []string
		waitFor(t, 10*time.Second, fmt.Sprintf("shim %d in cgroup %s", s.pid, cg), func() (bool, string) {
			cgs, err := procCgroups(s.pid)
			if err != nil {
				return false, err.Error()
			}
			bad = nil
			for h, p := range cgs {
				if h != "" && p != cg { // "" is the unified hierarchy, which v1 shims leave alone
					bad = append(bad, h+":"+p)
				}
			}
			return len(bad) == 0, fmt.Sprintf("hierarchies where the shim is elsewhere: %v; /proc/%d/cgroup: %v", bad, s.pid, cgs)
		})
		cgs, _ := procCgroups(s.pid)
		t.Logf("/proc/%d/cgroup of the shim: %v", s.pid, cgs)
		// The container is not in the shim's cgroup.
		tk := d.waitStatus(t, ns, "s1", "RUNNING")
		if cgs, err := procCgroups(tk.pid); err != nil || cgs["memory"] == cg {
			t.Errorf("the container's init %d is in the shim's cgroup (or unreadable: %v): %v", tk.pid, err, cgs)
		}
	})
}

// makeCgroup creates cgroup path in every cgroup hierarchy mounted under
// /sys/fs/cgroup (cpuset gets its parent's cpus and mems, without which no
// process can join) and returns the directories it made.
func makeCgroup(t *testing.T, path string) []string {
	t.Helper()
	var dirs []string
	points := []string{}
	for p := range v1Hierarchies() {
		points = append(points, p)
	}
	if testkit.Mounted("/sys/fs/cgroup/unified") {
		points = append(points, "/sys/fs/cgroup/unified")
	}
	if len(points) == 0 {
		t.Fatal("no cgroup v1 hierarchy is mounted under /sys/fs/cgroup")
	}
	for _, p := range points {
		dir := filepath.Join(p, path)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			removeCgroupDirs(t, dirs)
			t.Fatalf("mkdir %s: %v", dir, err)
		}
		dirs = append(dirs, dir)
		if strings.Contains(v1Hierarchies()[p], "cpuset") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := readTrim(filepath.Join(p, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644)
				}
				if err != nil {
					removeCgroupDirs(t, dirs)
					t.Fatalf("set %s of %s: %v", f, dir, err)
				}
			}
		}
	}
	return dirs
}

// removeCgroupDirs removes cgroup directories once no process is left in them.
func removeCgroupDirs(t *testing.T, dirs []string) {
	t.Helper()
	for _, dir := range dirs {
		var err error
		for deadline := time.Now().Add(30 * time.Second); ; {
			if err = syscall.Rmdir(dir); err == nil || os.IsNotExist(err) {
				err = nil
				break
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			pids, _ := cgroupPids(dir)
			t.Errorf("cleanup: rmdir %s: %v (processes in it: %v)", dir, err, pids)
		}
	}
}
