package cgroups

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// readOptional reads the cgroup file p. ok is false, with no error, if the
// file does not exist (the kernel does not offer it, or the cgroup is gone:
// the caller tells which by looking at the directory).
func readOptional(p string) (data []byte, ok bool, err error) {
	data, err = readFile(p)
	if err != nil {
		if gone(err) {
			return nil, false, nil
		}
		return nil, false, wrap(err, "cgroups: read %s", p)
	}
	return data, true, nil
}

// readFile reads a whole file. Cgroup and proc files are small and never
// block, so it calls open and read directly: os.ReadFile would also fstat the
// file and try to put it in the netpoller, half again as many system calls.
func readFile(p string) ([]byte, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 512)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: p, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// badFormat is the error for a kernel file that does not parse.
func badFormat(p string, err error) error {
	return fmt.Errorf("cgroups: parse %s: %v: %w", p, err, errdefs.ErrInternal)
}

// parseUint parses a cgroup number. Negative numbers (v1 writes -1 for "no
// limit" in some files) are 0, as in containerd's cgroup1.
func parseUint(s string) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, 64)
	if err == nil {
		return v, nil
	}
	if strings.HasPrefix(s, "-") {
		if _, ierr := strconv.ParseInt(s, 10, 64); ierr == nil || ierr.(*strconv.NumError).Err == strconv.ErrRange {
			return 0, nil
		}
	}
	return 0, err
}

// parseValue parses a single-value cgroup file; "max" is maxValue.
func parseValue(data []byte, maxValue uint64) (uint64, error) {
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return maxValue, nil
	}
	return parseUint(s)
}

// readValue reads a single-value cgroup file; "max" is maxValue. ok is false
// if the file does not exist.
func readValue(p string, maxValue uint64) (v uint64, ok bool, err error) {
	data, ok, err := readOptional(p)
	if !ok || err != nil {
		return 0, false, err
	}
	v, err = parseValue(data, maxValue)
	if err != nil {
		return 0, false, badFormat(p, err)
	}
	return v, true, nil
}

// parseFlatKeyed parses "key value" lines (memory.stat, cpu.stat,
// memory.events, memory.oom_control, ...).
func parseFlatKeyed(data []byte) (map[string]uint64, error) {
	out := make(map[string]uint64)
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("line %q is not \"key value\"", line)
		}
		v, err := parseUint(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		out[f[0]] = v
	}
	return out, nil
}

// readFlatKeyed reads a "key value" cgroup file. ok is false if the file
// does not exist.
func readFlatKeyed(p string) (kv map[string]uint64, ok bool, err error) {
	data, ok, err := readOptional(p)
	if !ok || err != nil {
		return nil, false, err
	}
	kv, err = parseFlatKeyed(data)
	if err != nil {
		return nil, false, badFormat(p, err)
	}
	return kv, true, nil
}

// parseUintList parses whitespace-separated numbers (cpuacct.usage_percpu).
func parseUintList(data []byte) ([]uint64, error) {
	var out []uint64
	for _, s := range strings.Fields(string(data)) {
		v, err := parseUint(s)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// hugePageSizes returns the huge page sizes of the host as the hugetlb
// controller names them ("2MB", "1GB") from the entries of
// /sys/kernel/mm/hugepages ("hugepages-2048kB"). Entries of another form are
// ignored.
func hugePageSizes(names []string) []string {
	var out []string
	for _, n := range names {
		v, ok := strings.CutPrefix(n, "hugepages-")
		if !ok {
			continue
		}
		v, ok = strings.CutSuffix(v, "kB")
		if !ok {
			continue
		}
		kb, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			continue
		}
		// As the kernel's hugetlb_cgroup names them (mm/hugetlb_cgroup.c).
		switch {
		case kb >= 1<<20:
			out = append(out, strconv.FormatUint(kb>>20, 10)+"GB")
		case kb >= 1<<10:
			out = append(out, strconv.FormatUint(kb>>10, 10)+"MB")
		default:
			out = append(out, strconv.FormatUint(kb, 10)+"KB")
		}
	}
	return out
}

// readHugePageSizes lists the host's huge page sizes (nil if none).
func readHugePageSizes(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return hugePageSizes(names)
}

// rdmaEntry is one line of rdma.current or rdma.max:
// "mlx4_0 hca_handle=2 hca_object=max".
type rdmaEntry struct {
	device           string
	handles, objects uint32
}

// parseRdma parses rdma.current or rdma.max; "max" is math.MaxUint32. Lines
// of another form are ignored, as in containerd.
func parseRdma(data []byte) []rdmaEntry {
	var out []rdmaEntry
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		e := rdmaEntry{device: f[0]}
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			n := uint64(math.MaxUint32)
			if v != "max" {
				var err error
				if n, err = strconv.ParseUint(v, 10, 32); err != nil {
					continue
				}
			}
			switch k {
			case "hca_handle":
				e.handles = uint32(n)
			case "hca_object":
				e.objects = uint32(n)
			}
		}
		out = append(out, e)
	}
	return out
}
