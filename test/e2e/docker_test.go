package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// Tether as a Docker runtime: dockerd 28 (built by scripts/install-deps.sh)
// with the runtimes of testdata/docker/daemon.json, which the README shows
// verbatim, on a private containerd 2.4.2. No network (--bridge=none, the
// containers run with --network none), the cgroupfs driver (this host has
// no systemd), dockerd's own image store (overlay2 graph driver, Docker's
// default before 29), an image loaded from a tarball built here.
const (
	dockerVersion    = "28.5.2"      // of dockerd and the docker CLI
	dockerContainerd = "2.4.2"       // the containerd dockerd uses
	dockerNamespace  = "e2e-docker"  // dockerd's --containerd-namespace
	dockerCgroups    = "/e2e-docker" // dockerd's --cgroup-parent
	dockerImage      = "tether/busybox:e2e"
	dockerTestdata   = "testdata/docker"
	// dockerCrunConfigPath is the ConfigPath of the tether-crun runtime in
	// testdata/docker/daemon.json; the test points it at its own copy of
	// testdata/docker/crun.toml.
	dockerCrunConfigPath = "/etc/tether/crun.toml"
)

// dockerDaemon is the private dockerd and what the tests set up for it.
type dockerDaemon struct {
	cd      *daemon  // its containerd
	dockerd string   // binaries
	cli     string   //
	dir     string   // data root, config and option files
	execDir string   // --exec-root
	sock    string   // API socket
	env     []string // of the docker CLI
	logPath string

	cmd  *exec.Cmd
	done chan struct{} // closed when dockerd has exited
	logf *os.File

	broken error // set when the start failed; later tests fail fast

	recordArgs  string // file the tether-record runtime's wrapper appends its arguments to
	recordRoot  string // Root of tether-record's config file
	droppedArgs string // file the wrapper named by tether-binaryname's options would append to
}

// dockerD is started by the first Docker test and stopped by TestMain.
var dockerD *dockerDaemon

func dockerBinDir() string {
	deps := os.Getenv("TETHER_DEPS")
	if deps == "" {
		deps = "/opt/tether"
	}
	return filepath.Join(deps, "docker-"+dockerVersion, "bin")
}

// getDocker returns the running dockerd, starting it (and its containerd,
// and loading the image) on first use.
func getDocker(t *testing.T) *dockerDaemon {
	t.Helper()
	if !isTether() {
		t.Fatalf("the Docker tests configure Tether's runtime type; %s=%s is not supported", envRuntime, runtimeName)
	}
	if dockerD == nil {
		dockerD = &dockerDaemon{}
		if err := dockerD.start(); err != nil {
			dockerD.broken = err
		}
	}
	dd := dockerD
	if dd.broken != nil {
		t.Fatalf("dockerd: %v", dd.broken)
	}
	if !dd.running() {
		t.Fatalf("dockerd is not running (log %s):\n%s", dd.logPath, tailFile(dd.logPath, 60))
	}
	return dd
}

func (dd *dockerDaemon) running() bool {
	if dd.done == nil {
		return false
	}
	select {
	case <-dd.done:
		return false
	default:
		return true
	}
}

func (dd *dockerDaemon) start() error {
	dd.dockerd = filepath.Join(dockerBinDir(), "dockerd")
	dd.cli = filepath.Join(dockerBinDir(), "docker")
	for _, b := range []string{dd.dockerd, dd.cli} {
		if st, err := os.Stat(b); err != nil || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is missing or not executable (run scripts/install-deps.sh): %v", b, err)
		}
	}
	v, err := lookupVersion(dockerContainerd)
	if err != nil {
		return err
	}
	cd := &daemon{
		Daemon: testkit.Daemon{
			Name:       v.name + " (docker)",
			Major:      v.major,
			Containerd: v.containerd,
			Ctr:        v.ctr,
			Root:       filepath.Join(libBase, "docker-cd"),
			State:      filepath.Join(runBase, "docker-cd"),
			Sock:       filepath.Join(runBase, "docker-cd.sock"),
			Config:     filepath.Join(libBase, "docker-cd.toml"),
			LogPath:    filepath.Join(libBase, "docker-cd.log"),
		},
		v:       v,
		r:       runcs[0],
		sockets: map[string][]string{},
		// containerd's own containerd-shim-runc-v2 of the same release, for
		// dockerd's stock runc runtime, the control in the tests that compare.
		path: filepath.Dir(v.containerd),
	}
	// TestMain stops it (after dockerd).
	daemons["docker"] = cd
	dd.cd = cd
	if err := cd.start(true); err != nil {
		return err
	}

	dd.dir = filepath.Join(libBase, "docker")
	dd.execDir = filepath.Join(runBase, "docker")
	dd.sock = filepath.Join(dd.execDir, "docker.sock")
	dd.logPath = filepath.Join(libBase, "docker.log")
	for _, d := range []string{dd.dir, dd.execDir, filepath.Join(dd.dir, "cli")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	config, err := dd.writeConfig()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(dd.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(dd.dockerd,
		"--config-file", config,
		"--data-root", filepath.Join(dd.dir, "data"),
		"--exec-root", filepath.Join(dd.execDir, "exec"),
		"--pidfile", filepath.Join(dd.execDir, "dockerd.pid"),
		"-H", "unix://"+dd.sock,
		"--containerd", cd.Sock,
		"--containerd-namespace", dockerNamespace,
		"--containerd-plugins-namespace", dockerNamespace+"-plugins",
		"--bridge", "none", "--iptables=false", "--ip6tables=false", "--userland-proxy=false",
		"--exec-opt", "native.cgroupdriver=cgroupfs",
		"--cgroup-parent", dockerCgroups,
		"--debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	// dockerd runs `runc features` for its stock runtime; the shim is started
	// by containerd, whose PATH has shimDir first.
	cmd.Env = append(testkit.FilterEnv(os.Environ(), "PATH", "NOTIFY_SOCKET", "DOCKER_HOST", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE"),
		"PATH="+shimDir+":"+os.Getenv("PATH"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	dd.cmd, dd.done, dd.logf = cmd, done, logf
	dd.env = append(testkit.FilterEnv(os.Environ(), "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG"),
		"DOCKER_HOST=unix://"+dd.sock, "DOCKER_CONFIG="+filepath.Join(dd.dir, "cli"))

	// Wait until the API answers.
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r := testkit.Run(ctx, dd.env, dd.cli, "version", "--format", "{{.Server.Version}}")
		cancel()
		if r.Code == 0 {
			break
		}
		select {
		case <-done:
			return fmt.Errorf("dockerd exited during start: %v\n%s", cmd.ProcessState, tailFile(dd.logPath, 60))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd did not answer within 60s: docker version: exit %d stderr %q\n%s", r.Code, r.Stderr, tailFile(dd.logPath, 60))
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The image: the busybox rootfs with Docker's manifest.json.
	tarball := filepath.Join(dd.dir, "busybox-docker.tar")
	if err := testkit.BuildDockerImageTar(rootfsDir, tarball, dockerImage, imageMarker, "tether e2e: busybox rootfs"); err != nil {
		return fmt.Errorf("image tarball: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := testkit.Run(ctx, dd.env, dd.cli, "load", "-i", tarball)
	if r.Code != 0 || !strings.Contains(r.Stdout, "Loaded image: "+dockerImage) {
		return fmt.Errorf("docker load -i %s: exit %d (err %v) stdout %q stderr %q", tarball, r.Code, r.Err, r.Stdout, r.Stderr)
	}
	return nil
}

// writeConfig writes dockerd's daemon.json: the runtimes of
// testdata/docker/daemon.json, with tether-crun's ConfigPath pointing at a
// copy of testdata/docker/crun.toml, plus the runtimes only the tests use:
//
//   - tether-abs: runtimeType is the absolute path of the shim binary;
//   - tether-record: options {"ConfigPath": <file>}, where the file names a
//     recording runc wrapper as BinaryName and a Root of its own;
//   - tether-binaryname: options {"BinaryName": <another wrapper>, "Root":
//     <dir>}, keys that dockerd drops for a runtime type other than runc's.
func (dd *dockerDaemon) writeConfig() (string, error) {
	raw, err := os.ReadFile(filepath.Join(dockerTestdata, "daemon.json"))
	if err != nil {
		return "", err
	}
	var cfg struct {
		Runtimes map[string]map[string]any `json:"runtimes"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return "", fmt.Errorf("testdata/docker/daemon.json: %w", err)
	}
	crunOpts, _ := cfg.Runtimes["tether-crun"]["options"].(map[string]any)
	if crunOpts["ConfigPath"] != dockerCrunConfigPath {
		return "", fmt.Errorf("testdata/docker/daemon.json: tether-crun's options are %v; want ConfigPath %s", crunOpts, dockerCrunConfigPath)
	}
	crunToml := filepath.Join(dd.dir, "crun.toml")
	if err := testkit.CopyFile(filepath.Join(dockerTestdata, "crun.toml"), crunToml, 0o644); err != nil {
		return "", err
	}
	crunOpts["ConfigPath"] = crunToml

	cfg.Runtimes["tether-abs"] = map[string]any{"runtimeType": shimBin}

	wrapper, record, err := writeRecordingRuntime(dd.dir, "record")
	if err != nil {
		return "", err
	}
	dd.recordArgs, dd.recordRoot = record, filepath.Join(dd.execDir, "record-root")
	recordToml := filepath.Join(dd.dir, "record.toml")
	if err := os.WriteFile(recordToml, fmt.Appendf(nil, "BinaryName = %q\nRoot = %q\n", wrapper, dd.recordRoot), 0o644); err != nil {
		return "", err
	}
	cfg.Runtimes["tether-record"] = map[string]any{
		"runtimeType": runtimeName,
		"options":     map[string]any{"ConfigPath": recordToml},
	}

	dropped, droppedArgs, err := writeRecordingRuntime(dd.dir, "dropped")
	if err != nil {
		return "", err
	}
	dd.droppedArgs = droppedArgs
	cfg.Runtimes["tether-binaryname"] = map[string]any{
		"runtimeType": runtimeName,
		"options":     map[string]any{"BinaryName": dropped, "Root": filepath.Join(dd.execDir, "dropped-root")},
	}

	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dd.dir, "daemon.json")
	return path, os.WriteFile(path, out, 0o644)
}

// writeRecordingRuntime writes dir/<name>-runc, a runtime that appends its
// arguments (one invocation a line) to dir/<name>-args and runs runc with them.
func writeRecordingRuntime(dir, name string) (bin, record string, err error) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return "", "", err
	}
	bin, record = filepath.Join(dir, name+"-runc"), filepath.Join(dir, name+"-args")
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$*\" >>%q\nexec %q \"$@\"\n", record, runc)
	return bin, record, os.WriteFile(bin, []byte(script), 0o755)
}

// stop stops dockerd: SIGTERM, then SIGKILL after 30s.
func (dd *dockerDaemon) stop() error {
	if dd.cmd == nil {
		return nil
	}
	defer dd.logf.Close()
	_ = dd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-dd.done:
		return nil
	case <-time.After(30 * time.Second):
	}
	_ = dd.cmd.Process.Kill()
	select {
	case <-dd.done:
		return errors.New("did not stop on SIGTERM within 30s; killed")
	case <-time.After(10 * time.Second):
		return errors.New("did not exit even on SIGKILL within 10s")
	}
}

// stopDocker stops the dockerd of the Docker tests, if one was started.
func stopDocker() {
	if dockerD == nil {
		return
	}
	if err := dockerD.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: stopping dockerd: %v\n", err)
	}
}

// docker runs the docker CLI with a 2 minute deadline and logs what it did.
func (dd *dockerDaemon) docker(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r := fromResult(testkit.Run(ctx, dd.env, dd.cli, args...))
	t.Logf("docker %s -> exit %d%s%s", strings.Join(args, " "), r.code, quoteIf(" stdout=", r.stdout), quoteIf(" stderr=", r.stderr))
	return r
}

// mustDocker is docker that fails the test unless the CLI exits 0.
func (dd *dockerDaemon) mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	r := dd.docker(t, args...)
	if r.code != 0 {
		t.Fatalf("docker %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// runDetached starts a container with docker run -d and returns its id; it
// is removed (docker rm -f) when the test ends. cmd runs until it is killed.
func (dd *dockerDaemon) runDetached(t *testing.T, runtime string, cmd ...string) string {
	t.Helper()
	args := append([]string{"run", "-d", "--runtime", runtime, "--network", "none", dockerImage}, cmd...)
	id := strings.TrimSpace(dd.mustDocker(t, args...))
	if len(id) != 64 {
		t.Fatalf("docker run -d printed %q, not a container id", id)
	}
	t.Cleanup(func() { dd.docker(t, "rm", "-f", id) })
	return id
}

// onFailure prints the parts of dockerd's and containerd's logs written
// during the test if it fails.
func (dd *dockerDaemon) onFailure(t *testing.T) {
	t.Helper()
	off := dd.cd.LogSize()
	var doff int64
	if st, err := os.Stat(dd.logPath); err == nil {
		doff = st.Size()
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(dd.cd.LogTail(off, 100))
			t.Logf("--- dockerd log (%s) ---\n%s", dd.logPath, tailFrom(dd.logPath, doff, 100))
		}
	})
}

// tailFile is the last n lines of a file.
func tailFile(path string, n int) string { return tailFrom(path, 0, n) }

// tailFrom is the last n lines of what follows offset in a file.
func tailFrom(path string, offset int64, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if offset > int64(len(data)) {
		offset = 0
	}
	lines := strings.Split(strings.TrimRight(string(data[offset:]), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The README's Docker section shows testdata/docker/daemon.json and
// crun.toml verbatim, so what it tells operators to write is what runs here.
func TestDockerREADMESnippets(t *testing.T) {
	root, err := testkit.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"daemon.json", "crun.toml"} {
		snippet, err := os.ReadFile(filepath.Join(dockerTestdata, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(readme, snippet) {
			t.Errorf("README.md does not contain testdata/docker/%s verbatim:\n%s", name, snippet)
		}
	}
}

// docker run --rm with runtime tether prints the container's output on the
// right streams, from the image's rootfs, and exits with the container's
// code; so does --runtime io.containerd.tether.v2, configured nowhere.
func TestDockerRunRm(t *testing.T) {
	dd := getDocker(t)
	dd.onFailure(t)
	r := dd.docker(t, "run", "--rm", "--runtime", "tether", "--network", "none", dockerImage, "echo", "hello")
	if r.code != 0 || r.stdout != "hello\n" {
		t.Errorf("docker run --rm ... echo hello: %s; want exit 0 and %q", r, "hello\n")
	}
	r = dd.docker(t, "run", "--rm", "--runtime", "tether", "--network", "none", dockerImage,
		"sh", "-c", "cat /"+testkit.ImageMarkerPath+"; echo to-stderr >&2; exit 3")
	if r.code != 3 || r.stdout != imageMarker+"\n" || !strings.Contains(r.stderr, "to-stderr\n") {
		t.Errorf("docker run --rm ... sh -c 'cat marker; echo to-stderr >&2; exit 3': %s; want exit 3, stdout %q, stderr with %q",
			r, imageMarker+"\n", "to-stderr\n")
	}
	// A runtime name of containerd's form needs no daemon.json entry (Docker
	// 23 and later pass it to containerd as it is, without options).
	r = dd.docker(t, "run", "--rm", "--runtime", runtimeName, "--network", "none", dockerImage, "echo", "by-name")
	if r.code != 0 || r.stdout != "by-name\n" {
		t.Errorf("docker run --rm --runtime %s ... echo by-name: %s", runtimeName, r)
	}
	if out := dd.mustDocker(t, "ps", "-aq"); strings.TrimSpace(out) != "" {
		t.Errorf("containers left after docker run --rm: %q", out)
	}
}

// docker run -d, exec, stop and rm through Tether: the shim is Tether's, the
// cgroup is dockerd's cgroupfs path, exec output and codes come back, stop's
// SIGTERM reaches the init, and after rm the shim is gone with its socket,
// bundle and mounts.
func TestDockerLifecycle(t *testing.T) {
	dd := getDocker(t)
	dd.onFailure(t)
	d, ns := dd.cd, dockerNamespace
	before := socketDirEntries()
	id := dd.runDetached(t, "tether", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done")
	tk := d.waitStatus(t, ns, id, "RUNNING")
	s := d.shimOf(t, ns, id) // fails unless the socket's listener is containerd-shim-tether-v2
	if got := procName(s.pid); got != "containerd-shim-tether-v2" {
		t.Errorf("the shim of %s is %q", id, got)
	}
	if pid := strings.TrimSpace(dd.mustDocker(t, "inspect", "-f", "{{.State.Pid}}", id)); pid != strconv.Itoa(tk.pid) {
		t.Errorf("docker inspect says pid %s, ctr task ls says %d", pid, tk.pid)
	}
	// No options: plain runc, with Tether's default root.
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", ns, id, "state.json")); err != nil {
		t.Errorf("runc's state is not in Tether's default root: %v", err)
	}
	// Without systemd dockerd gives a cgroupfs path below --cgroup-parent
	// (under systemd it would be system.slice:docker:<id>).
	spec := d.spec(t, ns, id)
	linux, _ := spec["linux"].(map[string]any)
	if cg, _ := linux["cgroupsPath"].(string); cg != dockerCgroups+"/"+id {
		t.Errorf("cgroupsPath %q, want %q", cg, dockerCgroups+"/"+id)
	}

	if r := dd.docker(t, "exec", id, "echo", "hi"); r.code != 0 || r.stdout != "hi\n" {
		t.Errorf("docker exec echo hi: %s", r)
	}
	if r := dd.docker(t, "exec", id, "sh", "-c", "exit 5"); r.code != 5 {
		t.Errorf("docker exec sh -c 'exit 5': %s; want exit 5", r)
	}
	dd.mustDocker(t, "stop", id)
	st := strings.TrimSpace(dd.mustDocker(t, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", id))
	if st != "exited 0" {
		t.Errorf("after docker stop: %q; want %q (the trap exits 0 on SIGTERM)", st, "exited 0")
	}
	dd.mustDocker(t, "rm", id)
	d.assertShimGone(t, ns, s, before, id)
}

// runtimeType may be the shim binary's absolute path.
func TestDockerAbsoluteRuntimeType(t *testing.T) {
	dd := getDocker(t)
	dd.onFailure(t)
	d, ns := dd.cd, dockerNamespace
	id := dd.runDetached(t, "tether-abs", "sleep", "1000000")
	d.waitStatus(t, ns, id, "RUNNING")
	s := d.shimOf(t, ns, id)
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", s.pid)); err != nil || exe != shimBin {
		t.Errorf("the shim of %s runs %q (err %v), want %s", id, exe, err, shimBin)
	}
	if r := dd.docker(t, "exec", id, "echo", "abs"); r.code != 0 || r.stdout != "abs\n" {
		t.Errorf("docker exec echo abs: %s", r)
	}
}

// options {"ConfigPath": file} reaches Tether as runtimeoptions.v1.Options
// config_path: the file's BinaryName is what the runtime is run with, for
// create, exec and delete, and its Root, as <Root>/<namespace> (as
// containerd's shim uses it), is the runtime's root.
func TestDockerConfigPath(t *testing.T) {
	dd := getDocker(t)
	dd.onFailure(t)
	d, ns := dd.cd, dockerNamespace
	id := dd.runDetached(t, "tether-record", "sleep", "1000000")
	d.waitStatus(t, ns, id, "RUNNING")
	args := createArgsOf(t, dd.recordArgs, id)
	root := filepath.Join(dd.recordRoot, ns)
	if got := testkit.ArgValue(args, "--root"); got != root {
		t.Errorf("the runtime's create got --root %q, want the config file's Root/<namespace> %q (args %q)", got, root, args)
	}
	if _, err := os.Stat(filepath.Join(root, id, "state.json")); err != nil {
		t.Errorf("runc's state is not in the config file's Root/<namespace>: %v", err)
	}
	if r := dd.docker(t, "exec", id, "echo", "recorded"); r.code != 0 || r.stdout != "recorded\n" {
		t.Errorf("docker exec echo recorded: %s", r)
	}
	dd.mustDocker(t, "rm", "-f", id)
	waitFor(t, 30*time.Second, "runc's state of "+id+" to be deleted", func() (bool, string) {
		_, err := os.Stat(filepath.Join(root, id))
		return os.IsNotExist(err), fmt.Sprintf("stat: %v", err)
	})
	data, _ := os.ReadFile(dd.recordArgs)
	for _, verb := range []string{"exec", "delete"} {
		if !slices.ContainsFunc(strings.Split(string(data), "\n"), func(l string) bool {
			f := strings.Fields(l)
			return slices.Contains(f, verb) && slices.Contains(f, id)
		}) {
			t.Errorf("the recording runtime saw no %s of %s:\n%s", verb, id, data)
		}
	}
}

// The README's tether-crun runtime (ConfigPath naming a file with
// BinaryName = "crun") runs the container with crun. Debian 12's crun 1.8.1
// refuses the ociVersion of Docker 28's specs (1.2.1) with "unknown version
// specified", a message runc never gives; a newer crun runs the container,
// and then crun's state is in Tether's default root.
func TestDockerCrunConfigPath(t *testing.T) {
	dd := getDocker(t)
	dd.onFailure(t)
	ensureCrun(t)
	d, ns := dd.cd, dockerNamespace
	r := dd.docker(t, "run", "-d", "--runtime", "tether-crun", "--network", "none", dockerImage, "sleep", "1000000")
	id := strings.TrimSpace(r.stdout)
	if id != "" {
		t.Cleanup(func() { dd.docker(t, "rm", "-f", id) })
	}
	if r.code != 0 {
		if !strings.Contains(r.stderr, "unknown version specified") {
			t.Fatalf("docker run with tether-crun failed, and not with crun's refusal of the spec version: %s", r)
		}
		t.Logf("crun was run and refused Docker's spec version (Debian's crun 1.8.1): %s", strings.TrimSpace(r.stderr))
		return
	}
	tk := d.waitStatus(t, ns, id, "RUNNING")
	status := filepath.Join("/run/containerd/runc", ns, id, "status")
	data, err := os.ReadFile(status)
	if err != nil {
		t.Fatalf("no crun status for %s: %v", id, err)
	}
	var st struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal(data, &st); err != nil || st.Pid != tk.pid {
		t.Errorf("%s: %q (parse: %v); want crun's status with pid %d", status, data, err, tk.pid)
	}
}

// dockerd converts a non-runc runtime's options by TOML into
// runtimeoptions.v1.Options and drops every key that is not one of its
// fields (TypeUrl, ConfigPath, ConfigBody), without a word: BinaryName and
// Root never reach Tether, which then runs plain runc with its default root.
func TestDockerBinaryNameDropped(t *testing.T) {
	dd := getDocker(t)
	dd.onFailure(t)
	d, ns := dd.cd, dockerNamespace
	id := dd.runDetached(t, "tether-binaryname", "sleep", "1000000")
	d.waitStatus(t, ns, id, "RUNNING")
	if data, err := os.ReadFile(dd.droppedArgs); err == nil {
		t.Errorf("the BinaryName of tether-binaryname's options was run (dockerd passed it on after all):\n%s", data)
	}
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", ns, id, "state.json")); err != nil {
		t.Errorf("runc's state is not in Tether's default root: %v", err)
	}
}

// A container whose process cannot be started (no such binary) fails
// docker run with 127 and leaves nothing in the container's log, and an
// exec that cannot start fails docker exec with 127, as with
// containerd's own shim (dockerd's runc runtime, io.containerd.runc.v2, run
// first as the control): the runtime's error goes to dockerd as the error of
// the task's creation, and not also to the container's stderr.
func TestDockerRuntimeErrorNotOnStdio(t *testing.T) {
	dd := getDocker(t)
	dd.onFailure(t)
	stock := filepath.Join(filepath.Dir(dd.cd.v.containerd), "containerd-shim-runc-v2")
	if _, err := os.Stat(stock); err != nil {
		t.Fatalf("containerd's own shim for the control: %v (run scripts/install-deps.sh)", err)
	}
	for _, runtime := range []string{"runc", "tether"} {
		name := "failed-create-" + runtime
		dd.docker(t, "rm", "-f", name)
		t.Cleanup(func() { dd.docker(t, "rm", "-f", name) })
		r := dd.docker(t, "run", "--name", name, "--runtime", runtime, "--network", "none", dockerImage, "/nonexistent")
		if r.code != 127 || !strings.Contains(r.stderr, "no such file or directory") {
			t.Errorf("runtime %s: docker run of a missing binary: %s; want exit 127 and the runtime's error", runtime, r)
		}
		if r.stdout != "" || strings.Count(r.stderr, "unable to start container process") != 1 {
			t.Errorf("runtime %s: the runtime's error reached the container's stdio too (the attached client prints it twice): %s", runtime, r)
		}
		logs := dd.docker(t, "logs", name)
		if logs.code != 0 || logs.stdout != "" || logs.stderr != "" {
			t.Errorf("runtime %s: docker logs of the container that never started: %s; want nothing", runtime, logs)
		}

		// The same for an exec that cannot start.
		id := dd.runDetached(t, runtime, "sleep", "1000000")
		// The CLI prints dockerd's error of an exec on stdout.
		r = dd.docker(t, "exec", id, "/nonexistent")
		all := r.stdout + r.stderr
		if r.code != 127 || !strings.Contains(all, "no such file or directory") {
			t.Errorf("runtime %s: docker exec of a missing binary: %s; want exit 127 and the runtime's error", runtime, r)
		}
		if strings.Count(all, "unable to start container process") != 1 {
			t.Errorf("runtime %s: the runtime's exec error reached the exec's stdio too (docker exec prints it twice): %s", runtime, r)
		}
	}
}
