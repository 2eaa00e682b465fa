package cgroups

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// busyScript makes the child use memory (a 4 MB shell variable, and the
// processes of the pipeline) and CPU, then report and wait.
const busyScript = `x=$(head -c 4000000 /dev/zero | tr '\0' a); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ran ${#x}; read y`

func unmarshalV1(t *testing.T, a *anypb.Any) *v1.Metrics {
	t.Helper()
	if a.GetTypeUrl() != "io.containerd.cgroups.v1.Metrics" {
		t.Fatalf("type URL %q", a.GetTypeUrl())
	}
	m := &v1.Metrics{}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		t.Fatal(err)
	}
	// containerd decodes it with typeurl, by the type URL.
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatalf("typeurl: %v", err)
	}
	if got, ok := v.(*v1.Metrics); !ok || !proto.Equal(got, m) {
		t.Fatalf("typeurl decoded %T %v", v, v)
	}
	return m
}

func unmarshalV2(t *testing.T, a *anypb.Any) *v2.Metrics {
	t.Helper()
	if a.GetTypeUrl() != "io.containerd.cgroups.v2.Metrics" {
		t.Fatalf("type URL %q", a.GetTypeUrl())
	}
	m := &v2.Metrics{}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		t.Fatal(err)
	}
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatalf("typeurl: %v", err)
	}
	if got, ok := v.(*v2.Metrics); !ok || !proto.Equal(got, m) {
		t.Fatalf("typeurl decoded %T %v", v, v)
	}
	return m
}

// TestStatsV1 reads the metrics of a real v1 cgroup with a busy child in it,
// then of the same cgroup once removed.
func TestStatsV1(t *testing.T) {
	cg := newTestCgroup(t, false)
	ch := spawn(t, busyScript)
	if err := AddProcess(cg.path, ch.pid()); err != nil {
		t.Fatal(err)
	}
	ch.run(t)
	if got := ch.readLine(t); got != "ran 4000000" {
		t.Fatalf("child said %q", got)
	}
	c, err := Load(ch.pid())
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := unmarshalV1(t, a)
	t.Logf("memory usage %d, cpu %d ns, pids %d", m.GetMemory().GetUsage().GetUsage(), m.GetCPU().GetUsage().GetTotal(), m.GetPids().GetCurrent())
	if m.GetMemory().GetUsage().GetUsage() == 0 || m.GetMemory().GetUsage().GetMax() == 0 || m.GetMemory().GetUsage().GetLimit() == 0 {
		t.Errorf("memory usage entry: %v", m.GetMemory().GetUsage())
	}
	if m.GetMemory().GetRSS()+m.GetMemory().GetCache() == 0 {
		t.Errorf("memory.stat: %v", m.GetMemory())
	}
	if m.GetCPU().GetUsage().GetTotal() == 0 || len(m.GetCPU().GetUsage().GetPerCPU()) == 0 {
		t.Errorf("cpu usage: %v", m.GetCPU().GetUsage())
	}
	if m.GetCPU().GetThrottling() == nil {
		t.Error("no cpu throttling stats")
	}
	if m.GetPids().GetCurrent() != 1 {
		t.Errorf("pids: %v, want the one shell", m.GetPids())
	}
	if m.GetMemoryOomControl() == nil || m.GetMemoryOomControl().GetOomKill() != 0 {
		t.Errorf("oom control: %v", m.GetMemoryOomControl())
	}
	if m.GetBlkio() == nil {
		t.Error("no blkio stats")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Stats(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Stats with a cancelled context: %v", err)
	}

	// The cgroup goes away.
	if err := ch.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = ch.cmd.Wait()
	for _, d := range cg.dirs {
		removeCgroupDir(t, d)
	}
	if _, err := c.Stats(context.Background()); !errdefs.IsNotFound(err) {
		t.Errorf("Stats of a removed cgroup: %v, want not found", err)
	}
}

// TestStatsV1Files checks the mapping of every v1 file to the metrics.
func TestStatsV1Files(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "v1"))
	if err != nil {
		t.Fatal(err)
	}
	c := &Cgroup{mode: Legacy, path: "/fake", hugePages: filepath.Join("testdata", "hugepages"), v1: map[string]string{}}
	for _, ctrl := range []string{"memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb", "rdma"} {
		c.v1[ctrl] = dir
	}
	a, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := unmarshalV1(t, a)
	for _, es := range [][]*v1.BlkIOEntry{got.GetBlkio().GetIoServicedRecursive(), got.GetBlkio().GetIoServiceBytesRecursive()} {
		for _, e := range es {
			e.Device = "" // the host's name for 8:0, if any
		}
	}
	want := &v1.Metrics{
		Hugetlb: []*v1.HugetlbStat{{Usage: 2097152, Max: 4194304, Failcnt: 1, Pagesize: "2MB"}},
		Pids:    &v1.PidsStat{Current: 2},
		CPU: &v1.CPUStat{
			Usage:      &v1.CPUUsage{Total: 123456789, User: 70000000, Kernel: 30000000, PerCPU: []uint64{100000000, 23456789, 0, 0}},
			Throttling: &v1.Throttle{Periods: 10, ThrottledPeriods: 2, ThrottledTime: 3000},
		},
		Memory: &v1.MemoryStat{
			Cache: 1, RSS: 2, RSSHuge: 3, MappedFile: 4, Dirty: 5, Writeback: 6, PgPgIn: 7, PgPgOut: 8, PgFault: 9, PgMajFault: 10,
			InactiveAnon: 11, ActiveAnon: 12, InactiveFile: 13, ActiveFile: 14, Unevictable: 15,
			HierarchicalMemoryLimit: 16, HierarchicalSwapLimit: 17,
			TotalCache: 18, TotalRSS: 19, TotalRSSHuge: 20, TotalMappedFile: 21, TotalDirty: 22, TotalWriteback: 23,
			TotalPgPgIn: 24, TotalPgPgOut: 25, TotalPgFault: 26, TotalPgMajFault: 27, TotalInactiveAnon: 28,
			TotalActiveAnon: 29, TotalInactiveFile: 30, TotalActiveFile: 31, TotalUnevictable: 32,
			Usage:     &v1.MemoryEntry{Usage: 1000, Max: 2000, Failcnt: 3, Limit: 9223372036854771712},
			Swap:      &v1.MemoryEntry{Usage: 1100, Max: 2100, Limit: 33554432},
			Kernel:    &v1.MemoryEntry{Usage: 50, Max: 60, Limit: 9223372036854771712},
			KernelTCP: &v1.MemoryEntry{}, // no kmem.tcp files
		},
		// io_serviced_recursive has nothing: the throttle files are used.
		Blkio: &v1.BlkIOStat{
			IoServicedRecursive: []*v1.BlkIOEntry{
				{Op: "Read", Major: 8, Value: 4}, {Op: "Write", Major: 8, Value: 5}, {Op: "Sync", Major: 8, Value: 6},
				{Op: "Async", Major: 8, Value: 3}, {Op: "Discard", Major: 8}, {Op: "Total", Major: 8, Value: 9},
			},
			IoServiceBytesRecursive: []*v1.BlkIOEntry{
				{Op: "Read", Major: 8, Value: 4096}, {Op: "Write", Major: 8, Value: 5120}, {Op: "Sync", Major: 8},
				{Op: "Async", Major: 8, Value: 9216}, {Op: "Discard", Major: 8}, {Op: "Total", Major: 8, Value: 9216},
			},
		},
		Rdma: &v1.RdmaStat{
			Current: []*v1.RdmaEntry{{Device: "mlx4_0", HcaHandles: 2, HcaObjects: 2000}},
			Limit:   []*v1.RdmaEntry{{Device: "mlx4_0", HcaHandles: math.MaxUint32, HcaObjects: math.MaxUint32}},
		},
		MemoryOomControl: &v1.MemoryOomControl{UnderOom: 1, OomKill: 4},
	}
	if !proto.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}

	// A file that does not parse is an internal error, not zeros.
	bad := t.TempDir()
	c = &Cgroup{mode: Legacy, path: "/bad", v1: map[string]string{"memory": bad}}
	writeTemp(t, filepath.Join(bad, "memory.stat"), "cache\n")
	if _, err := c.Stats(context.Background()); !errdefs.IsInternal(err) {
		t.Errorf("unparsable memory.stat: %v, want internal", err)
	}
}

// TestStatsV2Files checks the mapping of every v2 file to the metrics.
func TestStatsV2Files(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "v2"))
	if err != nil {
		t.Fatal(err)
	}
	c := &Cgroup{mode: Unified, path: "/fake", v2: dir, hugePages: filepath.Join("testdata", "hugepages")}
	a, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := unmarshalV2(t, a)
	want := &v2.Metrics{
		Pids: &v2.PidsStat{Current: 3, Limit: math.MaxUint64},
		CPU: &v2.CPUStat{
			UsageUsec: 123456, UserUsec: 100000, SystemUsec: 23456, NrPeriods: 10, NrThrottled: 2, ThrottledUsec: 345, NrBursts: 1, BurstUsec: 7,
			PSI: &v2.PSIStats{Some: &v2.PSIData{Avg10: 1.5, Avg60: 0.25, Total: 98765}, Full: &v2.PSIData{Avg60: 0.1, Total: 1234}},
		},
		Memory: &v2.MemoryStat{
			Anon: 1048576, File: 2097152, KernelStack: 16384, Slab: 49152, Shmem: 4096, FileMapped: 8192, FileDirty: 12288,
			InactiveAnon: 10, ActiveAnon: 20, InactiveFile: 30, ActiveFile: 40, Unevictable: 50,
			SlabReclaimable: 32768, SlabUnreclaimable: 16384, Pgfault: 500, Pgmajfault: 3,
			WorkingsetRefault: 61, WorkingsetActivate: 62, WorkingsetNodereclaim: 63, Pgscan: 64, Pgsteal: 65, Pgrefill: 66,
			Pgactivate: 67, Pgdeactivate: 68, Pglazyfree: 69, Pglazyfreed: 70, ThpFaultAlloc: 71, ThpCollapseAlloc: 72,
			Usage: 3145728, UsageLimit: math.MaxUint64, MaxUsage: 4194304, SwapUsage: 0, SwapLimit: 0, SwapMaxUsage: 0,
			PSI: &v2.PSIStats{Some: &v2.PSIData{Total: 11}, Full: &v2.PSIData{Total: 7}},
		},
		MemoryEvents: &v2.MemoryEvents{Max: 12, Oom: 2, OomKill: 1},
		Io: &v2.IOStat{
			Usage: []*v2.IOEntry{{Major: 8, Rbytes: 1024, Wbytes: 2048, Rios: 3, Wios: 4}, {Major: 253, Minor: 1, Rbytes: 5, Wbytes: 6, Rios: 7, Wios: 8}},
			PSI:   &v2.PSIStats{Some: &v2.PSIData{Total: 5}, Full: &v2.PSIData{Total: 4}},
		},
		Rdma: &v2.RdmaStat{
			Current: []*v2.RdmaEntry{{Device: "mlx4_0", HcaHandles: 2, HcaObjects: 2000}},
			Limit:   []*v2.RdmaEntry{{Device: "mlx4_0", HcaHandles: math.MaxUint32, HcaObjects: math.MaxUint32}},
		},
		Hugetlb: []*v2.HugeTlbStat{
			{Current: 0, Max: 1073741824, Pagesize: "1GB"},
			{Current: 2097152, Max: math.MaxUint64, Pagesize: "2MB", Failcnt: 5},
		},
	}
	if !proto.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}

	// An empty cgroup directory: zeros, no MemoryEvents, as containerd.
	c = &Cgroup{mode: Unified, path: "/empty", v2: t.TempDir()}
	a, err = c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := unmarshalV2(t, a); got.GetMemoryEvents() != nil || got.GetMemory() == nil || got.GetCPU().GetPSI() != nil {
		t.Errorf("empty cgroup: %v", got)
	}
	c = &Cgroup{mode: Unified, path: "/gone", v2: filepath.Join(t.TempDir(), "gone")}
	if _, err := c.Stats(context.Background()); !errdefs.IsNotFound(err) {
		t.Errorf("Stats of a missing v2 cgroup: %v, want not found", err)
	}
	bad := t.TempDir()
	writeTemp(t, filepath.Join(bad, "io.stat"), "sda rbytes=1\n")
	c = &Cgroup{mode: Unified, path: "/bad", v2: bad}
	if _, err := c.Stats(context.Background()); !errdefs.IsInternal(err) {
		t.Errorf("unparsable io.stat: %v, want internal", err)
	}
}

// TestStatsV2 reads the metrics of a real cgroup of the unified hierarchy (on
// a hybrid host it has no controllers, but cpu.stat is always there).
func TestStatsV2(t *testing.T) {
	cg := newTestCgroup(t, true)
	ch := spawn(t, busyScript)
	mounts, err := readMounts(procRoot)
	if err != nil {
		t.Fatal(err)
	}
	if err := addProcess(Unified, mounts, cg.path, ch.pid()); err != nil {
		t.Fatal(err)
	}
	ch.run(t)
	if got := ch.readLine(t); got != "ran 4000000" {
		t.Fatalf("child said %q", got)
	}
	c, err := load(Unified, procRoot, ch.pid())
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := unmarshalV2(t, a)
	if m.GetCPU().GetUsageUsec() == 0 {
		t.Errorf("cpu: %v", m.GetCPU())
	}
	if HostMode() == Unified && m.GetMemory().GetUsage() == 0 {
		t.Errorf("memory: %v", m.GetMemory())
	}
}

// BenchmarkStatsSelf measures Stats on the test process's own cgroup
// (go test -run XXX -bench Stats ./internal/cgroups/).
func BenchmarkStatsSelf(b *testing.B) {
	c, err := Load(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.Stats(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
