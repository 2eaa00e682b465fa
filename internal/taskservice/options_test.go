package taskservice

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/testutil"
)

// createArgs creates id with the given config.json and options, and returns
// the arguments the stub runtime's create got.
func createArgs(t *testing.T, h *harness, id, spec string, options *anypb.Any) []string {
	t.Helper()
	ctx := ctxT(t)
	bundle := h.bundle(id, map[string]string{configKey: spec, "exit-code": "0"})
	if _, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: id, Bundle: bundle, Options: options}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	t.Cleanup(func() {
		h.svc.Kill(ctx, &taskv2.KillRequest{ID: id, Signal: 9})
		h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: id})
	})
	data, err := os.ReadFile(filepath.Join(bundle, "stub-create-args"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(data), "\n")
}

// TestRegressionSystemdCgroupsPathWithoutOption: a spec whose cgroupsPath
// is in systemd's "slice:prefix:name" form (Docker under systemd writes
// system.slice:docker:<id> and never sets SystemdCgroup) used to reach runc
// without --systemd-cgroup, which then made a cgroupfs directory of that
// name outside the pod's cgroup.
func TestRegressionSystemdCgroupsPathWithoutOption(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	args := createArgs(t, h, "docker1", `{"linux":{"cgroupsPath":"system.slice:docker:docker1"}}`, h.options)
	if !slices.Contains(args, "--systemd-cgroup") {
		t.Errorf("systemd-form cgroupsPath: runtime args %q lack --systemd-cgroup", args)
	}
	args = createArgs(t, h, "plain1", `{"linux":{"cgroupsPath":"/default/plain1"}}`, h.options)
	if slices.Contains(args, "--systemd-cgroup") {
		t.Errorf("cgroupfs cgroupsPath: runtime args %q have --systemd-cgroup", args)
	}
}

// TestRegressionConfigBodySystemdCgroup: `SystemdCgroup = true` in a CRI
// runtime's options table reaches the shim as a runtimeoptions.v1.Options
// config_body, which used to be dropped: runc got no --systemd-cgroup.
func TestRegressionConfigBodySystemdCgroup(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	body := "BinaryName = '" + self + "'\nRoot = '" + h.root + "'\nSystemdCgroup = true\n"
	b, err := proto.Marshal(&runtimeoptions.Options{ConfigBody: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	opts := &anypb.Any{TypeUrl: "runtimeoptions.v1.Options", Value: b}
	args := createArgs(t, h, "cri1", `{"linux":{"cgroupsPath":"/kubepods/pod1/cri1"}}`, opts)
	if !slices.Contains(args, "--systemd-cgroup") {
		t.Errorf("runtime args %q lack --systemd-cgroup", args)
	}
}

// TestRegressionFailedCreateLeftRuntimeState: a create that failed after
// the runtime made its state (a failing hook) with a message mentioning
// "already exists" was classed AlreadyExists, which Create takes for
// another container's state and leaves alone: the half-created container
// stayed in the runtime root. Now only the runtime's own duplicate-id
// message is AlreadyExists, and the failed create is deleted.
func TestRegressionFailedCreateLeftRuntimeState(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	ctx := ctxT(t)
	msg := "error running hook #0: exit status 1, stderr: mkdir /var/lib/x: file already exists"
	bundle := h.bundle("hook1", map[string]string{"stub-fail-late": msg})
	_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "hook1", Bundle: bundle, Options: h.options})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("create = %v, want the hook's failure", err)
	}
	if code := codeOfErr(err); code == codes.AlreadyExists {
		t.Errorf("a failed hook is reported as AlreadyExists: %v", err)
	}
	if _, err := os.Stat(filepath.Join(h.runRoot(), "hook1")); !os.IsNotExist(err) {
		t.Errorf("the runtime still has the failed container's state (stat: %v)", err)
	}
}

// TestRootOptionIsNamespaced: a Root in the runtime options is used as
// <Root>/<namespace>, as containerd's shim does, so that `runc --root
// <Root>/<namespace>` (and containerd's own tests) find the container there;
// without options the root is /run/containerd/runc/<namespace>.
func TestRootOptionIsNamespaced(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	args := createArgs(t, h, "rooted", `{}`, h.options)
	want := filepath.Join(h.root, "test")
	if i := slices.Index(args, "--root"); i < 0 || i+1 >= len(args) || args[i+1] != want {
		t.Fatalf("runtime args %q: want --root %s", args, want)
	}
	if _, err := os.Stat(filepath.Join(want, "rooted")); err != nil {
		t.Fatalf("no runtime state under <Root>/<namespace>: %v", err)
	}
}

// TestSystemdFormCgroupsPathWithoutSystemdIsCgroupfs: on a host without
// systemd, a cgroupsPath in systemd's form (containerd 1.6's CRI writes
// "test.slice:cri-containerd:<id>" for a ".slice" parent whatever its
// driver) goes to the runtime without --systemd-cgroup, as with
// containerd's shim: the systemd driver cannot work there at all.
func TestSystemdFormCgroupsPathWithoutSystemdIsCgroupfs(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	h.noSystemd = true
	args := createArgs(t, h, "cri16", `{"linux":{"cgroupsPath":"test.slice:cri-containerd:cri16"}}`, h.options)
	if slices.Contains(args, "--systemd-cgroup") {
		t.Errorf("systemd-form cgroupsPath on a host without systemd: runtime args %q have --systemd-cgroup", args)
	}
}
