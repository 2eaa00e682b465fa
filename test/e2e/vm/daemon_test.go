//go:build tethervm

package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/tether-shim/tether/testkit"
)

// cdVersion is one containerd release: its binaries.
type cdVersion struct {
	name  string // as in TETHER_VM_VERSIONS
	tag   string // name without dots, for paths
	major int
	bin   string // directory of containerd, ctr and containerd-shim-runc-v2
}

// lookupVersion finds containerd name: "1.6" is Debian's in /usr/bin, any
// other is $TETHER_DEPS/containerd-<name>/bin. A missing binary is an error.
func lookupVersion(name string) (*cdVersion, error) {
	v := &cdVersion{name: name, tag: strings.ReplaceAll(name, ".", "")}
	var err error
	if v.major, err = strconv.Atoi(strings.SplitN(name, ".", 2)[0]); err != nil {
		return nil, fmt.Errorf("containerd version %q: %w", name, err)
	}
	if name == "1.6" {
		v.bin = "/usr/bin"
	} else {
		deps := os.Getenv(envDeps)
		if deps == "" {
			deps = "/opt/tether"
		}
		v.bin = filepath.Join(deps, "containerd-"+name, "bin")
	}
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2"} {
		if st, err := os.Stat(filepath.Join(v.bin, b)); err != nil || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("containerd %s: %s/%s is missing or not executable (%v)", name, v.bin, b, err)
		}
	}
	return v, nil
}

// daemon is a private containerd of one version, started by startDaemon and
// stopped by the test's cleanup.
type daemon struct {
	testkit.Daemon
	v *cdVersion
}

// startDaemon starts a private containerd of version v named after v and
// suffix, with its CRI plugin off; its PATH has the Tether shim first, then
// v's own binaries (so io.containerd.runc.v2 is v's stock shim). Stopped and
// removed at cleanup.
func startDaemon(t *testing.T, v *cdVersion, suffix string) *daemon {
	t.Helper()
	return startCRIDaemon(t, v, suffix, "")
}

// startCRIDaemon is startDaemon with the CRI plugin on and criConfig (TOML
// in v's config version) appended to the config, unless criConfig is empty.
func startCRIDaemon(t *testing.T, v *cdVersion, suffix, criConfig string) *daemon {
	t.Helper()
	tag := v.tag + "-" + suffix
	d := &daemon{v: v, Daemon: testkit.Daemon{
		Name:       v.name,
		Major:      v.major,
		Containerd: filepath.Join(v.bin, "containerd"),
		Ctr:        filepath.Join(v.bin, "ctr"),
		Root:       filepath.Join(libBase, tag),
		State:      filepath.Join(runBase, tag),
		Sock:       filepath.Join(runBase, tag+".sock"),
		Config:     filepath.Join(libBase, tag+".toml"),
		LogPath:    filepath.Join(logDir, "containerd-"+tag+".log"),
		CRIConfig:  criConfig,
	}}
	for _, dir := range []string{libBase, runBase} {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	d.RemoveLeftovers(killShims)
	if err := d.WriteConfig("debug"); err != nil {
		t.Fatalf("containerd %s config: %v", v.name, err)
	}
	path := shimDir + ":" + v.bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	env := append(testkit.FilterEnv(os.Environ(), "PATH"), "PATH="+path)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := d.Start(ctx, testkit.StartOptions{Env: env, Poll: 500 * time.Millisecond, TailLines: 60}); err != nil {
		t.Fatalf("containerd %s: %v", v.name, err)
	}
	t.Cleanup(func() {
		if err := d.Stop(20 * time.Second); err != nil {
			t.Errorf("stopping containerd %s: %v", v.name, err)
		}
		d.RemoveLeftovers(killShims)
	})
	return d
}

// client is a containerd Go client for d, closed at cleanup.
func (d *daemon) client(t *testing.T) *containerd.Client {
	t.Helper()
	c, err := containerd.New(d.Sock, containerd.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatalf("containerd client for %s: %v", d.Sock, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// killShims SIGKILLs leftover shims and the processes of the test cgroups.
func killShims(ps []testkit.Proc) {
	for _, p := range ps {
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
	}
	testkit.KillCgroup("/" + cgroupRoot + "/")
	testkit.KillCgroup("/" + systemdSlice + "/")
	testkit.KillCgroup("/" + kubepodsSlice + "/")
}
