package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tether-shim/tether/internal/bootstrap"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/testutil"
)

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  []string
		o    string
	}{
		{nil, nil, "text"},
		{[]string{"x"}, []string{"x"}, "text"},
		{[]string{"-o", "json", "x"}, []string{"x"}, "json"},
		{[]string{"x", "-o", "json"}, []string{"x"}, "json"},
		{[]string{"x", "-o=json", "y"}, []string{"x", "y"}, "json"},
		{[]string{"--", "-o", "json"}, []string{"-o", "json"}, "text"},
		{[]string{"x", "--", "-o"}, []string{"x", "-o"}, "text"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		o := fs.String("o", "text", "")
		pos, err := parse(fs, tc.args)
		if err != nil {
			t.Errorf("%q: %v", tc.args, err)
			continue
		}
		if !reflect.DeepEqual(pos, tc.pos) || *o != tc.o {
			t.Errorf("%q: args %q, -o %s; want %q, %s", tc.args, pos, *o, tc.pos, tc.o)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	if _, err := parse(fs, []string{"x", "-nope"}); err == nil {
		t.Error("unknown flag after an argument: no error")
	}
}

func TestIsShimServer(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		ok   bool
		ns   string
	}{
		{[]string{"/usr/bin/containerd-shim-tether-v2", "-namespace", "k8s.io", "-id", "g", "-address", "/run/c.sock", "-publish-binary", "", "-bundle", "/b", "serve"}, true, "k8s.io"},
		{[]string{"containerd-shim-tether-v2", "-namespace", "default", "-id", "x", "serve"}, true, "default"},
		// The short-lived start and delete are not servers.
		{[]string{"/usr/bin/containerd-shim-tether-v2", "-namespace", "default", "-id", "x", "start"}, false, ""},
		{[]string{"/usr/bin/containerd-shim-tether-v2", "-namespace", "default", "-id", "x", "delete"}, false, ""},
		// Tether installed as containerd-shim-runc-v2, a drop-in.
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "default", "-id", "x", "serve"}, true, "default"},
		// containerd's own runc shim runs its server without an action.
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "default", "-id", "x", "-address", "/run/c.sock"}, false, ""},
		{[]string{"/usr/bin/sleep", "-namespace", "default", "serve"}, false, ""},
		{[]string{"/usr/bin/containerd-shim-tether-v2", "-bogus", "serve"}, false, ""},
		{[]string{"/usr/bin/containerd-shim-tether-v2"}, false, ""},
		{nil, false, ""},
	} {
		f, ok := isShimServer(tc.argv)
		if ok != tc.ok || f.Namespace != tc.ns {
			t.Errorf("%q: %v %q, want %v %q", tc.argv, ok, f.Namespace, tc.ok, tc.ns)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 1536: "1.5KiB", 5 << 20: "5.0MiB", 3 << 30: "3.0GiB", 1 << 62: "4.0EiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestCompareStat(t *testing.T) {
	at := func(dev, ino uint64, sec int64) syscall.Stat_t {
		return syscall.Stat_t{Dev: dev, Ino: ino, Mtim: syscall.Timespec{Sec: sec}}
	}
	for _, tc := range []struct {
		running, disk syscall.Stat_t
		want          string
	}{
		{at(1, 10, 100), at(1, 10, 100), diskSame},
		{at(1, 10, 100), at(1, 11, 200), diskNewer},
		{at(1, 10, 100), at(1, 11, 50), diskOlder},
		{at(1, 10, 100), at(2, 10, 100), diskDifferent},
	} {
		if got := compareStat(tc.running, tc.disk); got != tc.want {
			t.Errorf("running %+v disk %+v: %s, want %s", tc.running.Ino, tc.disk.Ino, got, tc.want)
		}
	}
	// This test binary against itself.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if got := compareBinary(os.Getpid(), self); got != diskSame {
		t.Errorf("compareBinary(self) = %s", got)
	}
	if got := compareBinary(os.Getpid(), "/nonexistent/binary"); got != diskMissing {
		t.Errorf("compareBinary(missing) = %s", got)
	}
}

// testSnapshot is a snapshot with one container of two processes.
func testSnapshot() *introspect.Snapshot {
	five := uint32(5)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return &introspect.Snapshot{
		Schema: introspect.SchemaVersion,
		Shim: introspect.Shim{Pid: 4242, Version: "1.2.3", GoVersion: "go1.26", Namespace: "k8s.io", Group: "pod1",
			Binary: "/usr/bin/containerd-shim-tether-v2", Socket: "/run/containerd/s/abc", Bundle: "/run/b/pod1",
			StartedAt: at, UptimeSeconds: 3725, Goroutines: 9, HeapBytes: 1 << 20},
		Process:     &introspect.ProcStats{RSSBytes: 5 << 20, PSSBytes: 3 << 20, Threads: 4, FDs: 17},
		Connections: introspect.Connections{Open: 1, Peers: []introspect.Peer{{Pid: 77}}, Accepted: 3, Refused: 1},
		Events:      introspect.Events{Queued: 1, Pending: []string{"/tasks/exit"}, Published: 10, Delivered: 9, Retried: 2},
		Containers: []introspect.Container{{
			ID: "c1", Bundle: "/run/b/c1", Status: "running", Pid: 100, Cgroup: "/kubepods/c1",
			Runtime:  introspect.Runtime{Binary: "runc", Root: "/run/containerd/runc/k8s.io"},
			Counters: introspect.ContainerCounters{Exits: 1, OOMs: 2, Execs: 3},
			Processes: []introspect.Process{
				{ID: "c1", Pid: 100, Status: "running", Stdio: introspect.Stdio{Mode: "fifo", Stdout: "/f/out", OutBytes: 2048, Drops: 1}},
				{ID: "e1", ExecID: "e1", Pid: 101, Status: "stopped", ExitStatus: &five, ExitedAt: &at, Stdio: introspect.Stdio{Mode: "null"}},
			},
		}},
		RPC: []introspect.RPCMethod{{Method: "/containerd.task.v2.Task/State", Count: 4, Errors: 1, SumSeconds: 0.004,
			Buckets: []introspect.Bucket{{LE: 0.0005, Count: 1}, {LE: 0.001, Count: 3}, {LE: 0.0025, Count: 4}}}},
	}
}

func TestWriteSnapshot(t *testing.T) {
	var b bytes.Buffer
	if err := writeSnapshot(&b, testSnapshot()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"shim         4242, Tether 1.2.3 (go1.26)",
		"started      2026-01-02T03:04:05Z, up 1h2m5s",
		"memory       RSS 5.0MiB, PSS 3.0MiB, Go heap 1.0MiB",
		"threads      4, fds 17, goroutines 9",
		"connections  1 open (peer pids 77); 3 accepted, 1 refused",
		"events       1 queued; 10 published, 9 delivered, 2 retried, 0 dropped",
		"pending      /tasks/exit",
		"c1: running, pid 100",
		"runtime   runc (root /run/containerd/runc/k8s.io)",
		"counters  1 exits, 2 OOM kills, 3 execs",
		"c1 (init)  100  running  -     fifo   2.0KiB  1      out=/f/out",
		"e1         101  stopped  5     null   0B      0      -",
		"/containerd.task.v2.Task/State  4      1       1ms",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
}

// TestMetricsText: the metrics of a shim that answered and one that did
// not parse back as the Prometheus text format with their values, and
// promtool (Debian's prometheus package, which `make deps` installs)
// accepts them.
func TestMetricsText(t *testing.T) {
	m := newMetricSet()
	s := shim{Pid: 4242, Flags: bootstrap.Flags{Namespace: "k8s.io", ID: "pod1"}}
	m.addShim(s, testSnapshot().Process, testSnapshot())
	m.addShim(shim{Pid: 7, Flags: bootstrap.Flags{Namespace: "default", ID: "old"}}, &introspect.ProcStats{RSSBytes: 1}, nil)
	var b bytes.Buffer
	if err := m.write(&b); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	value := func(name string, kv ...string) float64 {
		t.Helper()
		f, ok := families[name]
		if !ok {
			t.Fatalf("no family %s", name)
		}
	metrics:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(kv); i += 2 {
				if have[kv[i]] != kv[i+1] {
					continue metrics
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
		t.Fatalf("no %s%v", name, kv)
		return 0
	}
	for _, tc := range []struct {
		name string
		kv   []string
		want float64
	}{
		{"tether_shim_up", []string{"pid", "4242"}, 1},
		{"tether_shim_up", []string{"pid", "7"}, 0},
		{"tether_shim_rss_bytes", []string{"pid", "7"}, 1},
		{"tether_shim_pss_bytes", []string{"pid", "4242", "namespace", "k8s.io", "group", "pod1"}, 3 << 20},
		{"tether_shim_threads", []string{"pid", "4242"}, 4},
		{"tether_shim_fds", []string{"pid", "4242"}, 17},
		{"tether_shim_tasks", []string{"pid", "4242"}, 1},
		{"tether_shim_info", []string{"version", "1.2.3"}, 1},
		{"tether_shim_events_queued", []string{"pid", "4242"}, 1},
		{"tether_shim_events_retried_total", []string{"pid", "4242"}, 2},
		{"tether_shim_rpc_requests_total", []string{"method", "/containerd.task.v2.Task/State"}, 4},
		{"tether_shim_rpc_errors_total", []string{"method", "/containerd.task.v2.Task/State"}, 1},
		{"tether_shim_rpc_duration_seconds", []string{"method", "/containerd.task.v2.Task/State"}, 4},
		{"tether_container_exits_total", []string{"container", "c1"}, 1},
		{"tether_container_ooms_total", []string{"container", "c1"}, 2},
		{"tether_container_execs_total", []string{"container", "c1"}, 3},
		{"tether_container_stdio_bytes_total", []string{"container", "c1"}, 2048},
		{"tether_container_stdio_drops_total", []string{"container", "c1"}, 1},
	} {
		if got := value(tc.name, tc.kv...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.kv, got, tc.want)
		}
	}
	if _, ok := families["tether_shim_tasks"]; ok && len(families["tether_shim_tasks"].GetMetric()) != 1 {
		t.Error("a shim that did not answer has a task count")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool (Debian's prometheus package; `make deps` installs it): %v", err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(b.Bytes())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v: %s\n%s", err, out, b.String())
	}
}

// TestRunErrors: bad command lines and bad targets get clear errors and
// their exit status.
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	notSocket := filepath.Join(dir, "file")
	if err := os.WriteFile(notSocket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A socket of another uid, and one nobody listens on any more.
	other, dead := filepath.Join(dir, "other"), filepath.Join(dir, "dead")
	testutil.ForeignSocket(t, other)
	testutil.DeadSocket(t, dead)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{}, exitUsage, "usage: tether"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"inspect"}, exitUsage, "inspect takes one SHIM or CONTAINER"},
		{[]string{"inspect", "-o", "yaml", "1"}, exitUsage, `-o "yaml": want text or json`},
		{[]string{"inspect", "2147483647"}, 1, "no process has pid 2147483647"},
		{[]string{"inspect", fmt.Sprint(os.Getpid())}, 1, "is not a Tether shim server"},
		{[]string{"stacks", notSocket}, 1, "is not a socket"},
		{[]string{"stacks", filepath.Join(dir, "none")}, 1, "no such file"},
		{[]string{"stacks", other}, 1, "run tether as the shim's uid: socket " + other + " belongs to uid 65534"},
		{[]string{"inspect", dead}, 1, "no server listens on the socket (a leftover: see `tether doctor`)"},
		{[]string{"pprof", "1", "mem"}, exitUsage, `profile "mem": want heap or cpu`},
		{[]string{"pprof", "1", "cpu", "-seconds", "0"}, exitUsage, "-seconds 0"},
		{[]string{"ps", "extra"}, exitUsage, "ps takes no arguments"},
		{[]string{"-state-dir", "relative", "ps"}, exitUsage, "not an absolute path"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("tether %q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
	var stdout bytes.Buffer
	if code := run(context.Background(), []string{"-v"}, &stdout, &bytes.Buffer{}); code != 0 || !strings.HasPrefix(stdout.String(), "tether ") {
		t.Errorf("-v: %d %q", code, stdout.String())
	}
}

// TestDoctorTree: in directories of its own, doctor finds a socket nobody
// listens on and a bundle older than the grace that nothing serves, not a
// live socket nor a young bundle nor one a process works in nor a
// directory that is no bundle; --fix removes exactly the two.
func TestDoctorTree(t *testing.T) {
	root := t.TempDir()
	socketDir := filepath.Join(root, "s")
	stateDir := filepath.Join(root, "state")
	// "stranger" is old and served by nothing, but no bundle: no config.json, no rootfs.
	for _, d := range []string{socketDir, filepath.Join(stateDir, "ns", "old"), filepath.Join(stateDir, "ns", "young"), filepath.Join(stateDir, "ns", "busy"), filepath.Join(stateDir, "ns", "stranger")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	dead := filepath.Join(socketDir, "dead")
	testutil.DeadSocket(t, dead)
	live := filepath.Join(socketDir, "live")
	ll, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()
	old := time.Now().Add(-time.Hour)
	for _, id := range []string{"old", "busy", "young"} {
		if err := os.WriteFile(filepath.Join(stateDir, "ns", id, "config.json"), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"old", "busy", "stranger"} {
		if err := os.Chtimes(filepath.Join(stateDir, "ns", id), old, old); err != nil {
			t.Fatal(err)
		}
	}
	// A process working in "busy" is its shim, as far as doctor can tell.
	sleeper := exec.Command("sleep", "1000")
	sleeper.Dir = filepath.Join(stateDir, "ns", "busy")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sleeper.Process.Kill()
		sleeper.Wait()
	}()

	survey := func() *node {
		t.Helper()
		listening, err := listeningSockets()
		if err != nil {
			t.Fatal(err)
		}
		n := &node{
			paths:     paths{socketDir: socketDir},
			served:    map[string]bool{},
			listening: map[string]bool{},
			cwds:      map[string]bool{sleeper.Dir: true},
			stateDirs: []string{stateDir},
		}
		for _, p := range listening {
			n.listening[p] = true
		}
		return n
	}
	findings := survey().diagnose(time.Minute, time.Now())
	var got []string
	for _, f := range findings {
		got = append(got, f.Kind+" "+f.Path)
		if f.Why == "" || !f.Fixable {
			t.Errorf("%+v: want a reason and fixable", f)
		}
	}
	want := []string{kindDeadSocket + " " + dead, kindStaleBundle + " " + filepath.Join(stateDir, "ns", "old")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("findings %q, want %q", got, want)
	}
	for _, f := range findings {
		if err := f.fix(context.Background()); err != nil {
			t.Errorf("fix %s: %v", f.Path, err)
		}
	}
	for _, p := range []string{dead, filepath.Join(stateDir, "ns", "old")} {
		if exists(p) {
			t.Errorf("%s is still there after the fix", p)
		}
	}
	for _, p := range []string{live, filepath.Join(stateDir, "ns", "young"), filepath.Join(stateDir, "ns", "stranger"), sleeper.Dir} {
		if !exists(p) {
			t.Errorf("%s was removed", p)
		}
	}
	if left := survey().diagnose(time.Minute, time.Now()); len(left) != 0 {
		t.Errorf("after the fix: %+v", left)
	}
}

// TestRemoveBundleRefusesMounts: a bundle with something mounted in it is
// not removed, and the mount's content is untouched.
func TestRemoveBundleRefusesMounts(t *testing.T) {
	bundle := t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", rootfs, "tmpfs", 0, ""); err != nil {
		t.Fatalf("mount a tmpfs (needs root): %v", err)
	}
	defer syscall.Unmount(rootfs, syscall.MNT_DETACH)
	keep := filepath.Join(rootfs, "keep")
	if err := os.WriteFile(keep, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := removeBundle(bundle); err == nil || !strings.Contains(err.Error(), "still mounted") {
		t.Errorf("removeBundle with a mount: %v, want 'still mounted'", err)
	}
	if !exists(keep) {
		t.Error("the mount's content was removed")
	}
	// Even past the mount check, the walk does not cross into it.
	var st syscall.Stat_t
	if err := syscall.Lstat(bundle, &st); err != nil {
		t.Fatal(err)
	}
	if err := removeSameDev(bundle, st.Dev); err == nil || !strings.Contains(err.Error(), "another filesystem") {
		t.Errorf("removeSameDev across a mount: %v", err)
	}
	if !exists(keep) {
		t.Error("the mount's content was removed")
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMetricsListen: `metrics --listen` serves the text format on
// /metrics, with its content type, until its context ends.
func TestMetricsListen(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"metrics", "--listen", "127.0.0.1:0"}, &bytes.Buffer{}, &stderr) }()
	var url string
	for deadline := time.Now().Add(30 * time.Second); url == ""; {
		if _, rest, ok := strings.Cut(stderr.String(), "serving "); ok {
			url = strings.TrimSpace(rest)
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("metrics --listen did not say where it serves: %q", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get(url)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Errorf("GET %s: %s, content type %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := parser.TextToMetricFamilies(bytes.NewReader(body)); err != nil {
		t.Errorf("GET %s: %v\n%s", url, err, body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("metrics --listen exited %d after its context ended: %s", code, stderr.String())
	}
}

// TestPsOtherUID: a shim-like process of another uid is listed with why it
// was not asked; its binary is not run.
func TestPsOtherUID(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r := psRowOf(context.Background(), shim{Pid: os.Getpid(), UID: 65534, Exe: self, Flags: bootstrap.Flags{Namespace: "ns", ID: "g"}})
	if r.Version != "?" || r.Tasks != nil || !strings.Contains(r.Error, "runs as uid 65534") || r.RSSBytes == 0 || r.OnDisk != diskSame {
		t.Errorf("row %+v", r)
	}
}
