// Package procfs reads what the operator's tool needs of /proc: a process's
// memory, threads, fds, command line, executable, working directory and
// start time, the unix sockets of the host and the mounts.
//
// Every reader is split into a read of the file and a pure parser of its
// bytes (Parse*), which the tests and fuzz targets exercise. Parsers never
// panic: a malformed line is skipped or an error, as each one says.
package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tether-shim/tether/internal/introspect"
)

// Root is where procfs is mounted.
const Root = "/proc"

// deletedSuffix is what the kernel appends to a link of /proc/<pid> whose
// target was unlinked.
const deletedSuffix = " (deleted)"

// path is /proc/<pid>/<name>.
func path(pid int, name string) string {
	return filepath.Join(Root, strconv.Itoa(pid), name)
}

// Stats reads the RSS and thread count (status), the PSS (smaps_rollup;
// 0 if the kernel has none) and the number of open fds of pid.
func Stats(pid int) (introspect.ProcStats, error) {
	var st introspect.ProcStats
	data, err := os.ReadFile(path(pid, "status"))
	if err != nil {
		return st, fmt.Errorf("process %d: %w", pid, err)
	}
	s, err := ParseStatus(data)
	if err != nil {
		return st, fmt.Errorf("process %d: %w", pid, err)
	}
	st.RSSBytes, st.Threads = s.RSSBytes, s.Threads
	if data, err := os.ReadFile(path(pid, "smaps_rollup")); err == nil {
		st.PSSBytes, _ = ParseSmapsRollup(data)
	}
	fds, err := os.ReadDir(path(pid, "fd"))
	if err != nil {
		return st, fmt.Errorf("process %d: fds: %w", pid, err)
	}
	st.FDs = len(fds)
	return st, nil
}

// Status is what ParseStatus reads of /proc/<pid>/status.
type Status struct {
	Name     string
	RSSBytes uint64
	Threads  int
	// UID is the real uid.
	UID int
}

// ParseStatus parses /proc/<pid>/status: Name, VmRSS (absent for a
// zombie: 0), Threads and the real Uid. A file without Threads is an
// error.
func ParseStatus(data []byte) (Status, error) {
	var s Status
	seenThreads := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "Name":
			s.Name = val
		case "VmRSS":
			kb, err := parseKB(val)
			if err != nil {
				return s, fmt.Errorf("status: VmRSS: %w", err)
			}
			s.RSSBytes = kb
		case "Threads":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return s, fmt.Errorf("status: Threads %q", val)
			}
			s.Threads, seenThreads = n, true
		case "Uid":
			f := strings.Fields(val)
			if len(f) == 0 {
				return s, errors.New("status: empty Uid")
			}
			uid, err := strconv.Atoi(f[0])
			if err != nil || uid < 0 {
				return s, fmt.Errorf("status: Uid %q", val)
			}
			s.UID = uid
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("status: %w", err)
	}
	if !seenThreads {
		return s, errors.New("status: no Threads line")
	}
	return s, nil
}

// parseKB parses "1234 kB" into bytes.
func parseKB(val string) (uint64, error) {
	num, unit, _ := strings.Cut(val, " ")
	if strings.TrimSpace(unit) != "kB" {
		return 0, fmt.Errorf("%q is not in kB", val)
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || n > 1<<53 {
		return 0, fmt.Errorf("%q: not a size", val)
	}
	return n << 10, nil
}

// ParseSmapsRollup returns the Pss line of /proc/<pid>/smaps_rollup, in
// bytes.
func ParseSmapsRollup(data []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if val, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			return parseKB(strings.TrimSpace(val))
		}
	}
	return 0, errors.New("smaps_rollup: no Pss line")
}

// Cmdline returns the argv of pid; empty for a kernel thread or a zombie.
func Cmdline(pid int) ([]string, error) {
	data, err := os.ReadFile(path(pid, "cmdline"))
	if err != nil {
		return nil, err
	}
	return ParseCmdline(data), nil
}

// ParseCmdline splits a NUL-separated command line.
func ParseCmdline(data []byte) []string {
	data = bytes.TrimRight(data, "\x00")
	if len(data) == 0 {
		return nil
	}
	return strings.Split(string(data), "\x00")
}

// Link reads the link name of pid (exe, cwd) and tells whether its target
// was unlinked (the kernel's " (deleted)" suffix, which is removed).
func Link(pid int, name string) (target string, deleted bool, err error) {
	t, err := os.Readlink(path(pid, name))
	if err != nil {
		return "", false, err
	}
	if s, ok := strings.CutSuffix(t, deletedSuffix); ok {
		return s, true, nil
	}
	return t, false, nil
}

// ExeFile is /proc/<pid>/exe: opening or stat-ing it reaches the running
// image, even when its path was replaced or unlinked.
func ExeFile(pid int) string { return path(pid, "exe") }

// Pids lists the pids in /proc.
func Pids() ([]int, error) {
	ents, err := os.ReadDir(Root)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out, nil
}

// SocketInodes returns the inodes of the sockets pid has open (its fds
// that link to "socket:[N]"). fds that vanish while it reads are skipped.
func SocketInodes(pid int) ([]uint64, error) {
	dir := path(pid, "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, e := range ents {
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if ino, ok := ParseSocketLink(t); ok {
			out = append(out, ino)
		}
	}
	return out, nil
}

// ParseSocketLink parses the "socket:[N]" target of an fd link.
func ParseSocketLink(t string) (uint64, bool) {
	s, ok := strings.CutPrefix(t, "socket:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}
