package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
)

// configBody is the runtimeoptions.v1.Options that containerd's CRI plugin
// (1.7 and later) sends for a runtime of any type but runc's: the runtime's
// options table, marshalled to TOML, as config_body.
func configBody(body string) *runtimeoptions.Options {
	return &runtimeoptions.Options{ConfigBody: []byte(body)}
}

// A config_body of CamelCase keys, as operators write a CRI runtime's
// options table, runs the container on crun with crun's state in
// <Root>/<namespace>, as containerd's shim keeps it.
// Before config_body was read, this ran plain runc.
func TestCrunConfigBody(t *testing.T) {
	forEachVersion(t, "crunbody", func(t *testing.T, d *daemon, ns string) {
		ensureCrun(t)
		root := filepath.Join(d.optionsDir(t, ns), "state")
		c := d.goClient(t, ns)
		d.startWithClient(t, c, ns, "b1", []oci.SpecOpts{withSpecVersion(crunSpecVersion)}, []containerd.NewContainerOpts{
			containerd.WithRuntime(runtimeName, configBody(fmt.Sprintf("BinaryName = 'crun'\nRoot = %q\n", root))),
		}, nil)
		d.assertRunsOnCrun(t, ns, "b1", filepath.Join(root, ns))
	})
}

// A config_body key Tether does not know fails the task's creation with an
// error naming the key, and leaves nothing running.
func TestConfigBodyUnknownKey(t *testing.T) {
	forEachVersion(t, "bodykey", func(t *testing.T, d *daemon, ns string) {
		c := d.goClient(t, ns)
		ctx, cancel := clientCtx(ns)
		defer cancel()
		cont, err := c.NewContainer(ctx, "k1",
			containerd.WithNewSpec(oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(sleeper...)),
			containerd.WithRuntime(runtimeName, configBody("BinaryName = 'runc'\nSystemdCgroups = true\n")))
		if err != nil {
			t.Fatalf("NewContainer: %v", err)
		}
		defer cont.Delete(ctx)
		task, err := cont.NewTask(ctx, cio.NullIO)
		if err == nil {
			task.Delete(ctx, containerd.WithProcessKill)
			t.Fatal("NewTask with an unknown option key succeeded")
		}
		if !strings.Contains(err.Error(), `"SystemdCgroups"`) || !strings.Contains(err.Error(), "unknown key") {
			t.Fatalf("NewTask error %q does not name the unknown key SystemdCgroups", err)
		}
		t.Logf("refused as expected: %v", err)
	})
}

// recordingRuntime writes a runtime wrapper into dir that appends each
// invocation's arguments, one invocation a line, to the returned file, then
// runs runc with them.
func recordingRuntime(t *testing.T, dir string) (bin, record string) {
	t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	bin, record = filepath.Join(dir, "record-runc"), filepath.Join(dir, "args")
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$*\" >>%q\nexec %q \"$@\"\n", record, runc)
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, record
}

// createArgsOf is the argument list of the recorded `create` of id.
func createArgsOf(t *testing.T, record, id string) []string {
	t.Helper()
	data, _ := os.ReadFile(record)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if slices.Contains(f, "create") && len(f) > 0 && f[len(f)-1] == id {
			return f
		}
	}
	t.Fatalf("no runtime create of %s was recorded; the runtime got:\n%s", id, data)
	return nil
}

// The systemd cgroup driver reaches the runtime as --systemd-cgroup both
// when a config_body says SystemdCgroup = true (a kubeadm node's CRI
// config) and when the spec's cgroupsPath has systemd's slice:prefix:name
// form without any option (Docker under systemd). A plain cgroupfs path
// without the option gets no flag. This host has no systemd, so runc's
// create fails for the first two; what is checked is what the shim asked
// of the runtime, and that the failure comes back as the runtime's error
// with nothing left running. The VM layer (test/vm) runs them for real.
func TestSystemdCgroupFlag(t *testing.T) {
	forEachVersion(t, "sdflag", func(t *testing.T, d *daemon, ns string) {
		dir := d.optionsDir(t, ns)
		bin, record := recordingRuntime(t, dir)
		c := d.goClient(t, ns)
		ctx, cancel := clientCtx(ns)
		defer cancel()
		tryCreate := func(id, cgroupsPath, body string) error {
			cont, err := c.NewContainer(ctx, id,
				containerd.WithNewSpec(oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(sleeper...),
					func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
						s.Linux.CgroupsPath = cgroupsPath
						return nil
					}),
				containerd.WithRuntime(runtimeName, configBody(fmt.Sprintf("BinaryName = %q\n%s", bin, body))))
			if err != nil {
				t.Fatalf("NewContainer %s: %v", id, err)
			}
			t.Cleanup(func() { cont.Delete(context.WithoutCancel(ctx)) })
			task, err := cont.NewTask(ctx, cio.NullIO)
			if err == nil {
				t.Cleanup(func() { task.Delete(context.WithoutCancel(ctx), containerd.WithProcessKill) })
			}
			return err
		}

		err := tryCreate("opt1", "/"+ns+"/opt1", "SystemdCgroup = true\n")
		if args := createArgsOf(t, record, "opt1"); !slices.Contains(args, "--systemd-cgroup") {
			t.Errorf("config_body SystemdCgroup = true: runtime create args %q lack --systemd-cgroup", args)
		}
		t.Logf("SystemdCgroup = true without systemd on this host: %v", err)

		// The path alone asks for the systemd driver only where systemd
		// runs: without it, the driver cannot work and the path is a
		// cgroupfs name, as with containerd's shim.
		_, sdErr := os.Stat("/run/systemd/system")
		systemd := sdErr == nil
		err = tryCreate("path1", "system.slice:docker:path1", "")
		if args := createArgsOf(t, record, "path1"); slices.Contains(args, "--systemd-cgroup") != systemd {
			t.Errorf("cgroupsPath system.slice:docker:path1 (systemd running: %v): runtime create args %q", systemd, args)
		}
		t.Logf("systemd-form cgroupsPath, systemd running %v: %v", systemd, err)

		if err := tryCreate("plain1", "/"+ns+"/plain1", ""); err != nil {
			t.Errorf("cgroupfs path without the option: %v", err)
		}
		if args := createArgsOf(t, record, "plain1"); slices.Contains(args, "--systemd-cgroup") {
			t.Errorf("cgroupfs path without the option: runtime create args %q have --systemd-cgroup", args)
		}
	})
}
