package main

// What /proc tells about processes, as the bench needs it beyond what
// testkit reads: stat, memory, mappings, threads and listening sockets.

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/tether-shim/tether/testkit"
)

func hasArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}

// shimServers returns the long-running shim servers of the containerd at
// sock: its shim processes that are neither `start` nor `delete`.
func shimServers(sock string) []testkit.Proc {
	var out []testkit.Proc
	for _, p := range testkit.ShimProcesses(sock) {
		if hasArg(p.Args, "start") || hasArg(p.Args, "delete") {
			continue
		}
		out = append(out, p)
	}
	return out
}

// procStat is what the bench reads from /proc/<pid>/stat.
type procStat struct {
	comm           string
	state          byte
	ppid           int
	utime, stime   uint64 // clock ticks, the whole thread group
	cutime, cstime uint64 // clock ticks, waited-for children
	threads        int
}

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(data)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return procStat{}, fmt.Errorf("bad stat of %d: %q", pid, s)
	}
	f := strings.Fields(s[close+1:])
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 18 {
		return procStat{}, fmt.Errorf("short stat of %d: %q", pid, s)
	}
	st := procStat{comm: s[open+1 : close], state: f[0][0]}
	st.ppid, _ = strconv.Atoi(f[1])
	st.utime, _ = strconv.ParseUint(f[11], 10, 64)
	st.stime, _ = strconv.ParseUint(f[12], 10, 64)
	st.cutime, _ = strconv.ParseUint(f[13], 10, 64)
	st.cstime, _ = strconv.ParseUint(f[14], 10, 64)
	st.threads, _ = strconv.Atoi(f[17])
	return st, nil
}

// clockTick is USER_HZ, the unit of the times in /proc/<pid>/stat. It is 100
// on every Linux architecture Go supports.
const clockTick = 100

// memSample is one shim server's memory, threads and fds.
type memSample struct {
	Pid         int   `json:"pid"`
	RssKB       int64 `json:"rss_kb"`
	PssKB       int64 `json:"pss_kb"`
	PssAnonKB   int64 `json:"pss_anon_kb"`
	PssFileKB   int64 `json:"pss_file_kb"`
	SharedKB    int64 `json:"shared_kb"` // Shared_Clean + Shared_Dirty
	USSKB       int64 `json:"uss_kb"`    // Private_Clean + Private_Dirty
	PrivCleanKB int64 `json:"private_clean_kb"`
	PrivDirtyKB int64 `json:"private_dirty_kb"`
	AnonKB      int64 `json:"anon_kb"`
	Threads     int   `json:"threads"`
	FDs         int   `json:"fds"`
	VmHWMKB     int64 `json:"vm_hwm_kb"`
	Goroutines  int   `json:"-"`
}

// sampleMemory reads smaps_rollup, status and fd of pid.
func sampleMemory(pid int) (memSample, error) {
	m := memSample{Pid: pid}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return m, err
	}
	kv := parseKB(string(data))
	m.RssKB, m.PssKB, m.PssAnonKB, m.PssFileKB = kv["Rss"], kv["Pss"], kv["Pss_Anon"], kv["Pss_File"]
	m.SharedKB = kv["Shared_Clean"] + kv["Shared_Dirty"]
	m.PrivCleanKB, m.PrivDirtyKB = kv["Private_Clean"], kv["Private_Dirty"]
	m.USSKB = m.PrivCleanKB + m.PrivDirtyKB
	m.AnonKB = kv["Anonymous"]
	if m.RssKB == 0 {
		return m, fmt.Errorf("pid %d: empty smaps_rollup (exited?)", pid)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	skv := parseKB(string(status))
	m.Threads, m.VmHWMKB = int(skv["Threads"]), skv["VmHWM"]
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return m, err
	}
	m.FDs = len(fds)
	return m, nil
}

// parseKB parses "Key:   123 kB" lines (and plain "Key: 123").
func parseKB(s string) map[string]int64 {
	out := map[string]int64{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		out[strings.TrimSpace(k)] = n
	}
	return out
}

// mappingsBreakdown sums Rss per mapping kind of /proc/<pid>/smaps: the shim
// binary, heap-like anonymous memory, thread stacks, shared libraries and the
// rest. It tells where a shim's resident memory is.
func mappingsBreakdown(pid int) map[string]int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	out := map[string]int64{}
	kind := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fs := strings.Fields(line)
		if len(fs) == 0 {
			continue
		}
		if strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":") {
			// A mapping header: addr perms offset dev inode [path].
			path := ""
			if len(fs) >= 6 {
				path = strings.Join(fs[5:], " ")
			}
			perms := fs[1]
			switch {
			case path == exe && exe != "" && strings.Contains(perms, "x"):
				kind = "binary: text"
			case path == exe && exe != "" && strings.Contains(perms, "w"):
				kind = "binary: data"
			case path == exe && exe != "":
				kind = "binary: read-only data"
			case path == "[stack]":
				kind = "main stack"
			case path == "[heap]":
				kind = "brk heap (libc)"
			case path == "[vdso]" || path == "[vvar]" || path == "[vsyscall]":
				kind = "vdso"
			case strings.HasSuffix(path, ".so") || strings.Contains(path, ".so."):
				kind = "shared libraries"
			case path == "":
				kind = "anonymous (Go heap, stacks, runtime)"
			default:
				kind = "other files"
			}
			continue
		}
		if fs[0] == "Rss:" && len(fs) >= 2 {
			n, _ := strconv.ParseInt(fs[1], 10, 64)
			out[kind] += n
		}
	}
	return out
}

// listeningPaths returns the filesystem paths of the unix sockets pid listens on.
func listeningPaths(pid int) []string {
	byInode := map[uint64]string{}
	for _, s := range testkit.UnixSockets() {
		if s.Flags == "00010000" && strings.HasPrefix(s.Path, "/") {
			byInode[s.Inode] = s.Path
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err != nil {
			continue
		}
		var ino uint64
		if _, err := fmt.Sscanf(l, "socket:[%d]", &ino); err == nil && byInode[ino] != "" {
			out = append(out, byInode[ino])
		}
	}
	return out
}

// threadSyscalls counts the threads of pid by the system call they are
// blocked in (/proc/<pid>/task/*/syscall): for a Go program, futex is an
// idle M, epoll_pwait the netpoller, and anything else (read, openat, waitid)
// a thread that a blocking call holds.
func threadSyscalls(pid int) map[string]int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	out := map[string]int{}
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, t.Name()))
		if err != nil {
			continue
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			continue
		}
		name := f[0]
		if n, err := strconv.Atoi(f[0]); err == nil {
			if s, ok := syscallNames[n]; ok {
				name = s
			} else {
				name = "syscall " + f[0]
			}
		}
		out[name]++
	}
	return out
}

// syscallNames are the amd64 system calls a blocked Go thread is likely in.
var syscallNames = map[int]string{
	0: "read", 1: "write", 2: "open", 7: "poll", 23: "select", 34: "pause", 35: "nanosleep",
	43: "accept", 45: "recvfrom", 47: "recvmsg", 61: "wait4", 202: "futex", 230: "clock_nanosleep",
	232: "epoll_wait", 247: "waitid", 257: "openat", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
	288: "accept4", 441: "epoll_pwait2",
}
