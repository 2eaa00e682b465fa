package cgroups

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// statsV2 reads the metrics of the v2 cgroup at dir, as containerd's
// cgroup2 Manager.Stat does: "max" is math.MaxUint64, an absent file leaves
// its fields zero, MemoryEvents is nil without memory.events.
func (c *Cgroup) statsV2(ctx context.Context, dir string) (*v2.Metrics, error) {
	m := &v2.Metrics{}
	hugetlb := func(dir string, m *v2.Metrics) error { return hugetlbV2(dir, readHugePageSizes(c.hugePages), m) }
	for _, read := range []func(string, *v2.Metrics) error{pidsV2, cpuV2, memoryV2, ioV2, rdmaV2, hugetlb} {
		if err := ctxErr(ctx); err != nil {
			return nil, err
		}
		if err := read(dir, m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// value reads a single-value v2 file; absent is 0, "max" is MaxUint64.
func value(dir, name string) (uint64, error) {
	v, _, err := readValue(filepath.Join(dir, name), math.MaxUint64)
	return v, err
}

// flatKeyed reads a "key value" v2 file; absent is an empty map.
func flatKeyed(dir, name string) (map[string]uint64, bool, error) {
	kv, ok, err := readFlatKeyed(filepath.Join(dir, name))
	if kv == nil {
		kv = map[string]uint64{}
	}
	return kv, ok, err
}

// pidsV2 fills Pids; a "max" limit is math.MaxUint64.
func pidsV2(dir string, m *v2.Metrics) error {
	cur, err := value(dir, "pids.current")
	if err != nil {
		return err
	}
	limit, err := value(dir, "pids.max")
	if err != nil {
		return err
	}
	m.Pids = &v2.PidsStat{Current: cur, Limit: limit}
	return nil
}

// cpuV2 fills CPU from cpu.stat and cpu.pressure.
func cpuV2(dir string, m *v2.Metrics) error {
	st, _, err := flatKeyed(dir, "cpu.stat")
	if err != nil {
		return err
	}
	psi, err := readPSI(filepath.Join(dir, "cpu.pressure"))
	if err != nil {
		return err
	}
	m.CPU = &v2.CPUStat{
		UsageUsec:     st["usage_usec"],
		UserUsec:      st["user_usec"],
		SystemUsec:    st["system_usec"],
		NrPeriods:     st["nr_periods"],
		NrThrottled:   st["nr_throttled"],
		ThrottledUsec: st["throttled_usec"],
		NrBursts:      st["nr_bursts"],
		BurstUsec:     st["burst_usec"],
		PSI:           psi,
	}
	return nil
}

// memoryV2 fills Memory and, if the cgroup has memory.events, MemoryEvents.
func memoryV2(dir string, m *v2.Metrics) error {
	st, _, err := flatKeyed(dir, "memory.stat")
	if err != nil {
		return err
	}
	mem := &v2.MemoryStat{}
	fillMemoryStatV2(mem, st)
	for _, f := range []struct {
		name string
		v    *uint64
	}{
		{"memory.current", &mem.Usage},
		{"memory.max", &mem.UsageLimit},
		{"memory.peak", &mem.MaxUsage},
		{"memory.swap.current", &mem.SwapUsage},
		{"memory.swap.max", &mem.SwapLimit},
		{"memory.swap.peak", &mem.SwapMaxUsage},
	} {
		if *f.v, err = value(dir, f.name); err != nil {
			return err
		}
	}
	if mem.PSI, err = readPSI(filepath.Join(dir, "memory.pressure")); err != nil {
		return err
	}
	m.Memory = mem
	ev, ok, err := flatKeyed(dir, "memory.events")
	if err != nil {
		return err
	}
	if ok {
		m.MemoryEvents = memoryEvents(ev)
	}
	return nil
}

// memoryEvents converts the keys of memory.events.
func memoryEvents(ev map[string]uint64) *v2.MemoryEvents {
	return &v2.MemoryEvents{
		Low:          ev["low"],
		High:         ev["high"],
		Max:          ev["max"],
		Oom:          ev["oom"],
		OomKill:      ev["oom_kill"],
		OomGroupKill: ev["oom_group_kill"],
	}
}

// fillMemoryStatV2 copies the keys of a v2 memory.stat into s, as
// containerd's cgroup2 does.
func fillMemoryStatV2(s *v2.MemoryStat, st map[string]uint64) {
	s.Anon = st["anon"]
	s.File = st["file"]
	s.KernelStack = st["kernel_stack"]
	s.Slab = st["slab"]
	s.Sock = st["sock"]
	s.Shmem = st["shmem"]
	s.FileMapped = st["file_mapped"]
	s.FileDirty = st["file_dirty"]
	s.FileWriteback = st["file_writeback"]
	s.AnonThp = st["anon_thp"]
	s.InactiveAnon = st["inactive_anon"]
	s.ActiveAnon = st["active_anon"]
	s.InactiveFile = st["inactive_file"]
	s.ActiveFile = st["active_file"]
	s.Unevictable = st["unevictable"]
	s.SlabReclaimable = st["slab_reclaimable"]
	s.SlabUnreclaimable = st["slab_unreclaimable"]
	s.Pgfault = st["pgfault"]
	s.Pgmajfault = st["pgmajfault"]
	s.WorkingsetRefault = st["workingset_refault"]
	s.WorkingsetActivate = st["workingset_activate"]
	s.WorkingsetNodereclaim = st["workingset_nodereclaim"]
	s.Pgrefill = st["pgrefill"]
	s.Pgscan = st["pgscan"]
	s.Pgsteal = st["pgsteal"]
	s.Pgactivate = st["pgactivate"]
	s.Pgdeactivate = st["pgdeactivate"]
	s.Pglazyfree = st["pglazyfree"]
	s.Pglazyfreed = st["pglazyfreed"]
	s.ThpFaultAlloc = st["thp_fault_alloc"]
	s.ThpCollapseAlloc = st["thp_collapse_alloc"]
}

// ioV2 fills Io from io.stat and io.pressure.
func ioV2(dir string, m *v2.Metrics) error {
	p := filepath.Join(dir, "io.stat")
	data, _, err := readOptional(p)
	if err != nil {
		return err
	}
	usage, err := parseIOStat(data)
	if err != nil {
		return badFormat(p, err)
	}
	psi, err := readPSI(filepath.Join(dir, "io.pressure"))
	if err != nil {
		return err
	}
	m.Io = &v2.IOStat{Usage: usage, PSI: psi}
	return nil
}

// parseIOStat parses io.stat: "major:minor rbytes=N wbytes=N rios=N wios=N
// dbytes=N dios=N" (keys the proto has no field for are skipped).
func parseIOStat(data []byte) ([]*v2.IOEntry, error) {
	var out []*v2.IOEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		maj, minor, ok := strings.Cut(f[0], ":")
		if !ok {
			return nil, fmt.Errorf("line %q: no major:minor", line)
		}
		e := &v2.IOEntry{}
		var err error
		if e.Major, err = strconv.ParseUint(maj, 10, 64); err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		if e.Minor, err = strconv.ParseUint(minor, 10, 64); err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "rbytes":
				e.Rbytes = n
			case "wbytes":
				e.Wbytes = n
			case "rios":
				e.Rios = n
			case "wios":
				e.Wios = n
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// readPSI reads a pressure file; nil if the kernel has none (no PSI, or
// psi=0: reads fail with EOPNOTSUPP).
func readPSI(p string) (*v2.PSIStats, error) {
	data, ok, err := readOptional(p)
	if err != nil || !ok {
		return nil, nil // PSI is optional, as in containerd
	}
	psi, err := parsePSI(data)
	if err != nil {
		return nil, badFormat(p, err)
	}
	return psi, nil
}

// parsePSI parses "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and the
// same for "full".
func parsePSI(data []byte) (*v2.PSIStats, error) {
	out := &v2.PSIStats{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		d := &v2.PSIData{}
		switch f[0] {
		case "some":
			out.Some = d
		case "full":
			out.Full = d
		default:
			continue
		}
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("field %q", kv)
			}
			var err error
			switch k {
			case "avg10":
				d.Avg10, err = strconv.ParseFloat(v, 64)
			case "avg60":
				d.Avg60, err = strconv.ParseFloat(v, 64)
			case "avg300":
				d.Avg300, err = strconv.ParseFloat(v, 64)
			case "total":
				d.Total, err = strconv.ParseUint(v, 10, 64)
			}
			if err != nil {
				return nil, fmt.Errorf("field %q: %w", kv, err)
			}
		}
	}
	return out, nil
}

// rdmaV2 fills Rdma.
func rdmaV2(dir string, m *v2.Metrics) error {
	cur, _, err := readOptional(filepath.Join(dir, "rdma.current"))
	if err != nil {
		return err
	}
	limit, _, err := readOptional(filepath.Join(dir, "rdma.max"))
	if err != nil {
		return err
	}
	conv := func(es []rdmaEntry) []*v2.RdmaEntry {
		var out []*v2.RdmaEntry
		for _, e := range es {
			out = append(out, &v2.RdmaEntry{Device: e.device, HcaHandles: e.handles, HcaObjects: e.objects})
		}
		return out
	}
	m.Rdma = &v2.RdmaStat{Current: conv(parseRdma(cur)), Limit: conv(parseRdma(limit))}
	return nil
}

// hugetlbV2 fills Hugetlb, one entry per huge page size of the host.
func hugetlbV2(dir string, sizes []string, m *v2.Metrics) error {
	for _, size := range sizes {
		s := &v2.HugeTlbStat{Pagesize: size}
		var err error
		if s.Current, err = value(dir, "hugetlb."+size+".current"); err != nil {
			return err
		}
		if s.Max, err = value(dir, "hugetlb."+size+".max"); err != nil {
			return err
		}
		ev, _, err := flatKeyed(dir, "hugetlb."+size+".events")
		if err != nil {
			return err
		}
		s.Failcnt = ev["max"]
		m.Hugetlb = append(m.Hugetlb, s)
	}
	return nil
}
