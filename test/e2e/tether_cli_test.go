package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// The operator's tool, `tether`, built once from the repository.
var (
	tetherCLIOnce sync.Once
	tetherCLIPath string
	tetherCLIErr  error
)

// tetherCLI builds cmd/tether (as `make build` does) into the shim's
// directory and returns its path.
func tetherCLI(t *testing.T) string {
	t.Helper()
	tetherCLIOnce.Do(func() {
		root, err := testkit.RepoRoot()
		if err != nil {
			tetherCLIErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		out := filepath.Join(shimDir, "tether")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/tether")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			tetherCLIErr = fmt.Errorf("go build ./cmd/tether: %w: %s", err, b)
			return
		}
		tetherCLIPath = out
	})
	if tetherCLIErr != nil {
		t.Fatal(tetherCLIErr)
	}
	return tetherCLIPath
}

// runTether runs the tool with args and returns its stdout; a failure
// fails the test with its stderr.
func runTether(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, errOut, err := tryTether(t, stdin, args...)
	if err != nil {
		t.Fatalf("tether %q: %v\nstderr: %s\nstdout: %.2000s", args, err, errOut, out)
	}
	return out
}

// tryTether runs the tool and returns its output and error.
func tryTether(t *testing.T, stdin []byte, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tetherCLI(t), args...)
	var o, e bytes.Buffer
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	return o.String(), e.String(), err
}

// The parts of `tether inspect -o json` (docs/operators.md) the test
// reads, decoded independently of the tool's own types.
type cliSnapshot struct {
	Schema int `json:"schema"`
	Shim   struct {
		Pid       int    `json:"pid"`
		Namespace string `json:"namespace"`
		Version   string `json:"version"`
		Socket    string `json:"socket"`
	} `json:"shim"`
	Process *struct {
		RSSBytes uint64 `json:"rss_bytes"`
		PSSBytes uint64 `json:"pss_bytes"`
		Threads  int    `json:"threads"`
		FDs      int    `json:"fds"`
	} `json:"process"`
	Connections struct {
		Open int `json:"open"`
	} `json:"connections"`
	Containers []struct {
		ID      string `json:"id"`
		Bundle  string `json:"bundle"`
		Status  string `json:"status"`
		Pid     int    `json:"pid"`
		Runtime struct {
			Root string `json:"root"`
		} `json:"runtime"`
		Cgroup    string `json:"cgroup"`
		Processes []struct {
			ID     string `json:"id"`
			ExecID string `json:"exec_id"`
			Pid    int    `json:"pid"`
			Status string `json:"status"`
			Stdio  struct {
				Mode string `json:"mode"`
			} `json:"stdio"`
		} `json:"processes"`
		Counters struct {
			Execs uint64 `json:"execs"`
		} `json:"counters"`
	} `json:"containers"`
	Events struct {
		Queued int `json:"queued"`
	} `json:"events"`
	RPC []struct {
		Method string `json:"method"`
		Count  uint64 `json:"count"`
	} `json:"rpc"`
}

// cliPsRow is a row of `tether ps -o json`.
type cliPsRow struct {
	Pid       int    `json:"pid"`
	Namespace string `json:"namespace"`
	Group     string `json:"group"`
	Tasks     *int   `json:"tasks"`
	Version   string `json:"version"`
	Binary    string `json:"binary"`
	OnDisk    string `json:"binary_on_disk"`
	RSSBytes  uint64 `json:"rss_bytes"`
	PSSBytes  uint64 `json:"pss_bytes"`
	Socket    string `json:"socket"`
}

// cliFinding is a finding of `tether doctor -o json`.
type cliFinding struct {
	Kind      string `json:"kind"`
	Path      string `json:"path"`
	Namespace string `json:"namespace"`
	ID        string `json:"id"`
	Why       string `json:"why"`
	Fixable   bool   `json:"fixable"`
	Fixed     bool   `json:"fixed"`
	FixError  string `json:"fix_error"`
}

// TestTetherCLI: the operator's tool against live shims. `ps` lists them;
// `inspect -o json` reports for each task what containerd reports (ctr
// task ls and ps); `stacks` shows the goroutines of a running shim;
// `pprof` gives profiles; promtool accepts `metrics`; `doctor` finds a
// planted dead socket, an orphaned runc state and a stale rootfs mount
// (with its bundle), and `--fix` removes exactly those, leaving the live
// containers running.
func TestTetherCLI(t *testing.T) {
	if !isTether() {
		t.Fatalf("the tether tool inspects Tether shims; runtime is %s", runtimeName)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool (Debian's prometheus package; scripts/install-deps.sh installs it): %v", err)
	}
	forEachVersionFirstRunc(t, "cli", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "c1")
		d.runDetached(t, ns, "c2")
		d.mustCtr(t, ns, "task", "exec", "-d", "--exec-id", "e1", "c1", "/bin/sleep", "1000")
		s1, s2 := d.shimOf(t, ns, "c1"), d.shimOf(t, ns, "c2")

		t.Run("ps", func(t *testing.T) {
			var rows []cliPsRow
			if err := json.Unmarshal([]byte(runTether(t, nil, "ps", "-o", "json")), &rows); err != nil {
				t.Fatal(err)
			}
			for _, s := range []shimInfo{s1, s2} {
				i := slices.IndexFunc(rows, func(r cliPsRow) bool { return r.Pid == s.pid })
				if i < 0 {
					t.Fatalf("tether ps does not list shim %d: %+v", s.pid, rows)
				}
				r := rows[i]
				if r.Namespace != ns || r.Tasks == nil || *r.Tasks != 1 || r.Version == "" || r.Binary != shimBin ||
					r.OnDisk != "same" || r.RSSBytes == 0 || r.PSSBytes == 0 || r.Socket != s.path {
					t.Errorf("shim %d: %+v (tasks %v), want namespace %s, 1 task, binary %s, the same on disk, its socket %s", s.pid, r, r.Tasks, ns, shimBin, s.path)
				}
			}
			text := runTether(t, nil, "ps")
			if !strings.Contains(text, strconv.Itoa(s1.pid)) || !strings.HasPrefix(text, "PID") {
				t.Errorf("tether ps:\n%s", text)
			}
		})

		t.Run("inspect", func(t *testing.T) {
			tasks, err := d.tasks(t, ns)
			if err != nil {
				t.Fatal(err)
			}
			for id, s := range map[string]shimInfo{"c1": s1, "c2": s2} {
				var snap cliSnapshot
				if err := json.Unmarshal([]byte(runTether(t, nil, "inspect", "-o", "json", strconv.Itoa(s.pid))), &snap); err != nil {
					t.Fatal(err)
				}
				if snap.Schema != 1 || snap.Shim.Pid != s.pid || snap.Shim.Namespace != ns || snap.Shim.Socket != s.path {
					t.Errorf("shim of %s: %+v", id, snap.Shim)
				}
				if p := snap.Process; p == nil || p.RSSBytes == 0 || p.Threads == 0 || p.FDs == 0 {
					t.Errorf("shim of %s: process %+v", id, snap.Process)
				}
				if snap.Connections.Open < 2 {
					t.Errorf("shim of %s: %d connections open, want containerd's and ours", id, snap.Connections.Open)
				}
				if len(snap.Containers) != 1 {
					t.Fatalf("shim of %s: containers %+v", id, snap.Containers)
				}
				c, task := snap.Containers[0], tasks[id]
				if c.ID != id || c.Pid != task.pid || !strings.EqualFold(c.Status, task.status) || c.Bundle != d.bundle(ns, id) {
					t.Errorf("inspect says %s pid %d %s in %s; ctr task ls says pid %d %s, bundle %s", c.ID, c.Pid, c.Status, c.Bundle, task.pid, task.status, d.bundle(ns, id))
				}
				if c.Runtime.Root != filepath.Join("/run/containerd/runc", ns) || c.Cgroup == "" {
					t.Errorf("%s: runtime root %q, cgroup %q", id, c.Runtime.Root, c.Cgroup)
				}
				// Every process containerd lists is one inspect lists,
				// with the same pid.
				var pids []int
				for _, p := range c.Processes {
					if p.Status == "running" {
						pids = append(pids, p.Pid)
					}
				}
				slices.Sort(pids)
				if got, want := pids, ctrPids(t, d, ns, id); !slices.Equal(got, want) {
					t.Errorf("%s: inspect's running pids %v, ctr task ps %v", id, got, want)
				}
				if id == "c1" {
					if len(c.Processes) != 2 || c.Processes[1].ExecID != "e1" || c.Counters.Execs != 1 {
						t.Errorf("c1: processes %+v, counters %+v, want the init and e1, 1 exec", c.Processes, c.Counters)
					}
				}
				if snap.Events.Queued != 0 {
					t.Errorf("shim of %s: %d events queued with containerd up", id, snap.Events.Queued)
				}
				if len(snap.RPC) == 0 {
					t.Errorf("shim of %s: no requests counted", id)
				}
			}
			// By container: the same shim, only that container.
			var byID cliSnapshot
			if err := json.Unmarshal([]byte(runTether(t, nil, "inspect", "-o", "json", ns+"/c1")), &byID); err != nil {
				t.Fatal(err)
			}
			if byID.Shim.Pid != s1.pid || len(byID.Containers) != 1 || byID.Containers[0].ID != "c1" {
				t.Errorf("inspect %s/c1: shim %d, containers %+v", ns, byID.Shim.Pid, byID.Containers)
			}
			text := runTether(t, nil, "inspect", "c2")
			if !strings.Contains(text, "c2: running, pid "+strconv.Itoa(tasks["c2"].pid)) {
				t.Errorf("tether inspect c2:\n%s", text)
			}
			// Bad input: an unknown pid, a process that is no shim, a
			// container nobody serves.
			for _, tc := range []struct{ arg, want string }{
				{"2147483647", "no process has pid 2147483647"},
				{strconv.Itoa(d.Pid()), "is not a Tether shim server"},
				{ns + "/nosuch", "no Tether shim serves a container"},
			} {
				_, errOut, err := tryTether(t, nil, "inspect", tc.arg)
				if err == nil || !strings.Contains(errOut, tc.want) {
					t.Errorf("tether inspect %s: %v, stderr %q; want an error saying %q", tc.arg, err, errOut, tc.want)
				}
			}
		})

		t.Run("stacks", func(t *testing.T) {
			out := runTether(t, nil, "stacks", strconv.Itoa(s1.pid))
			for _, want := range []string{"goroutine ", "github.com/tether-shim/tether/internal/bootstrap.Serve", "github.com/tether-shim/tether/internal/introspect"} {
				if !strings.Contains(out, want) {
					t.Errorf("tether stacks: no %q in\n%.3000s", want, out)
				}
			}
		})

		t.Run("pprof", func(t *testing.T) {
			for _, kind := range []string{"heap", "cpu"} {
				file := filepath.Join(t.TempDir(), kind+".pb.gz")
				runTether(t, nil, "pprof", strconv.Itoa(s2.pid), kind, "-seconds", "1", "-out", file)
				data, err := os.ReadFile(file)
				if err != nil || len(data) < 2 || data[0] != 0x1f || data[1] != 0x8b {
					t.Errorf("%s profile: %d bytes (%v), want gzip", kind, len(data), err)
				}
			}
		})

		t.Run("metrics", func(t *testing.T) {
			out := runTether(t, nil, "metrics")
			for _, s := range []shimInfo{s1, s2} {
				want := fmt.Sprintf(`tether_shim_up{group="%s",namespace="%s",pid="%d"} 1`, groupOf(t, s.pid), ns, s.pid)
				if !strings.Contains(out, want) {
					t.Errorf("no %q in tether metrics:\n%.3000s", want, out)
				}
			}
			if !strings.Contains(out, fmt.Sprintf(`tether_container_execs_total{container="c1",group="c1",namespace="%s",pid="%d"} 1`, ns, s1.pid)) {
				t.Errorf("no exec count of c1 in tether metrics:\n%.3000s", out)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
			cmd.Stdin = strings.NewReader(out)
			if res, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("promtool check metrics: %v: %s", err, res)
			}
		})

		t.Run("doctor", func(t *testing.T) {
			testDoctor(t, d, ns)
		})
		t.Run("doctor-idle-shim", func(t *testing.T) {
			testDoctorIdleShim(t, ns)
		})
		// The live containers went through all of it untouched.
		for _, id := range []string{"c1", "c2"} {
			d.waitStatus(t, ns, id, "RUNNING")
		}
	})
}

// groupOf is the -id a shim was started with.
func groupOf(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return testkit.ArgValue(strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), "-id")
}

// ctrPids is the sorted pids `ctr task ps` lists for id.
func ctrPids(t *testing.T, d *daemon, ns, id string) []int {
	t.Helper()
	var pids []int
	for i, line := range strings.Split(strings.TrimSpace(d.mustCtr(t, ns, "task", "ps", id)), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatalf("ctr task ps %s: line %q", id, line)
		}
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids
}

// testDoctor plants a dead socket, an orphaned runc state and a stale
// rootfs mount in a bundle nothing serves, and checks that doctor finds
// exactly those (in the test's namespace and socket directory) and that
// --fix removes exactly those.
func testDoctor(t *testing.T, d *daemon, ns string) {
	work := filepath.Join(runBase, "doctor-"+ns)
	socketDir := filepath.Join(work, "s")
	if err := os.MkdirAll(socketDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		testkit.UnmountUnder(work)
		os.RemoveAll(work)
	})
	// A socket whose server died without removing it, and a live one.
	dead := filepath.Join(socketDir, "dead")
	dl, err := net.ListenUnix("unix", &net.UnixAddr{Name: dead, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dl.SetUnlinkOnClose(false)
	dl.Close()
	live := filepath.Join(socketDir, "live")
	ll, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()

	// runc state of a container whose init died, with no shim.
	runcRoot := filepath.Join("/run/containerd/runc", ns)
	orphan := plantOrphanRunc(t, work, runcRoot)

	// A rootfs still mounted in a bundle nothing serves, old enough.
	ghost := d.bundle(ns, "ghost")
	rootfs := filepath.Join(ghost, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", rootfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount the stale rootfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(rootfs, syscall.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(ghost, "config.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(ghost, old, old); err != nil {
		t.Fatal(err)
	}

	args := []string{"-socket-dir", socketDir, "doctor", "-namespace", ns, "-o", "json"}
	want := []string{
		"dead-socket " + dead,
		"orphan-runtime-state " + filepath.Join(runcRoot, orphan),
		"stale-mount " + rootfs,
		"stale-bundle " + ghost,
	}
	findings := doctorFindings(t, args...)
	var got []string
	for _, f := range findings {
		got = append(got, f.Kind+" "+f.Path)
		if f.Why == "" || !f.Fixable || f.Fixed {
			t.Errorf("finding %+v: want a reason, fixable, not fixed", f)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("tether doctor found\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	text := runTether(t, nil, "-socket-dir", socketDir, "doctor", "-namespace", ns)
	if !strings.Contains(text, "its server died without removing it") {
		t.Errorf("tether doctor's text does not say why:\n%s", text)
	}

	fixed := doctorFindings(t, append(args, "--fix")...)
	got = nil
	for _, f := range fixed {
		if !f.Fixed {
			t.Errorf("not fixed: %+v", f)
		}
		got = append(got, f.Kind+" "+f.Path)
	}
	if !slices.Equal(got, want) {
		t.Errorf("tether doctor --fix acted on\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for _, p := range []string{dead, filepath.Join(runcRoot, orphan), ghost} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there after --fix", p)
		}
	}
	if testkit.Mounted(rootfs) {
		t.Errorf("%s is still mounted after --fix", rootfs)
	}
	if _, err := os.Lstat(live); err != nil {
		t.Errorf("the live socket was removed: %v", err)
	}
	for _, id := range []string{"c1", "c2"} {
		if _, err := os.Stat(d.bundle(ns, id)); err != nil {
			t.Errorf("a live bundle was removed: %v", err)
		}
	}
	if left := doctorFindings(t, args...); len(left) != 0 {
		t.Errorf("after --fix doctor still finds %+v", left)
	}
}

// doctorFindings runs doctor with args and decodes its JSON.
func doctorFindings(t *testing.T, args ...string) []cliFinding {
	t.Helper()
	var out []cliFinding
	if err := json.Unmarshal([]byte(runTether(t, nil, args...)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// plantOrphanRunc creates a container with runc in root, kills its init so
// that runc sees it stopped, and returns its id: runtime state no shim
// will ever delete.
func plantOrphanRunc(t *testing.T, work, root string) string {
	t.Helper()
	const id = "orphan"
	bundle := filepath.Join(work, "orphan-bundle")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if r := run(ctx, "runc", "spec", "-b", bundle); r.code != 0 {
		t.Fatalf("runc spec: %s", r)
	}
	cfgPath := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/bin/sleep", "1000"}
	spec["root"] = map[string]any{"path": rootfsDir, "readonly": true}
	spec["linux"].(map[string]any)["cgroupsPath"] = "/" + filepath.Base(root) + "/" + id
	if data, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The container's init inherits runc's stdio: a file, not a pipe
	// that a wait for runc would wait on.
	errFile, err := os.Create(filepath.Join(work, "orphan-create.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer errFile.Close()
	create := exec.CommandContext(ctx, "runc", "--root", root, "create", "--bundle", bundle, id)
	create.Stdout, create.Stderr = errFile, errFile
	if err := create.Run(); err != nil {
		out, _ := os.ReadFile(errFile.Name())
		t.Fatalf("runc create: %v: %s", err, out)
	}
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		run(c, "runc", "--root", root, "delete", "--force", id)
	})
	var state struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	r := run(ctx, "runc", "--root", root, "state", id)
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &state) != nil || state.Pid == 0 {
		t.Fatalf("runc state: %s", r)
	}
	sigkill(t, state.Pid)
	waitFor(t, 30*time.Second, "runc to see the orphan stopped", func() (bool, string) {
		r := run(ctx, "runc", "--root", root, "state", id)
		_ = json.Unmarshal([]byte(r.stdout), &state)
		return state.Status == "stopped", r.String()
	})
	return id
}

// testDoctorIdleShim starts a shim server the way containerd does (`start`
// in a bundle) that never gets a container, removes its bundle, and checks
// that doctor finds it (its bundle gone, serving nothing) and that --fix
// makes it leave: the process and its socket are gone.
func testDoctorIdleShim(t *testing.T, ns string) {
	id := fmt.Sprintf("idle-%d", os.Getpid())
	bundle := startBundle(t)
	address := strings.TrimSpace(string(runStart(t, bundle, ns, id, "/bin/true", nil)))
	socket := strings.TrimPrefix(address, "unix://")
	pid := startServer(t, socket, id)
	if err := os.RemoveAll(bundle); err != nil {
		t.Fatal(err)
	}
	// A socket directory of its own: the node's may hold other leftovers.
	socketDir := t.TempDir()
	args := []string{"-socket-dir", socketDir, "doctor", "-namespace", ns, "-o", "json"}
	findings := doctorFindings(t, args...)
	if len(findings) != 1 || findings[0].Kind != "idle-shim" || findings[0].Path != bundle || !findings[0].Fixable {
		t.Fatalf("tether doctor found %+v, want the idle shim %d with its bundle %s gone", findings, pid, bundle)
	}
	fixed := doctorFindings(t, append(args, "--fix")...)
	if len(fixed) != 1 || !fixed[0].Fixed {
		t.Fatalf("tether doctor --fix: %+v", fixed)
	}
	waitFor(t, 30*time.Second, fmt.Sprintf("the idle shim %d to leave", pid), func() (bool, string) {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err) || procName(pid) == "", fmt.Sprintf("process %d: %v", pid, err)
	})
	if _, err := os.Lstat(socket); !os.IsNotExist(err) {
		t.Errorf("the idle shim's socket %s: %v, want it gone", socket, err)
	}
}
