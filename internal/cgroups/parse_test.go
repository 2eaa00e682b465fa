package cgroups

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseProcCgroup(t *testing.T) {
	for _, tc := range []struct {
		file string
		want []procEntry
	}{
		{"proc-cgroup-unified", []procEntry{{id: "0", path: "/system.slice/containerd.service/kubepods/pod1/ctr"}}},
		{"proc-cgroup-unified-deleted", []procEntry{{id: "0", path: "/kubepods/pod1/ctr", deleted: true}}},
		{"proc-cgroup-hybrid", nil}, // checked below
		{"proc-cgroup-legacy", []procEntry{
			{id: "12", controllers: []string{"pids"}, path: "/docker/abc"},
			{id: "11", controllers: []string{"hugetlb"}, path: "/docker/abc"},
			{id: "10", controllers: []string{"net_cls", "net_prio"}, path: "/docker/abc"},
			{id: "9", controllers: []string{"perf_event"}, path: "/docker/abc"},
			{id: "8", controllers: []string{"memory"}, path: "/docker/abc"},
			{id: "7", controllers: []string{"cpu", "cpuacct"}, path: "/docker/abc"},
			{id: "6", controllers: []string{"cpuset"}, path: "/docker/abc"},
			{id: "5", controllers: []string{"blkio"}, path: "/docker/abc"},
			{id: "4", controllers: []string{"devices"}, path: "/docker/abc"},
			{id: "3", controllers: []string{"freezer"}, path: "/docker/abc"},
			{id: "2", controllers: []string{"rdma"}, path: "/"},
			{id: "1", controllers: []string{"name=systemd"}, path: "/docker/abc"},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := parseProcCgroup(readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if len(got) != 11 {
					t.Fatalf("got %d entries, want 11: %+v", len(got), got)
				}
				if e := got[9]; e.id != "1" || !reflect.DeepEqual(e.controllers, []string{"cpu"}) || e.path != "/docker/abc" {
					t.Errorf("cpu line: %+v", e)
				}
				if e := got[1]; !reflect.DeepEqual(e.controllers, []string{"name=systemd"}) {
					t.Errorf("named hierarchy line: %+v", e)
				}
				if e := got[10]; e.id != "0" || e.controllers != nil || e.path != "/docker/abc" {
					t.Errorf("unified line: %+v", e)
				}
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"garbage\n", "1:memory\n", "1:memory:relative\n"} {
		if _, err := parseProcCgroup([]byte(bad)); !errdefs.IsInternal(err) {
			t.Errorf("parseProcCgroup(%q) = %v, want an internal error", bad, err)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	got, err := parseMountinfo(readTestdata(t, "mountinfo-legacy"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 11 {
		t.Fatalf("got %d cgroup mounts, want 11: %+v", len(got), got)
	}
	if m := got[3]; m.point != "/sys/fs/cgroup/cpu,cpuacct" || m.v2 || !m.has([]string{"cpu", "cpuacct"}) || m.dev != "0:29" || m.root != "/" {
		t.Errorf("cpu,cpuacct mount: %+v", m)
	}
	if m := got[1]; !m.has([]string{"name=systemd"}) || m.has([]string{"systemd"}) {
		t.Errorf("named mount: %+v", m)
	}

	got, err = parseMountinfo(readTestdata(t, "mountinfo-cgroupns"))
	if err != nil {
		t.Fatal(err)
	}
	want := []mount{
		{dev: "0:26", root: "/kubepods/pod1", point: "/sys/fs/cgroup", v2: true},
		{dev: "0:26", root: "/kubepods", point: "/mnt/cg x", v2: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cgroupns mounts: got %+v, want %+v", got, want)
	}

	if _, err := parseMountinfo(readTestdata(t, "mountinfo-bad")); !errdefs.IsInternal(err) {
		t.Errorf("bad mountinfo: %v, want an internal error", err)
	}
}

func TestMountDir(t *testing.T) {
	m := mount{root: "/kubepods/pod1", point: "/sys/fs/cgroup"}
	for in, want := range map[string]string{
		"/kubepods/pod1":     "/sys/fs/cgroup",
		"/kubepods/pod1/ctr": "/sys/fs/cgroup/ctr",
		"/kubepods/pod10":    "",
		"/other":             "",
	} {
		got, ok := m.dir(in)
		if ok != (want != "") || got != want {
			t.Errorf("dir(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func TestResolve(t *testing.T) {
	type want struct {
		v1    map[string]string
		v2    string
		path  string
		class error
	}
	legacyDirs := map[string]string{
		"pids":         "/sys/fs/cgroup/pids/docker/abc",
		"hugetlb":      "/sys/fs/cgroup/hugetlb/docker/abc",
		"memory":       "/sys/fs/cgroup/memory/docker/abc",
		"cpu":          "/sys/fs/cgroup/cpu,cpuacct/docker/abc",
		"cpuacct":      "/sys/fs/cgroup/cpu,cpuacct/docker/abc",
		"cpuset":       "/sys/fs/cgroup/cpuset/docker/abc",
		"blkio":        "/sys/fs/cgroup/blkio/docker/abc",
		"devices":      "/sys/fs/cgroup/devices/docker/abc",
		"freezer":      "/sys/fs/cgroup/freezer/docker/abc",
		"rdma":         "/sys/fs/cgroup/rdma",
		"name=systemd": "/sys/fs/cgroup/systemd/docker/abc",
	}
	hybridDirs := map[string]string{
		"pids":         "/sys/fs/cgroup/pids/docker/abc",
		"hugetlb":      "/sys/fs/cgroup/hugetlb/docker/abc",
		"memory":       "/sys/fs/cgroup/memory/docker/abc",
		"cpu":          "/sys/fs/cgroup/cpu/docker/abc",
		"cpuacct":      "/sys/fs/cgroup/cpuacct/docker/abc",
		"cpuset":       "/sys/fs/cgroup/cpuset/docker/abc",
		"blkio":        "/sys/fs/cgroup/blkio/docker/abc",
		"devices":      "/sys/fs/cgroup/devices/docker/abc",
		"freezer":      "/sys/fs/cgroup/freezer/docker/abc",
		"name=systemd": "/sys/fs/cgroup/systemd/docker/abc",
	}
	for _, tc := range []struct {
		name      string
		mode      Mode
		mountinfo string
		proc      string
		want      want
	}{
		// net_cls,net_prio and perf_event are not mounted: left out. The
		// memory hierarchy is also bind-mounted at /host/memory: the mount
		// under /sys/fs/cgroup wins.
		{"legacy", Legacy, "mountinfo-legacy", "proc-cgroup-legacy", want{v1: legacyDirs, path: "/docker/abc"}},
		// A hybrid host is read through its v1 hierarchies; rdma is not mounted.
		{"hybrid", Hybrid, "mountinfo-hybrid", "proc-cgroup-hybrid", want{v1: hybridDirs, path: "/docker/abc"}},
		{"unified", Unified, "mountinfo-unified", "proc-cgroup-unified",
			want{v2: "/sys/fs/cgroup/system.slice/containerd.service/kubepods/pod1/ctr", path: "/system.slice/containerd.service/kubepods/pod1/ctr"}},
		{"unified deleted", Unified, "mountinfo-unified", "proc-cgroup-unified-deleted", want{class: errdefs.ErrNotFound}},
		// In a cgroup namespace the mount's root is the namespace's; a
		// cgroup outside it is not visible there, but in the second mount.
		{"cgroupns", Unified, "mountinfo-cgroupns", "proc-cgroup-unified", want{class: errdefs.ErrFailedPrecondition}},
		{"unified no 0:: line", Unified, "mountinfo-unified", "proc-cgroup-legacy", want{class: errdefs.ErrFailedPrecondition}},
		{"legacy no v1 mounts", Legacy, "mountinfo-unified", "proc-cgroup-legacy", want{class: errdefs.ErrFailedPrecondition}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mounts, err := parseMountinfo(readTestdata(t, tc.mountinfo))
			if err != nil {
				t.Fatal(err)
			}
			entries, err := parseProcCgroup(readTestdata(t, tc.proc))
			if err != nil {
				t.Fatal(err)
			}
			c, err := resolve(tc.mode, mounts, entries)
			if tc.want.class != nil {
				if !errors.Is(err, tc.want.class) || errdefs.Resolve(err) != tc.want.class {
					t.Fatalf("got %v, want class %v", err, tc.want.class)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.mode != tc.mode || c.path != tc.want.path || c.v2 != tc.want.v2 || !reflect.DeepEqual(c.v1, tc.want.v1) {
				t.Errorf("got %+v\nwant %+v", c, tc.want)
			}
		})
	}

	// The cgroupns process, seen from inside its namespace.
	mounts, _ := parseMountinfo(readTestdata(t, "mountinfo-cgroupns"))
	c, err := resolve(Unified, mounts, []procEntry{{id: "0", path: "/kubepods/pod1/ctr"}})
	if err != nil || c.v2 != "/sys/fs/cgroup/ctr" {
		t.Errorf("cgroupns: %+v, %v", c, err)
	}
	c, err = resolve(Unified, mounts, []procEntry{{id: "0", path: "/kubepods/pod2"}})
	if err != nil || c.v2 != "/mnt/cg x/pod2" {
		t.Errorf("cgroupns second mount: %+v, %v", c, err)
	}
}

func TestParseValues(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  uint64
		want uint64
		ok   bool
	}{
		{"123\n", 0, 123, true},
		{"max\n", 0, 0, true},
		{"max", math.MaxUint64, math.MaxUint64, true},
		{"-1\n", 0, 0, true},
		{"-99999999999999999999999", 0, 0, true},
		{"9223372036854771712\n", 0, 9223372036854771712, true},
		{"18446744073709551615", 0, math.MaxUint64, true},
		{"12a", 0, 0, false},
		{"", 0, 0, false},
	} {
		got, err := parseValue([]byte(tc.in), tc.max)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseValue(%q, %d) = %d, %v; want %d, ok=%v", tc.in, tc.max, got, err, tc.want, tc.ok)
		}
	}
}

// TestParseMemoryEvents covers the parsing of v2 memory.events, the OOM
// counter of Unified hosts, and of v1 memory.oom_control.
func TestParseMemoryEvents(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want *v2.MemoryEvents
		bad  bool
	}{
		{"fresh", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", &v2.MemoryEvents{}, false},
		{"killed", "low 0\nhigh 0\nmax 1417\noom 3\noom_kill 2\noom_group_kill 1\n",
			&v2.MemoryEvents{Max: 1417, Oom: 3, OomKill: 2, OomGroupKill: 1}, false},
		{"old kernel, no oom_group_kill", "low 1\nhigh 2\nmax 3\noom 4\noom_kill 5\n",
			&v2.MemoryEvents{Low: 1, High: 2, Max: 3, Oom: 4, OomKill: 5}, false},
		{"future key", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 7\nsock_throttled 9\n", &v2.MemoryEvents{OomKill: 7}, false},
		{"no trailing newline", "oom_kill 4", &v2.MemoryEvents{OomKill: 4}, false},
		{"three fields", "oom_kill 4 5\n", nil, true},
		{"not a number", "oom_kill x\n", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv, err := parseFlatKeyed([]byte(tc.in))
			if tc.bad {
				if err == nil {
					t.Fatalf("parsed %q without error: %v", tc.in, kv)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := memoryEvents(kv); !proto.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	kv, err := parseFlatKeyed([]byte("oom_kill_disable 0\nunder_oom 1\noom_kill 3\n"))
	if err != nil || kv["oom_kill"] != 3 || kv["under_oom"] != 1 {
		t.Errorf("memory.oom_control: %v, %v", kv, err)
	}
}

func TestParseBlkio(t *testing.T) {
	devices := parsePartitions([]byte("major minor  #blocks  name\n\n   8        0  41943040 sda\n   8        1  41942016 sda1\n 253        0  10485760 dm-0\n   8        0         1 dup\n"))
	if want := map[[2]uint64]string{{8, 0}: "/dev/sda", {8, 1}: "/dev/sda1", {253, 0}: "/dev/dm-0"}; !reflect.DeepEqual(devices, want) {
		t.Errorf("partitions: %v", devices)
	}
	got, err := parseBlkio([]byte("8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Total 12288\n253:7 Read 1\nTotal 12289\n"), devices)
	if err != nil {
		t.Fatal(err)
	}
	want := []*v1.BlkIOEntry{
		{Op: "Read", Device: "/dev/sda", Major: 8, Minor: 0, Value: 4096},
		{Op: "Write", Device: "/dev/sda", Major: 8, Minor: 0, Value: 8192},
		{Op: "Sync", Device: "/dev/sda", Major: 8, Minor: 0, Value: 0},
		{Op: "Async", Device: "/dev/sda", Major: 8, Minor: 0, Value: 12288},
		{Op: "Total", Device: "/dev/sda", Major: 8, Minor: 0, Value: 12288},
		{Op: "Read", Major: 253, Minor: 7, Value: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("entry %d: got %v, want %v", i, got[i], want[i])
		}
	}
	// sectors_recursive and time_recursive have no op.
	got, err = parseBlkio([]byte("8:0 777\n"), nil)
	if err != nil || len(got) != 1 || got[0].Op != "" || got[0].Value != 777 {
		t.Errorf("no-op line: %v, %v", got, err)
	}
	if _, err := parseBlkio([]byte("8:0 Read\n"), nil); err == nil {
		t.Error("parsed a line without value")
	}
	if _, err := parseBlkio([]byte("8:x Read 1\n"), nil); err == nil {
		t.Error("parsed a bad minor")
	}
}

func TestParseIOStat(t *testing.T) {
	got, err := parseIOStat([]byte("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n259:0 rbytes=10 wbytes=20 rios=30 wios=40 dbytes=0 dios=0 cost.usage=3\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []*v2.IOEntry{{Major: 8, Rbytes: 1, Wbytes: 2, Rios: 3, Wios: 4}, {Major: 259, Rbytes: 10, Wbytes: 20, Rios: 30, Wios: 40}}
	if len(got) != 2 || !proto.Equal(got[0], want[0]) || !proto.Equal(got[1], want[1]) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := parseIOStat([]byte("sda rbytes=1\n")); err == nil {
		t.Error("parsed a line without major:minor")
	}
}

func TestParsePSI(t *testing.T) {
	got, err := parsePSI([]byte("some avg10=1.50 avg60=0.25 avg300=0.00 total=98765\nfull avg10=0.00 avg60=0.10 avg300=0.00 total=1234\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := &v2.PSIStats{Some: &v2.PSIData{Avg10: 1.5, Avg60: 0.25, Total: 98765}, Full: &v2.PSIData{Avg60: 0.1, Total: 1234}}
	if !proto.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// The root cgroup's cpu.pressure has no "full" line on older kernels.
	if got, err := parsePSI([]byte("some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")); err != nil || got.Full != nil || got.Some.GetTotal() != 1 {
		t.Errorf("some only: %v, %v", got, err)
	}
	for _, bad := range []string{"some avg10\n", "full total=x\n"} {
		if _, err := parsePSI([]byte(bad)); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestParseRdma(t *testing.T) {
	got := parseRdma([]byte("mlx4_0 hca_handle=2 hca_object=2000\nocrdma1 hca_handle=max hca_object=max\nshort line\nbad hca_handle=x hca_object=1\n"))
	want := []rdmaEntry{{"mlx4_0", 2, 2000}, {"ocrdma1", math.MaxUint32, math.MaxUint32}, {"bad", 0, 1}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestHugePageSizes(t *testing.T) {
	got := hugePageSizes([]string{"hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB", "hugepages-32768kB", "other", "hugepages-12MB", "hugepages-xkB"})
	want := []string{"2MB", "1GB", "64KB", "32MB"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := readHugePageSizes(filepath.Join("testdata", "hugepages")); !reflect.DeepEqual(got, []string{"1GB", "2MB"}) {
		t.Errorf("testdata/hugepages: %v", got)
	}
	if got := readHugePageSizes(filepath.Join("testdata", "missing")); got != nil {
		t.Errorf("missing dir: %v", got)
	}
}

func TestInotifyIgnored(t *testing.T) {
	event := func(mask uint32, name string) []byte {
		n := 0
		if name != "" {
			n = (len(name) + 1 + 15) / 16 * 16
		}
		b := make([]byte, unix.SizeofInotifyEvent+n)
		binary.NativeEndian.PutUint32(b[4:], mask)
		binary.NativeEndian.PutUint32(b[12:], uint32(n))
		copy(b[unix.SizeofInotifyEvent:], name)
		return b
	}
	modify := event(unix.IN_MODIFY, "")
	named := event(unix.IN_MODIFY, "memory.events")
	ignored := event(unix.IN_IGNORED, "")
	for _, tc := range []struct {
		name string
		buf  []byte
		want bool
	}{
		{"modify", modify, false},
		{"two modifies", append(append([]byte{}, modify...), named...), false},
		{"ignored after a named event", append(append([]byte{}, named...), ignored...), true},
		{"truncated", modify[:8], false},
	} {
		if got := inotifyIgnored(tc.buf); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestClass(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{os.ErrNotExist, errdefs.ErrNotFound},
		{unix.ENOENT, errdefs.ErrNotFound},
		{unix.ENODEV, errdefs.ErrNotFound},
		{unix.ESRCH, errdefs.ErrNotFound},
		{unix.EACCES, errdefs.ErrPermissionDenied},
		{unix.EPERM, errdefs.ErrPermissionDenied},
		{unix.EINVAL, errdefs.ErrInvalidArgument},
		{unix.ENOSPC, errdefs.ErrFailedPrecondition},
		{unix.EBUSY, errdefs.ErrFailedPrecondition},
		{unix.EIO, errdefs.ErrUnknown},
	} {
		err := wrap(&os.PathError{Op: "open", Path: "/x", Err: tc.err}, "cgroups: test %d", 1)
		if got := errdefs.Resolve(err); got != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("%v: class %v, want %v", err, got, tc.want)
		}
	}
}
