package cgroups

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
)

// clockTicks is USER_HZ, the unit of cpuacct.stat: 100 on every Linux ABI
// (sysconf(_SC_CLK_TCK)), as containerd's cgroup1 assumes too.
const clockTicks = 100

// statsV1 reads the metrics of a v1 cgroup (Legacy and Hybrid hosts).
func (c *Cgroup) statsV1(ctx context.Context) (*v1.Metrics, error) {
	m := &v1.Metrics{}
	steps := []struct {
		ctrl string
		read func(dir string, m *v1.Metrics) error
	}{
		{"memory", memoryV1},
		{"cpuacct", cpuacctV1},
		{"cpu", cpuV1},
		{"pids", pidsV1},
		{"blkio", blkioV1},
		{"hugetlb", func(dir string, m *v1.Metrics) error { return hugetlbV1(dir, readHugePageSizes(c.hugePages), m) }},
		{"rdma", rdmaV1},
	}
	for _, s := range steps {
		if err := ctxErr(ctx); err != nil {
			return nil, err
		}
		dir, ok := c.v1[s.ctrl]
		if !ok {
			continue
		}
		if err := s.read(dir, m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// memoryV1 fills Memory and MemoryOomControl.
func memoryV1(dir string, m *v1.Metrics) error {
	mem := &v1.MemoryStat{
		Usage:     &v1.MemoryEntry{},
		Swap:      &v1.MemoryEntry{},
		Kernel:    &v1.MemoryEntry{},
		KernelTCP: &v1.MemoryEntry{},
	}
	m.Memory = mem
	raw, _, err := readFlatKeyed(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return err
	}
	fillMemoryStatV1(mem, raw)
	for _, e := range []struct {
		module string
		entry  *v1.MemoryEntry
	}{
		{"", mem.Usage},
		{"memsw", mem.Swap},
		{"kmem", mem.Kernel},
		{"kmem.tcp", mem.KernelTCP},
	} {
		prefix := "memory."
		if e.module != "" {
			prefix += e.module + "."
		}
		for _, f := range []struct {
			name string
			v    *uint64
		}{
			{"usage_in_bytes", &e.entry.Usage},
			{"max_usage_in_bytes", &e.entry.Max},
			{"failcnt", &e.entry.Failcnt},
			{"limit_in_bytes", &e.entry.Limit},
		} {
			v, _, err := readValue(filepath.Join(dir, prefix+f.name), 0)
			if err != nil {
				return err
			}
			*f.v = v
		}
	}
	oom, ok, err := readFlatKeyed(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return err
	}
	if ok {
		m.MemoryOomControl = &v1.MemoryOomControl{
			OomKillDisable: oom["oom_kill_disable"],
			UnderOom:       oom["under_oom"],
			OomKill:        oom["oom_kill"],
		}
	}
	return nil
}

// fillMemoryStatV1 copies the keys of a v1 memory.stat into s, as
// containerd's cgroup1 does.
func fillMemoryStatV1(s *v1.MemoryStat, raw map[string]uint64) {
	s.Cache = raw["cache"]
	s.RSS = raw["rss"]
	s.RSSHuge = raw["rss_huge"]
	s.MappedFile = raw["mapped_file"]
	s.Dirty = raw["dirty"]
	s.Writeback = raw["writeback"]
	s.PgPgIn = raw["pgpgin"]
	s.PgPgOut = raw["pgpgout"]
	s.PgFault = raw["pgfault"]
	s.PgMajFault = raw["pgmajfault"]
	s.InactiveAnon = raw["inactive_anon"]
	s.ActiveAnon = raw["active_anon"]
	s.InactiveFile = raw["inactive_file"]
	s.ActiveFile = raw["active_file"]
	s.Unevictable = raw["unevictable"]
	s.HierarchicalMemoryLimit = raw["hierarchical_memory_limit"]
	s.HierarchicalSwapLimit = raw["hierarchical_memsw_limit"]
	s.TotalCache = raw["total_cache"]
	s.TotalRSS = raw["total_rss"]
	s.TotalRSSHuge = raw["total_rss_huge"]
	s.TotalMappedFile = raw["total_mapped_file"]
	s.TotalDirty = raw["total_dirty"]
	s.TotalWriteback = raw["total_writeback"]
	s.TotalPgPgIn = raw["total_pgpgin"]
	s.TotalPgPgOut = raw["total_pgpgout"]
	s.TotalPgFault = raw["total_pgfault"]
	s.TotalPgMajFault = raw["total_pgmajfault"]
	s.TotalInactiveAnon = raw["total_inactive_anon"]
	s.TotalActiveAnon = raw["total_active_anon"]
	s.TotalInactiveFile = raw["total_inactive_file"]
	s.TotalActiveFile = raw["total_active_file"]
	s.TotalUnevictable = raw["total_unevictable"]
}

// cpuOf returns m.CPU, allocating it with its Usage and Throttling: the cpu
// and cpuacct controllers, possibly on different hierarchies, share it.
func cpuOf(m *v1.Metrics) *v1.CPUStat {
	if m.CPU == nil {
		m.CPU = &v1.CPUStat{Usage: &v1.CPUUsage{}, Throttling: &v1.Throttle{}}
	}
	return m.CPU
}

// cpuacctV1 fills CPU.Usage (nanoseconds).
func cpuacctV1(dir string, m *v1.Metrics) error {
	u := cpuOf(m).Usage
	total, _, err := readValue(filepath.Join(dir, "cpuacct.usage"), 0)
	if err != nil {
		return err
	}
	u.Total = total
	p := filepath.Join(dir, "cpuacct.usage_percpu")
	data, ok, err := readOptional(p)
	if err != nil {
		return err
	}
	if ok {
		if u.PerCPU, err = parseUintList(data); err != nil {
			return badFormat(p, err)
		}
	}
	st, _, err := readFlatKeyed(filepath.Join(dir, "cpuacct.stat"))
	if err != nil {
		return err
	}
	u.User = st["user"] * 1e9 / clockTicks
	u.Kernel = st["system"] * 1e9 / clockTicks
	return nil
}

// cpuV1 fills CPU.Throttling from cpu.stat.
func cpuV1(dir string, m *v1.Metrics) error {
	st, ok, err := readFlatKeyed(filepath.Join(dir, "cpu.stat"))
	if err != nil || !ok {
		return err
	}
	t := cpuOf(m).Throttling
	t.Periods = st["nr_periods"]
	t.ThrottledPeriods = st["nr_throttled"]
	t.ThrottledTime = st["throttled_time"]
	return nil
}

// pidsV1 fills Pids; a "max" limit is 0, as in containerd's cgroup1.
func pidsV1(dir string, m *v1.Metrics) error {
	cur, ok, err := readValue(filepath.Join(dir, "pids.current"), 0)
	if err != nil || !ok {
		return err
	}
	limit, _, err := readValue(filepath.Join(dir, "pids.max"), 0)
	if err != nil {
		return err
	}
	m.Pids = &v1.PidsStat{Current: cur, Limit: limit}
	return nil
}

// blkioV1 fills Blkio: the CFQ/BFQ recursive files where the kernel has
// them and they are not empty, else the throttle files, as containerd's
// cgroup1 does.
func blkioV1(dir string, m *v1.Metrics) error {
	b := &v1.BlkIOStat{}
	m.Blkio = b
	devices := readPartitions()
	read := func(name string, into *[]*v1.BlkIOEntry) error {
		p := filepath.Join(dir, "blkio."+name)
		data, ok, err := readOptional(p)
		if err != nil || !ok {
			return err
		}
		if *into, err = parseBlkio(data, devices); err != nil {
			return badFormat(p, err)
		}
		return nil
	}
	recursive := []struct {
		name string
		into *[]*v1.BlkIOEntry
	}{
		{"sectors_recursive", &b.SectorsRecursive},
		{"io_service_bytes_recursive", &b.IoServiceBytesRecursive},
		{"io_serviced_recursive", &b.IoServicedRecursive},
		{"io_queued_recursive", &b.IoQueuedRecursive},
		{"io_service_time_recursive", &b.IoServiceTimeRecursive},
		{"io_wait_time_recursive", &b.IoWaitTimeRecursive},
		{"io_merged_recursive", &b.IoMergedRecursive},
		{"time_recursive", &b.IoTimeRecursive},
	}
	n := 0
	for _, r := range recursive {
		if err := read(r.name, r.into); err != nil {
			return err
		}
		n += len(*r.into)
	}
	if n > 0 {
		return nil
	}
	if err := read("throttle.io_serviced", &b.IoServicedRecursive); err != nil {
		return err
	}
	return read("throttle.io_service_bytes", &b.IoServiceBytesRecursive)
}

// parseBlkio parses a v1 blkio statistics file: "major:minor [op] value"
// lines and a "Total value" line, which is skipped.
func parseBlkio(data []byte, devices map[[2]uint64]string) ([]*v1.BlkIOEntry, error) {
	var out []*v1.BlkIOEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == ':' })
		if len(f) == 0 || (len(f) == 2 && f[0] == "Total") {
			continue
		}
		if len(f) != 3 && len(f) != 4 {
			return nil, fmt.Errorf("line %q", line)
		}
		var nums [3]uint64
		for i, s := range []string{f[0], f[1], f[len(f)-1]} {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %q: %w", line, err)
			}
			nums[i] = v
		}
		e := &v1.BlkIOEntry{Major: nums[0], Minor: nums[1], Value: nums[2], Device: devices[[2]uint64{nums[0], nums[1]}]}
		if len(f) == 4 {
			e.Op = f[2]
		}
		out = append(out, e)
	}
	return out, nil
}

// readPartitions maps block devices to their /dev names from /proc/partitions
// (empty if it cannot be read: the names are informative only).
func readPartitions() map[[2]uint64]string {
	data, _, _ := readOptional(filepath.Join(procRoot, "partitions"))
	return parsePartitions(data)
}

// parsePartitions parses /proc/partitions: two header lines, then "major
// minor #blocks name". The first name of a device wins.
func parsePartitions(data []byte) map[[2]uint64]string {
	out := make(map[[2]uint64]string)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		maj, err1 := strconv.ParseUint(f[0], 10, 64)
		minor, err2 := strconv.ParseUint(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue // the header
		}
		k := [2]uint64{maj, minor}
		if _, ok := out[k]; !ok {
			out[k] = "/dev/" + f[3]
		}
	}
	return out
}

// hugetlbV1 fills Hugetlb, one entry per huge page size of the host that the
// cgroup has files for.
func hugetlbV1(dir string, sizes []string, m *v1.Metrics) error {
	for _, size := range sizes {
		s := &v1.HugetlbStat{Pagesize: size}
		present := false
		for _, f := range []struct {
			name string
			v    *uint64
		}{
			{"usage_in_bytes", &s.Usage},
			{"max_usage_in_bytes", &s.Max},
			{"failcnt", &s.Failcnt},
		} {
			v, ok, err := readValue(filepath.Join(dir, "hugetlb."+size+"."+f.name), 0)
			if err != nil {
				return err
			}
			*f.v = v
			present = present || ok
		}
		if present {
			m.Hugetlb = append(m.Hugetlb, s)
		}
	}
	return nil
}

// rdmaV1 fills Rdma if the rdma controller has entries.
func rdmaV1(dir string, m *v1.Metrics) error {
	cur, ok, err := readOptional(filepath.Join(dir, "rdma.current"))
	if err != nil || !ok {
		return err
	}
	limit, _, err := readOptional(filepath.Join(dir, "rdma.max"))
	if err != nil {
		return err
	}
	conv := func(es []rdmaEntry) []*v1.RdmaEntry {
		var out []*v1.RdmaEntry
		for _, e := range es {
			out = append(out, &v1.RdmaEntry{Device: e.device, HcaHandles: e.handles, HcaObjects: e.objects})
		}
		return out
	}
	m.Rdma = &v1.RdmaStat{Current: conv(parseRdma(cur)), Limit: conv(parseRdma(limit))}
	return nil
}
