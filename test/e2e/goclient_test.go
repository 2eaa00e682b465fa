package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/tether-shim/tether/testkit"
)

// Helpers for the tests of issue 5 (runtime options and cgroups): the
// containerd Go client (v2.4.2, which speaks to 1.6 and 2.x daemons alike),
// the cgroup v1 files of a container, and crun's prerequisites.

// goClient connects the containerd Go client to d with ns as its default
// namespace. The default runtime is set so that the client never asks the
// namespace for it.
func (d *daemon) goClient(t *testing.T, ns string) *containerd.Client {
	t.Helper()
	c, err := containerd.New(d.Sock,
		containerd.WithDefaultNamespace(ns),
		containerd.WithDefaultRuntime(runtimeName),
		containerd.WithTimeout(10*time.Second))
	if err != nil {
		t.Fatalf("containerd client for %s: %v", d.Sock, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// clientCtx is a context in namespace ns with a deadline for one client call.
func clientCtx(ns string) (context.Context, context.CancelFunc) {
	return context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), 2*time.Minute)
}

// startWithClient creates container id on the busybox rootfs directory with
// the Go client, running args (the sleeper if none), creates its task with
// null IO and starts it; it waits until ctr task ls shows it RUNNING.
// Whatever it creates is removed by the namespace cleanup of forEachVersion.
// sopts are applied to the spec after the rootfs and the args.
func (d *daemon) startWithClient(t *testing.T, c *containerd.Client, ns, id string, sopts []oci.SpecOpts, copts []containerd.NewContainerOpts, topts []containerd.NewTaskOpts, args ...string) containerd.Task {
	t.Helper()
	if len(args) == 0 {
		args = sleeper
	}
	ctx, cancel := clientCtx(ns)
	defer cancel()
	sopts = append([]oci.SpecOpts{oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(args...)}, sopts...)
	all := append([]containerd.NewContainerOpts{containerd.WithNewSpec(sopts...)}, copts...)
	cont, err := c.NewContainer(ctx, id, all...)
	if err != nil {
		t.Fatalf("NewContainer %s: %v", id, err)
	}
	task, err := cont.NewTask(ctx, cio.NullIO, topts...)
	if err != nil {
		t.Fatalf("NewTask %s: %v", id, err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("Start %s: %v", id, err)
	}
	d.waitStatus(t, ns, id, "RUNNING")
	return task
}

// runDetachedCmd is ctr run -d of container id on the busybox rootfs
// directory with the given ctr flags and command. Unlike runDetached it does
// not wait for RUNNING: the command may end at once.
func (d *daemon) runDetachedCmd(t *testing.T, ns, id string, flags []string, command ...string) {
	t.Helper()
	args := append([]string{"run", "-d", "--runtime", runtimeName}, flags...)
	args = append(args, "--rootfs", rootfsDir, id)
	args = append(args, command...)
	d.mustCtr(t, ns, args...)
}

// cgroupsPath is linux.cgroupsPath of the container's config.json (ctr and
// the Go client make it /<namespace>/<id>).
func (d *daemon) cgroupsPath(t *testing.T, ns, id string) string {
	t.Helper()
	linux, _ := d.spec(t, ns, id)["linux"].(map[string]any)
	p, _ := linux["cgroupsPath"].(string)
	if !strings.HasPrefix(p, "/") {
		t.Fatalf("config.json of %s: linux.cgroupsPath %q is not an absolute cgroupfs path", id, p)
	}
	return p
}

// cgroupFile is a file of the container's cgroup in the v1 hierarchy of controller.
func (d *daemon) cgroupFile(t *testing.T, ns, id, controller, name string) string {
	t.Helper()
	return filepath.Join("/sys/fs/cgroup", controller, d.cgroupsPath(t, ns, id), name)
}

func readTrim(path string) (string, error) {
	data, err := os.ReadFile(path)
	return strings.TrimSpace(string(data)), err
}

// procState is the state letter of /proc/<pid>/stat (R, S, D, T, Z, ...).
func procState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "gone"
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return "?"
	}
	return s[i+2 : i+3]
}

// cgroupPids lists the pids in cgroup.procs of a cgroup directory.
func cgroupPids(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// procCgroups maps each hierarchy of /proc/<pid>/cgroup ("memory",
// "cpu,cpuacct", "name=systemd", "" for the unified one) to the pid's path in it.
func procCgroups(pid int) (map[string]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			out[parts[1]] = parts[2]
		}
	}
	return out, nil
}

// v1Hierarchies lists the cgroup v1 hierarchies mounted under /sys/fs/cgroup
// (mount point and super options, e.g. "rw,memory").
func v1Hierarchies() map[string]string {
	out := map[string]string{}
	for _, m := range testkit.Mounts() {
		if m.FSType == "cgroup" && strings.HasPrefix(m.Point, "/sys/fs/cgroup/") {
			out[m.Point] = m.SuperOpts
		}
	}
	return out
}

// crunSpecVersion is the ociVersion the crun tests give their specs.
// Debian's crun 1.8.1 refuses any ociVersion above 1.1 ("unknown version
// specified"), and containerd 2.x and its Go client write 1.3.0; the specs
// the tests make use nothing newer than 1.1, so they say 1.1.0.
const crunSpecVersion = "1.1.0"

// withSpecVersion sets the spec's ociVersion.
func withSpecVersion(v string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Version = v
		return nil
	}
}

// writeSpec writes the default spec of container id in namespace ns on the
// busybox rootfs directory, running args, with opts applied, to path (for
// ctr run --config).
func writeSpec(t *testing.T, path, ns, id string, args []string, opts ...oci.SpecOpts) {
	t.Helper()
	ctx, cancel := clientCtx(ns)
	defer cancel()
	opts = append([]oci.SpecOpts{oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(args...)}, opts...)
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: id}, opts...)
	if err != nil {
		t.Fatalf("generate the spec of %s: %v", id, err)
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err == nil {
		err = os.WriteFile(path, data, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
}

var hugetlbOnce struct {
	sync.Once
	err error
}

// ensureCrun checks that crun is installed and that it can run containers on
// this host: Debian's crun 1.8.1 refuses a hybrid cgroup layout while the
// hugetlb controller sits in the cgroup2 hierarchy, so hugetlb is mounted as
// a v1 hierarchy if it is not yet. Failing to do so fails the test.
func ensureCrun(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("crun"); err != nil {
		t.Fatalf("crun is not installed (apt-get install crun, or scripts/install-deps.sh): %v", err)
	}
	hugetlbOnce.Do(func() {
		const dir = "/sys/fs/cgroup/hugetlb"
		if testkit.Mounted(dir) {
			return
		}
		if _, err := os.Stat("/sys/fs/cgroup/unified"); err != nil {
			// Not the hybrid layout: nothing to do.
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			hugetlbOnce.err = err
			return
		}
		if err := syscall.Mount("cgroup", dir, "cgroup", 0, "hugetlb"); err != nil {
			hugetlbOnce.err = fmt.Errorf("mount -t cgroup -o hugetlb cgroup %s: %w", dir, err)
		}
	})
	if hugetlbOnce.err != nil {
		t.Fatalf("crun needs the hugetlb controller on cgroup v1 on this hybrid host: %v", hugetlbOnce.err)
	}
}
