package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	apievents "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/typeurl/v2"

	"github.com/tether-shim/tether/testkit"
)

// The acceptance test of issue 15 (live upgrade, state version 2: a shim
// hands its containers over to the new image). See docs/design.md, "Live
// upgrade", and TestLiveUpgradeContainers.

// Builds of the shim the test installs, by their -X main.version.
const (
	upgcBuildA   = "e2e-upgc-a"
	upgcBuildB   = "e2e-upgc-b"
	upgcBuildOld = "e2e-upgc-old" // writes and reads the state version before this build's

	upgcGroup  = "upgc" // the group of the three-container shim and of the churn
	upgcRounds = 20     // upgrades in a row while containers start and exit
)

// upgcBuilds are the shim binaries of the test.
type upgcBuilds struct {
	a, b string // the same source, two versions: two different builds
	old  string // one that cannot take the state over: a refused upgrade
}

// buildShimAs builds the shim with main.version set to version.
func buildShimAs(t *testing.T, version string) string {
	t.Helper()
	root, err := testkit.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), shimBinaryName)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X main.version="+version, "-o", out, "./cmd/containerd-shim-tether-v2")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -X main.version=%s: %v\n%s", version, err, b)
	}
	return out
}

// oldShimSource is a stand-in for a build that cannot take over the state
// a running shim writes (a downgrade across a format change): an ELF binary
// that answers the dry run of live upgrade (docs/design.md, "Live
// upgrade": `<binary> -upgrade-check <state version> <build>`, one JSON
// object, exit 1 for no) as such a build would, as the upgrade package's
// tests do. StateVersion is a constant, so no -X makes a real build of
// another state version, and a patched constant would not do either: a
// build reads a set of versions.
const oldShimSource = `package main

import (
	"encoding/json"
	"os"
)

const version = "` + upgcBuildOld + `"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-upgrade-check" {
		asked := ""
		if len(os.Args) > 2 {
			asked = os.Args[2]
		}
		_ = json.NewEncoder(os.Stdout).Encode(map[string]any{
			"shim": "containerd-shim-tether-v2", "version": version, "reads": []int{0}, "ok": false,
			"reason": "state version " + asked + " is not read by this build (it reads version 0)",
		})
		os.Exit(1)
	}
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("containerd-shim-tether-v2 " + version + "\n")
		os.Exit(0)
	}
	os.Stderr.WriteString("` + upgcBuildOld + `: a stand-in that only answers -upgrade-check\n")
	os.Exit(2)
}
`

// buildUpgcShims builds the shims of the test: A and B, and the stand-in
// of a build that cannot take the state over.
func buildUpgcShims(t *testing.T) upgcBuilds {
	t.Helper()
	var b upgcBuilds
	b.a = buildShimAs(t, upgcBuildA)
	b.b = buildShimAs(t, upgcBuildB)

	dir := t.TempDir()
	for name, content := range map[string]string{"go.mod": "module upgcold\n\ngo 1.21\n", "main.go": oldShimSource} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b.old = filepath.Join(t.TempDir(), shimBinaryName)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", b.old, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build of the stand-in %s: %v\n%s", upgcBuildOld, err, out)
	}

	// The builds differ: in content and in what they say they are.
	for _, p := range []struct{ bin, want string }{{b.a, upgcBuildA}, {b.b, upgcBuildB}, {b.old, upgcBuildOld}} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r := run(ctx, p.bin, "-v")
		cancel()
		if r.code != 0 || !strings.Contains(r.stdout, " "+p.want) {
			t.Fatalf("%s -v: %s; want the version %s", p.bin, r, p.want)
		}
	}
	da, _ := os.ReadFile(b.a)
	db, _ := os.ReadFile(b.b)
	if string(da) == string(db) {
		t.Fatal("the two builds are the same bytes")
	}
	t.Logf("builds: %s (%s), %s (%s), %s (%s, a stand-in that refuses every state version)", upgcBuildA, b.a, upgcBuildB, b.b, upgcBuildOld, b.old)
	return b
}

// installShim puts a copy of src at dst by rename, as a package manager
// does (a running binary is never written to), and returns the new file's
// stat, to compare with /proc/PID/exe.
func installShim(t *testing.T, src, dst string) os.FileInfo {
	t.Helper()
	tmp := dst + ".new"
	if err := testkit.CopyFile(src, tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// upgcDaemon starts a containerd of version v of the test's own, whose PATH
// finds the shim in bin: the test replaces that binary, which the other
// tests' containerds (the suite's shim) must not see.
func upgcDaemon(t *testing.T, v *cdVersion, bin string) *daemon {
	t.Helper()
	name, tag := "upgc-"+v.name, "upgc"+v.tag
	if old := daemons[name]; old != nil {
		_ = old.stop()
	}
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
		},
		v:       v,
		r:       runcs[0],
		sockets: map[string][]string{},
		bin:     bin,
	}
	daemons[name] = d // stopped by TestMain too
	if err := d.start(true); err != nil {
		t.Fatalf("containerd %s: %v", name, err)
	}
	return d
}

// exitLog collects the /tasks/ events of a namespace from the Go client's
// subscription to containerd's events.
type exitLog struct {
	mu      sync.Mutex
	exits   map[string][]uint32 // container/process id -> exit statuses, in order
	started map[string]bool     // container ids with a /tasks/start
	errs    []error
}

func exitKey(container, id string) string { return container + "/" + id }

// subscribeExits subscribes to containerd's task events of ns; the
// subscription ends with the test.
func subscribeExits(t *testing.T, c *containerd.Client, ns string) *exitLog {
	t.Helper()
	l := &exitLog{exits: map[string][]uint32{}, started: map[string]bool{}}
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), ns))
	evs, errs := c.Subscribe(ctx, `topic~="^/tasks/"`)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case env := <-evs:
				if env == nil || env.Namespace != ns {
					continue
				}
				v, err := typeurl.UnmarshalAny(env.Event)
				l.mu.Lock()
				switch e := v.(type) {
				case *apievents.TaskExit:
					l.exits[exitKey(e.ContainerID, e.ID)] = append(l.exits[exitKey(e.ContainerID, e.ID)], e.ExitStatus)
				case *apievents.TaskStart:
					l.started[e.ContainerID] = true
				default:
					if err != nil {
						l.errs = append(l.errs, fmt.Errorf("event %s: %w", env.Topic, err))
					}
				}
				l.mu.Unlock()
			case err := <-errs:
				if err != nil && ctx.Err() == nil {
					l.mu.Lock()
					l.errs = append(l.errs, fmt.Errorf("the event subscription ended: %w", err))
					l.mu.Unlock()
				}
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l
}

// statuses returns the exit statuses seen for the process id of container.
func (l *exitLog) statuses(container, id string) []uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.exits[exitKey(container, id)])
}

func (l *exitLog) sawStart(container string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.started[container]
}

func (l *exitLog) errors() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// upgcCtr is a long-lived container of the test.
type upgcCtr struct {
	id    string
	cont  containerd.Container
	task  containerd.Task
	waitC <-chan containerd.ExitStatus // a Wait held from before Start to the exit (as CRI holds one), or nil
	pid   uint32
	shim  shimInfo
	sig   syscall.Signal // how the end of the test kills it
	code  uint32         // and the exit status that must come of it
}

// upgc is one run of the test under one containerd.
type upgc struct {
	d     *daemon
	ns    string
	c     *containerd.Client
	exits *exitLog
	// waitCtx is the context of the Waits held across the upgrades.
	waitCtx context.Context

	mu       sync.Mutex
	deleting map[string]time.Time // container id -> when the test began deleting it
}

// markDeleting records that the test is about to delete container id: a
// shim connection of id closing after this is no loss.
func (u *upgc) markDeleting(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.deleting[id] = time.Now()
}

// start creates and starts container id running args with ioc; if wait,
// it holds a Wait from before Start to the container's exit.
func (u *upgc) start(t *testing.T, id string, ioc cio.Creator, sopts []oci.SpecOpts, wait bool, sig syscall.Signal, code uint32, args ...string) *upgcCtr {
	t.Helper()
	ctx, cancel := clientCtx(u.ns)
	defer cancel()
	sopts = append([]oci.SpecOpts{oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(args...)}, sopts...)
	cont, err := u.c.NewContainer(ctx, id, containerd.WithNewSpec(sopts...))
	if err != nil {
		t.Fatalf("NewContainer %s: %v", id, err)
	}
	task, err := cont.NewTask(ctx, ioc)
	if err != nil {
		t.Fatalf("NewTask %s: %v", id, err)
	}
	var waitC <-chan containerd.ExitStatus
	if wait {
		if waitC, err = task.Wait(u.waitCtx); err != nil {
			t.Fatalf("Wait %s: %v", id, err)
		}
	}
	if err := task.Start(ctx); err != nil {
		t.Fatalf("Start %s: %v", id, err)
	}
	u.d.waitStatus(t, u.ns, id, "RUNNING")
	c := &upgcCtr{id: id, cont: cont, task: task, waitC: waitC, pid: task.Pid(), sig: sig, code: code}
	c.shim = u.d.shimOf(t, u.ns, id)
	return c
}

// cliPs is `tether ps -o json`.
func (u *upgc) cliPs(t *testing.T) []cliPsRow {
	t.Helper()
	var rows []cliPsRow
	if err := json.Unmarshal([]byte(runTether(t, nil, "ps", "-o", "json")), &rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

// upgrade runs `tether upgrade --expect want` of every shim in shims: if
// all, by --all when this test owns every Tether shim of the node (always
// so in CI), else by pid: --all would upgrade the shims of whatever else
// runs on the machine (another worktree's unit tests, say). It returns the
// output and the error.
func (u *upgc) upgrade(t *testing.T, want string, shims []int, all bool) (string, error) {
	t.Helper()
	args := []string{"upgrade", "--expect", want}
	var foreign []string
	if all {
		for _, r := range u.cliPs(t) {
			if r.Namespace != u.ns {
				foreign = append(foreign, fmt.Sprintf("%d (namespace %q)", r.Pid, r.Namespace))
			}
		}
	}
	if all && len(foreign) == 0 {
		args = append(args, "--all")
	} else {
		if len(foreign) > 0 {
			t.Logf("tether upgrade --all would also upgrade shims this test does not own, %v: upgrading this test's by pid", foreign)
		}
		for _, p := range shims {
			args = append(args, strconv.Itoa(p))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tetherCLI(t), args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("tether %s: %v\n%s", strings.Join(args, " "), err, out)
	return string(out), err
}

// shimLine is the line of tether upgrade's output about shim pid.
func shimLine(out string, pid int) string {
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, fmt.Sprintf("shim %d: ", pid)) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// checkShims checks that every shim runs under its pid, still listens on
// its socket, runs the binary exe (compared with os.SameFile) and that
// tether ps shows version for it, with tasks containers.
func (u *upgc) checkShims(t *testing.T, when string, shims map[int]int, exe os.FileInfo, version string) {
	t.Helper()
	rows := u.cliPs(t)
	for pid, tasks := range shims {
		if !alive(pid) {
			t.Errorf("%s: the shim %d is gone", when, pid)
			continue
		}
		if now, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || !os.SameFile(now, exe) {
			t.Errorf("%s: /proc/%d/exe is not the build %s (%v)", when, pid, version, err)
		}
		i := slices.IndexFunc(rows, func(r cliPsRow) bool { return r.Pid == pid })
		if i < 0 {
			t.Errorf("%s: tether ps does not list the shim %d: %+v", when, pid, rows)
			continue
		}
		r := rows[i]
		if r.Version != version || r.Namespace != u.ns || r.Tasks == nil || *r.Tasks < tasks {
			t.Errorf("%s: tether ps shows the shim %d as %+v (tasks %v); want version %s, namespace %s, at least %d tasks", when, pid, r, r.Tasks, version, u.ns, tasks)
		}
		if l := listeners(r.Socket); !slices.Contains(l, pid) || slices.ContainsFunc(l, func(q int) bool { return q != pid && !forkedBy(q, pid) }) {
			t.Errorf("%s: the shim %d's socket %s is listened on by %v", when, pid, r.Socket, l)
		}
	}
}

// forkedBy tells whether q is (or was, if it is gone) a child of pid: a
// child between fork and execve still holds its parent's descriptors,
// close-on-exec ones included.
func forkedBy(q, pid int) bool {
	pp, err := ppid(q)
	return err != nil || pp == pid
}

// checkContainers checks that every container runs under the pid it
// started with, as containerd and /proc see it.
func (u *upgc) checkContainers(t *testing.T, when string, ctrs []*upgcCtr) {
	t.Helper()
	ts, err := u.d.tasks(t, u.ns)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	for _, c := range ctrs {
		got := ts[c.id]
		if got.status != "RUNNING" || got.pid != int(c.pid) || !alive(int(c.pid)) {
			t.Errorf("%s: container %s is %+v (pid %d alive: %v), want RUNNING under pid %d", when, c.id, got, c.pid, alive(int(c.pid)), c.pid)
		}
	}
}

// seqLines reads file and checks that its complete lines are prefix0,
// prefix1, ... with no gap and no duplicate; it returns how many there are.
func seqLines(file, prefix string) (int, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	s := string(data)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i+1]
	} else {
		s = ""
	}
	n := 0
	for line := range strings.Lines(s) {
		line = strings.TrimRight(line, "\n")
		if want := prefix + strconv.Itoa(n); line != want {
			return n, fmt.Errorf("%s: line %d is %q, want %q (a gap or a duplicate); around it: %q", file, n+1, line, want, around(s, n))
		}
		n++
	}
	return n, nil
}

// around is lines n-3..n+3 of s.
func around(s string, n int) []string {
	lines := strings.Split(s, "\n")
	return lines[max(0, n-3):min(len(lines), n+4)]
}

// waitSeqGrows waits until file holds more than from lines in sequence and
// fails the test on a gap or a duplicate.
func waitSeqGrows(t *testing.T, what, file, prefix string, from int) int {
	t.Helper()
	var n int
	waitFor(t, 60*time.Second, fmt.Sprintf("%s to go on past line %d", what, from), func() (bool, string) {
		var err error
		n, err = seqLines(file, prefix)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return n > from, fmt.Sprintf("%d lines", n)
	})
	return n
}

// lostShimLines returns the lines of containerd's log after off that say it
// lost a shim connection (containerd 1.6 and 2.x: "shim disconnected",
// "cleaning up after shim disconnected", "cleaning up dead shim") of a
// container the test had not begun to delete by then. containerd logs
// them too when it closes a deleted container's connection itself.
func (u *upgc) lostShimLines(off int64) []string {
	f, err := os.Open(u.d.LogPath)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return []string{err.Error()}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var bad []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "shim disconnected") && !strings.Contains(line, "dead shim") {
			continue
		}
		m := logIDRE.FindStringSubmatch(line)
		if m == nil {
			// 1.6's "cleaning up dead shim" names no id: it follows a
			// "shim disconnected" that does.
			continue
		}
		id := strings.Trim(m[1], `"`)
		tm := logTimeRE.FindStringSubmatch(line)
		var at time.Time
		if tm != nil {
			at, _ = time.Parse(time.RFC3339Nano, tm[1])
		}
		if since, ok := u.deleting[id]; ok && !at.IsZero() && at.After(since) {
			continue
		}
		bad = append(bad, line)
	}
	return bad
}

var (
	logIDRE   = regexp.MustCompile(`\bid=("[^"]*"|\S+)`)
	logTimeRE = regexp.MustCompile(`time="([^"]+)"`)
)

// churnLife is one container of the churn.
type churnLife struct {
	id      string
	want    uint32
	status  uint32 // from Status once stopped
	waited  uint32 // from a Wait held from before Start (every other container), else status
	deleted uint32 // from Delete
	err     error
}

// churnOne starts container ch-i in the group shim and lets it exit by
// itself (code 1 + i%100, after 0 to 80 ms) or, one in four, kills it
// (137); it reads the code from Status once stopped, from a Wait held
// from before its start (even i only) and from Delete, and deletes it.
func (u *upgc) churnOne(i int) churnLife {
	l := churnLife{id: fmt.Sprintf("ch-%d", i), want: uint32(1 + i%100)}
	args := []string{"/bin/sh", "-c", fmt.Sprintf("usleep %d; exit %d", (i%5)*20000, l.want)}
	kill := i%4 == 3
	if kill {
		args, l.want = sleeper, 137
	}
	ctx, cancel := clientCtx(u.ns)
	defer cancel()
	sopts := []oci.SpecOpts{oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs(args...), oci.WithAnnotations(map[string]string{groupLabel: upgcGroup})}
	cont, err := u.c.NewContainer(ctx, l.id, containerd.WithNewSpec(sopts...))
	if err != nil {
		l.err = fmt.Errorf("new container: %w", err)
		return l
	}
	task, err := cont.NewTask(ctx, cio.NullIO)
	if err != nil {
		l.err = fmt.Errorf("new task: %w", err)
		_ = cont.Delete(ctx)
		return l
	}
	fail := func(err error) churnLife {
		l.err = err
		u.markDeleting(l.id)
		_, _ = task.Delete(ctx, containerd.WithProcessKill)
		_ = cont.Delete(ctx)
		return l
	}
	var exitC <-chan containerd.ExitStatus
	if i%2 == 0 {
		if exitC, err = task.Wait(ctx); err != nil {
			return fail(fmt.Errorf("wait: %w", err))
		}
	}
	if err := task.Start(ctx); err != nil {
		return fail(fmt.Errorf("start: %w", err))
	}
	if kill {
		if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
			return fail(fmt.Errorf("kill: %w", err))
		}
	}
	for {
		st, err := task.Status(ctx)
		if err != nil {
			return fail(fmt.Errorf("status: %w", err))
		}
		if st.Status == containerd.Stopped {
			l.status = st.ExitStatus
			break
		}
		select {
		case <-ctx.Done():
			return fail(fmt.Errorf("not stopped: %w", ctx.Err()))
		case <-time.After(20 * time.Millisecond):
		}
	}
	l.waited = l.status
	if exitC != nil {
		select {
		case es := <-exitC:
			l.waited = es.ExitCode()
			if es.Error() != nil {
				return fail(fmt.Errorf("wait: %w", es.Error()))
			}
		case <-ctx.Done():
			return fail(fmt.Errorf("no exit through Wait: %w", ctx.Err()))
		}
	}
	u.markDeleting(l.id)
	es, err := task.Delete(ctx)
	if err != nil {
		return fail(fmt.Errorf("delete task: %w", err))
	}
	l.deleted = es.ExitCode()
	if err := cont.Delete(ctx); err != nil {
		l.err = fmt.Errorf("delete container: %w", err)
	}
	return l
}

// TestLiveUpgradeContainers is issue 15's acceptance test: live upgrade of
// shims that serve containers of every kind, under the first and the last
// selected containerd (1.6 and 2.4.2 by default) with the first runc. Each
// subtest runs a containerd of its own whose PATH finds the shim in a
// directory of the test, and starts through the Go client:
//
//   - single: a shim of its own, exits 21 on SIGTERM;
//   - g1, g2, g3: one group shim (io.containerd.runc.v2.group), exit 22 on
//     SIGTERM, 137 on SIGKILL, 23 on SIGTERM;
//   - tty: a terminal, answering each line on it with "got-<line>" and
//     `stty size`;
//   - logbin: stdout to a binary:// logger (testdata/logger), a numbered
//     line every 50 ms, exits 25 on SIGTERM;
//   - counter: a counter every 10 ms to a file:// log;
//   - exited: a shim of its own, exited 3 before the upgrade and not
//     deleted until the end (the CRI plugin keeps exited containers): its
//     status and code must survive the upgrades.
//
// single, g1, tty and every other churn container (below) have a Wait held
// from before their start to their exit, as the CRI plugin holds one for
// every container: a Wait request stays in flight at the shim across the
// upgrades. logbin, counter and exited have none, so that a shim failing
// for that reason does not hide how the others fare: a shim not upgraded
// is an error naming why, and the rest of the test goes on with the shims
// that were.
//
// With build A installed and running, build B (the same source with
// another -X main.version) is installed at the same path and `tether
// upgrade --expect B --all` run (by pid when shims of others run on the
// machine). Then: every shim keeps its pid and socket, /proc/PID/exe is B
// and `tether ps` says B; every container keeps its pid and runs; the
// counter log and the logger's record go on with no gap and no duplicate;
// the terminal still answers; the logger keeps its pid. A binary that
// cannot take the state over (a stand-in answering the dry run so) is
// refused and changes nothing. Then exec (exit 7, its output), resize of
// the terminal (stty size follows), pause/resume, Stats and, at the end,
// kill of every container work, and every exit reaches containerd with its
// code: as a /tasks/exit event, from Delete, and through the held Waits.
// In between, 20 upgrades in a row alternate A and B while a churn
// goroutine starts containers in the group shim that exit by themselves or
// are killed: not one exit lost (Status, Delete, the event and, for every
// other one, a held Wait give each its code). Through it all containerd's log never says it lost a shim
// connection of a container the test was not deleting. At the end nothing
// is left: no shim, socket, mount, bundle, runtime state, cgroup, process
// or zombie.
func TestLiveUpgradeContainers(t *testing.T) {
	if !isTether() {
		t.Logf("live upgrade is Tether's; %s has none", runtimeName)
		return
	}
	if len(versions) == 0 {
		t.Fatal("no containerd versions selected")
	}
	builds := buildUpgcShims(t)
	logger := buildLogger(t)
	tetherCLI(t)
	vs := []*cdVersion{versions[0]}
	if len(versions) > 1 {
		vs = append(vs, versions[len(versions)-1])
	}
	for _, v := range vs {
		t.Run(v.name, func(t *testing.T) {
			upgcRun(t, v, builds, logger)
		})
	}
}

func upgcRun(t *testing.T, v *cdVersion, builds upgcBuilds, logger string) {
	dir := t.TempDir()
	exe := filepath.Join(dir, shimBinaryName)
	instA := installShim(t, builds.a, exe)
	d := upgcDaemon(t, v, dir)
	ns := "e2e-upgc-" + v.tag
	off := d.LogSize()
	before := socketDirEntries()
	t.Cleanup(func() {
		d.cleanupNamespace(t, ns)
		killProcessesOf(t, logger)
		if t.Failed() {
			t.Log(d.LogTail(off, 150))
		}
		if err := d.stop(); err != nil {
			t.Errorf("stop containerd %s: %v", d.Name, err)
		}
	})
	t.Logf("containerd %s, runc %s; shim installed at %s", v.name, d.r.version, exe)

	waitCtx, cancelWaits := context.WithCancel(namespaces.WithNamespace(context.Background(), ns))
	t.Cleanup(cancelWaits)
	u := &upgc{d: d, ns: ns, c: d.goClient(t, ns), waitCtx: waitCtx, deleting: map[string]time.Time{}}
	u.exits = subscribeExits(t, u.c, ns)

	// 1. The containers, under build A.
	group := []oci.SpecOpts{oci.WithAnnotations(map[string]string{groupLabel: upgcGroup})}
	trap := func(code int) []string {
		return []string{"/bin/sh", "-c", fmt.Sprintf("trap 'exit %d' TERM; sleep 1000000 & wait", code)}
	}
	single := u.start(t, "single", cio.NullIO, nil, true, syscall.SIGTERM, 21, trap(21)...)
	waitFor(t, 30*time.Second, "the event subscription to see /tasks/start of single", func() (bool, string) {
		return u.exits.sawStart("single"), fmt.Sprintf("errors %v", u.exits.errors())
	})
	g1 := u.start(t, "g1", cio.NullIO, group, true, syscall.SIGTERM, 22, trap(22)...)
	g2 := u.start(t, "g2", cio.NullIO, group, false, syscall.SIGKILL, 137, sleeper...)
	g3 := u.start(t, "g3", cio.NullIO, group, false, syscall.SIGTERM, 23, trap(23)...)

	ttyIn, ttyInW := io.Pipe()
	t.Cleanup(func() { ttyInW.Close() })
	var ttyOut testkit.LockedBuffer
	tty := u.start(t, "tty", cio.NewCreator(cio.WithStreams(ttyIn, &ttyOut, nil), cio.WithTerminal), []oci.SpecOpts{oci.WithTTY},
		true, syscall.SIGKILL, 137, "/bin/sh", "-c", `while read l; do echo "got-$l"; stty size; done`)

	rec := filepath.Join(t.TempDir(), "logger")
	logbin := u.start(t, "logbin", cio.BinaryIO(logger, map[string]string{"dir": rec}), nil, false, syscall.SIGTERM, 25,
		"/bin/sh", "-c", `trap 'exit 25' TERM; i=0; while :; do echo bin-$i; i=$((i+1)); usleep 50000; done`)
	recOut := filepath.Join(rec, "stdout")

	counterLog := filepath.Join(t.TempDir(), "counter.log")
	counter := u.start(t, "counter", cio.LogFile(counterLog), nil, false, syscall.SIGKILL, 137,
		"/bin/sh", "-c", `i=0; while :; do echo $i; i=$((i+1)); usleep 10000; done`)

	// exited: a container that exited (3) before the upgrade and is not
	// deleted yet, as the CRI plugin keeps an exited container until it is
	// removed.
	exited := func() *upgcCtr {
		ctx, cancel := clientCtx(ns)
		defer cancel()
		cont, err := u.c.NewContainer(ctx, "exited", containerd.WithNewSpec(oci.WithRootFSPath(rootfsDir), oci.WithProcessArgs("/bin/sh", "-c", "exit 3")))
		if err != nil {
			t.Fatalf("NewContainer exited: %v", err)
		}
		task, err := cont.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatalf("NewTask exited: %v", err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatalf("Start exited: %v", err)
		}
		d.waitStatus(t, ns, "exited", "STOPPED")
		return &upgcCtr{id: "exited", cont: cont, task: task, pid: task.Pid(), code: 3, shim: d.shimOf(t, ns, "exited")}
	}()
	checkExited := func(when string) {
		t.Helper()
		ctx, cancel := clientCtx(ns)
		defer cancel()
		if st, err := exited.task.Status(ctx); err != nil || st.Status != containerd.Stopped || st.ExitStatus != 3 {
			t.Errorf("%s: the exited container's status is %+v (%v), want stopped with exit status 3", when, st, err)
		}
	}

	ctrs := []*upgcCtr{single, g1, g2, g3, tty, logbin, counter} // the running ones
	every := append(slices.Clone(ctrs), exited)
	if g1.shim.pid != g2.shim.pid || g1.shim.pid != g3.shim.pid {
		t.Fatalf("g1, g2 and g3 are served by the shims %d, %d and %d; want one group shim", g1.shim.pid, g2.shim.pid, g3.shim.pid)
	}
	shims := map[int]int{} // shim pid -> its containers
	for _, c := range every {
		shims[c.shim.pid]++
	}
	if len(shims) != 6 {
		t.Fatalf("%d shims for single, the group, tty, logbin, counter and exited, want 6: %v", len(shims), shims)
	}
	shimPids := make([]int, 0, len(shims))
	for p := range shims {
		shimPids = append(shimPids, p)
	}
	slices.Sort(shimPids)

	// The setup works: the counter counts, the logger logs, the terminal
	// answers at the size given, and tether ps shows build A.
	nCounter := waitSeqGrows(t, "the counter log", counterLog, "", 20)
	nBin := waitSeqGrows(t, "the logger's record of logbin", recOut, "bin-", 3)
	loggerP := loggerPid(t, logger, rec)
	ttyAsk := func(t *testing.T, line, size string, resize func() error) {
		t.Helper()
		if resize != nil {
			if err := resize(); err != nil {
				t.Fatalf("resize of tty: %v", err)
			}
		}
		mark := len(ttyOut.String())
		if _, err := io.WriteString(ttyInW, line+"\n"); err != nil {
			t.Fatalf("write to tty's stdin: %v", err)
		}
		waitFor(t, 30*time.Second, fmt.Sprintf("tty to answer %q with its size %s", line, size), func() (bool, string) {
			out := ttyOut.String()[mark:]
			return strings.Contains(out, "got-"+line) && strings.Contains(out, size), fmt.Sprintf("output since: %q", out)
		})
	}
	ttyAsk(t, "before", "33 97", func() error {
		ctx, cancel := clientCtx(ns)
		defer cancel()
		return tty.task.Resize(ctx, 97, 33)
	})
	u.checkShims(t, "before the upgrade", shims, instA, upgcBuildA)
	t.Logf("set up: shims %v (pid: containers), counter at %d lines, logger %d at %d lines", shims, nCounter, loggerP, nBin)

	// 2. Upgrade every shim to build B.
	instB := installShim(t, builds.b, exe)
	out, err := u.upgrade(t, upgcBuildB, shimPids, true)
	var up, notUp []int
	for _, p := range shimPids {
		if strings.Contains(shimLine(out, p), fmt.Sprintf("upgraded %s -> %s", upgcBuildA, upgcBuildB)) {
			up = append(up, p)
		} else {
			notUp = append(notUp, p)
		}
	}
	// Why a shim was not upgraded, as far as the test can tell.
	const refusedV1 = "upgrade refused: the shim holds"
	why := func(p int, hint bool) string {
		var ids, held []string
		for _, c := range every {
			if c.shim.pid == p {
				ids = append(ids, c.id)
				if c.waitC != nil {
					held = append(held, c.id)
				}
			}
		}
		l := shimLine(out, p)
		msg := fmt.Sprintf("shim %d (containers %v): %q.", p, ids, l)
		switch {
		case !hint:
		case strings.Contains(l, refusedV1):
			msg += " This build refuses to upgrade a shim that holds containers: state version 2 (issue 15, containers handed over) is not in it."
		case strings.Contains(l, "hand-over failed") && len(held) > 0:
			msg += fmt.Sprintf(" The hand-over failed after it was accepted; %v had a Wait in flight at the shim since its start"+
				" (as CRI holds one for every container: internal/cri/server/container_start.go), a request the quiesce waits for in vain.", held)
		}
		return msg
	}
	if len(up) == 0 {
		// Evidence that the failed upgrade changed nothing, then stop.
		u.checkShims(t, "after the failed upgrade", shims, instA, upgcBuildA)
		u.checkContainers(t, "after the failed upgrade", ctrs)
		n := waitSeqGrows(t, "the counter log after the failed upgrade", counterLog, "", nCounter)
		var whys []string
		head := ""
		if strings.Count(out, refusedV1) == len(notUp) {
			head = " This build refuses to upgrade a shim that holds containers: state version 2 (issue 15, containers handed over) is not in it."
		}
		for _, p := range notUp {
			whys = append(whys, why(p, head == ""))
		}
		t.Fatalf("tether upgrade to build %s upgraded no shim (exit: %v).%s\n  %s\n"+
			"The setup was complete: 6 shims (3 containers in the group shim, one exited and not deleted), a terminal, a binary:// logger, a file:// counter "+
			"at %d lines with no gap, two different builds; after the failed upgrade the shims, containers and counter (%d lines) go on unchanged.",
			upgcBuildB, err, head, strings.Join(whys, "\n  "), nCounter, n)
	}
	// A shim that was not upgraded is an error; it stays as it was (build
	// A), and the upgrades in a row leave it out.
	stayed := map[int]int{}
	for _, p := range notUp {
		t.Errorf("not upgraded to %s: %s", upgcBuildB, why(p, true))
		stayed[p] = shims[p]
		delete(shims, p)
	}
	shimPids = up
	u.checkShims(t, "after the upgrade", shims, instB, upgcBuildB)
	u.checkShims(t, "after the upgrade, not upgraded", stayed, instA, upgcBuildA)
	u.checkContainers(t, "after the upgrade", ctrs)
	checkExited("after the upgrade")
	nCounter = waitSeqGrows(t, "the counter log after the upgrade", counterLog, "", nCounter+50)
	nBin = waitSeqGrows(t, "the logger's record after the upgrade", recOut, "bin-", nBin+5)
	if p := loggerPid(t, logger, rec); p != loggerP || !alive(loggerP) {
		t.Errorf("the logger was %d before the upgrade, is %d after (alive: %v)", loggerP, p, alive(loggerP))
	}
	ttyAsk(t, "after", "33 97", nil)

	// 3. A build that cannot take the state over is refused and changes nothing.
	installShim(t, builds.old, exe)
	out, err = u.upgrade(t, upgcBuildOld, shimPids, true)
	if err == nil {
		t.Errorf("tether upgrade to %s, which reads no state version of this build, succeeded; want it refused", upgcBuildOld)
	}
	for _, p := range shimPids {
		if l := shimLine(out, p); !strings.Contains(l, "upgrade refused") || !strings.Contains(l, "cannot take over state version") {
			t.Errorf("shim %d: %q; want a refusal saying it cannot take over the state version", p, l)
		}
	}
	u.checkShims(t, "after the refused upgrade", shims, instB, upgcBuildB)
	u.checkContainers(t, "after the refused upgrade", ctrs)
	checkExited("after the refused upgrade")
	nCounter = waitSeqGrows(t, "the counter log after the refused upgrade", counterLog, "", nCounter+20)
	// B back in place: containerd runs the binary on disk for every new
	// container's `start` (and `delete`).
	installShim(t, builds.b, exe)

	// 4. Exec, resize, pause/resume and Stats on the upgraded shims.
	for _, c := range ctrs {
		ctx, cancel := clientCtx(ns)
		if err := soakExec(ctx, c.cont, c.task, "x-"+c.id, false, 7); err != nil {
			t.Errorf("after the upgrade: %v", err)
		}
		if err := c.task.Pause(ctx); err != nil {
			t.Errorf("pause %s: %v", c.id, err)
		} else if st, err := c.task.Status(ctx); err != nil || st.Status != containerd.Paused {
			t.Errorf("status of %s after pause: %+v, %v", c.id, st, err)
		}
		if err := c.task.Resume(ctx); err != nil {
			t.Errorf("resume %s: %v", c.id, err)
		} else if st, err := c.task.Status(ctx); err != nil || st.Status != containerd.Running {
			t.Errorf("status of %s after resume: %+v, %v", c.id, st, err)
		}
		if m, err := c.task.Metrics(ctx); err != nil {
			t.Errorf("Stats of %s: %v", c.id, err)
		} else if v, err := typeurl.UnmarshalAny(m.Data); err != nil {
			t.Errorf("Stats of %s: %v", c.id, err)
		} else if s, ok := v.(*v1stats.Metrics); !ok || s.Memory == nil || s.Memory.Usage == nil || s.Memory.Usage.Usage == 0 || s.CPU == nil {
			t.Errorf("Stats of %s: %T %+v; want cgroup v1 metrics with memory in use", c.id, v, v)
		}
		cancel()
	}
	ttyAsk(t, "resized", "41 123", func() error {
		ctx, cancel := clientCtx(ns)
		defer cancel()
		return tty.task.Resize(ctx, 123, 41)
	})
	u.checkContainers(t, "after exec, pause and resume", ctrs)

	// 5. Upgrades in a row, alternating the builds, while containers start
	// and exit in the group shim.
	stop := make(chan struct{})
	var (
		churnMu sync.Mutex
		churn   []churnLife
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			l := u.churnOne(i)
			churnMu.Lock()
			churn = append(churn, l)
			churnMu.Unlock()
		}
	}()
	stopChurn := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	t.Cleanup(stopChurn)
	// A shim refuses while a Create is in flight (docs/design.md, "Live
	// upgrade"): the churn's creates make that happen now and then, and the
	// shim is asked again, by pid.
	cur := map[int]string{} // shim pid -> the build it runs
	for _, p := range shimPids {
		cur[p] = upgcBuildB
	}
	failedRounds, busyRetries := 0, 0
	for round := 1; round <= upgcRounds; round++ {
		build, to := builds.a, upgcBuildA
		if round%2 == 0 {
			build, to = builds.b, upgcBuildB
		}
		inst := installShim(t, build, exe)
		pending, all, failed := shimPids, len(stayed) == 0, 0
		done := map[int]int{} // the shims upgraded in this round
		for attempt := 0; len(pending) > 0 && attempt < 10; attempt++ {
			out, _ := u.upgrade(t, to, pending, all)
			all = false
			var again []int
			for _, p := range pending {
				switch l := shimLine(out, p); {
				case strings.Contains(l, fmt.Sprintf("upgraded %s -> %s", cur[p], to)):
					cur[p] = to
					done[p] = shims[p]
				case strings.Contains(l, "upgrade refused") && strings.Contains(l, "being created"):
					again = append(again, p)
					busyRetries++
				default:
					failed++
					t.Errorf("round %d: shim %d not upgraded %s -> %s: %q", round, p, cur[p], to, l)
				}
			}
			pending = again
		}
		if len(pending) > 0 {
			failed += len(pending)
			t.Errorf("round %d: shims %v refused ten times in a row for a Create in flight", round, pending)
		}
		u.checkShims(t, fmt.Sprintf("after upgrade %d of %d", round, upgcRounds), done, inst, to)
		if failed > 0 {
			if failedRounds++; failedRounds >= 5 {
				stopChurn()
				t.Fatalf("round %d: upgrades failed in five rounds; stopping", round)
			}
		}
	}
	stopChurn()
	u.checkContainers(t, "after the upgrades in a row", ctrs)
	checkExited("after the upgrades in a row")
	nCounter = waitSeqGrows(t, "the counter log after the upgrades in a row", counterLog, "", nCounter+20)
	nBin = waitSeqGrows(t, "the logger's record after the upgrades in a row", recOut, "bin-", nBin+2)
	ttyAsk(t, "churned", "41 123", nil)

	lost, wrong, failed := 0, 0, 0
	for _, l := range churn {
		switch {
		case l.err != nil:
			failed++
			t.Errorf("churn %s: %v", l.id, l.err)
		case l.status != l.want || l.waited != l.want || l.deleted != l.want:
			wrong++
			t.Errorf("churn %s: Status gave exit %d, Wait %d and Delete %d, want %d", l.id, l.status, l.waited, l.deleted, l.want)
		}
	}
	if len(churn) == 0 {
		t.Errorf("the churn started no container")
	}
	// Every exit also came as an event, with its code.
	var missing []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		missing = missing[:0]
		for _, l := range churn {
			if l.err == nil && !slices.Contains(u.exits.statuses(l.id, l.id), l.want) {
				missing = append(missing, fmt.Sprintf("%s (want %d, events %v)", l.id, l.want, u.exits.statuses(l.id, l.id)))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		lost = len(missing)
		t.Errorf("no /tasks/exit event with the right code for %d churn containers: %v", len(missing), missing)
	}
	dups := 0
	for _, l := range churn {
		if n := len(u.exits.statuses(l.id, l.id)); n > 1 {
			dups++
			t.Logf("churn %s: %d /tasks/exit events: %v", l.id, n, u.exits.statuses(l.id, l.id))
		}
	}
	t.Logf("upgrade-figure: containerd=%s rounds=%d refused_for_a_create_in_flight=%d churn_containers=%d churn_failed=%d churn_wrong_code=%d churn_exit_event_missing=%d churn_exit_event_repeated=%d counter_lines=%d logger_lines=%d",
		v.name, upgcRounds, busyRetries, len(churn), failed, wrong, lost, dups, nCounter, nBin)

	// 6. Kill every container: each exit reaches containerd with its code,
	// through the Wait held since its start and as an event; as do the
	// execs' exits of step 4.
	if bad := u.lostShimLines(off); len(bad) > 0 {
		t.Errorf("containerd's log says it lost a shim connection of a container not being deleted:\n%s", strings.Join(bad, "\n"))
	}
	for _, c := range ctrs {
		ctx, cancel := clientCtx(ns)
		if err := c.task.Kill(ctx, c.sig); err != nil {
			t.Errorf("kill %s with %v: %v", c.id, c.sig, err)
		}
		cancel()
	}
	for _, c := range ctrs {
		if c.waitC == nil {
			continue
		}
		select {
		case es := <-c.waitC:
			if es.ExitCode() != c.code || es.Error() != nil {
				t.Errorf("%s: the Wait held since its start gave exit %d (%v), want %d after %v", c.id, es.ExitCode(), es.Error(), c.code, c.sig)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("%s: no exit through the Wait held since its start, 60 s after %v", c.id, c.sig)
		}
	}
	waitFor(t, 30*time.Second, "a /tasks/exit event with its code for every container and exec", func() (bool, string) {
		var miss []string
		if !slices.Contains(u.exits.statuses("exited", "exited"), 3) {
			miss = append(miss, fmt.Sprintf("exited (want 3, got %v)", u.exits.statuses("exited", "exited")))
		}
		for _, c := range ctrs {
			if !slices.Contains(u.exits.statuses(c.id, c.id), c.code) {
				miss = append(miss, fmt.Sprintf("%s (want %d, got %v)", c.id, c.code, u.exits.statuses(c.id, c.id)))
			}
			if !slices.Contains(u.exits.statuses(c.id, "x-"+c.id), 7) {
				miss = append(miss, fmt.Sprintf("exec x-%s (want 7, got %v)", c.id, u.exits.statuses(c.id, "x-"+c.id)))
			}
		}
		return len(miss) == 0, fmt.Sprintf("missing %v; subscription errors %v", miss, u.exits.errors())
	})
	if _, err := seqLines(counterLog, ""); err != nil {
		t.Errorf("the counter log at the end: %v", err)
	}
	if _, err := seqLines(recOut, "bin-"); err != nil {
		t.Errorf("the logger's record at the end: %v", err)
	}

	// 7. Delete everything; nothing may be left.
	for _, c := range every {
		ctx, cancel := clientCtx(ns)
		u.markDeleting(c.id)
		if es, err := c.task.Delete(ctx); err != nil {
			t.Errorf("delete task %s: %v", c.id, err)
		} else if es.ExitCode() != c.code {
			t.Errorf("delete of %s reports exit %d, want %d", c.id, es.ExitCode(), c.code)
		}
		if err := c.cont.Delete(ctx); err != nil {
			t.Errorf("delete container %s: %v", c.id, err)
		}
		cancel()
	}
	if bad := u.lostShimLines(off); len(bad) > 0 {
		t.Errorf("containerd's log says it lost a shim connection of a container not being deleted:\n%s", strings.Join(bad, "\n"))
	}
	waitFor(t, 30*time.Second, fmt.Sprintf("the logger %d to be gone", loggerP), func() (bool, string) {
		return !alive(loggerP), fmt.Sprintf("pid %d (%s) alive", loggerP, procName(loggerP))
	})
	l := d.waitNoLeftovers(t, ns, before, 30*time.Second)
	t.Logf("upgrade-figure: containerd=%s %s", v.name, l.figures())
	if errs := u.exits.errors(); len(errs) > 0 {
		t.Errorf("the event subscription: %v", errors.Join(errs...))
	}
}
