package main

// What /proc tells about processes, mounts and sockets. Adapted from
// test/e2e/proc_test.go (copied, not imported: test files cannot be).

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// proc is a process as /proc shows it.
type proc struct {
	pid  int
	args []string
}

func allProcesses() []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		out = append(out, proc{pid: pid, args: strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")})
	}
	return out
}

func environ(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

func getenv(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// argValue returns the value after flag in args (flag value or flag=value).
func argValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func hasArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}

func isShim(p proc) bool {
	return len(p.args) > 0 && strings.HasPrefix(filepath.Base(p.args[0]), "containerd-shim-")
}

// shimProcesses returns the shim processes (servers and short-lived start or
// delete processes) of the containerd at sock: -address names it, or
// TTRPC_ADDRESS in their environment does.
func shimProcesses(sock string) []proc {
	var out []proc
	for _, p := range allProcesses() {
		if !isShim(p) {
			continue
		}
		if argValue(p.args, "-address") == sock || getenv(environ(p.pid), "TTRPC_ADDRESS") == sock+".ttrpc" {
			out = append(out, p)
		}
	}
	return out
}

// shimServers returns the long-running shim servers of the containerd at
// sock: its shim processes that are neither `start` nor `delete`.
func shimServers(sock string) []proc {
	var out []proc
	for _, p := range shimProcesses(sock) {
		if hasArg(p.args, "start") || hasArg(p.args, "delete") {
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

// unixSocket is a line of /proc/net/unix.
type unixSocket struct {
	inode uint64
	path  string
	flags string // 00010000 = listening
}

func unixSockets() []unixSocket {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []unixSocket
	sc := bufio.NewScanner(f)
	sc.Scan()
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 7 {
			continue
		}
		ino, _ := strconv.ParseUint(fs[6], 10, 64)
		s := unixSocket{inode: ino, flags: fs[3]}
		if len(fs) >= 8 {
			s.path = fs[7]
		}
		out = append(out, s)
	}
	return out
}

// listeningPaths returns the filesystem paths of the unix sockets pid listens on.
func listeningPaths(pid int) []string {
	byInode := map[uint64]string{}
	for _, s := range unixSockets() {
		if s.flags == "00010000" && strings.HasPrefix(s.path, "/") {
			byInode[s.inode] = s.path
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

type mountEntry struct{ point string }

func mounts() []mountEntry {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		a := strings.Fields(sc.Text())
		if len(a) >= 5 {
			out = append(out, mountEntry{point: unescape(a[4])})
		}
	}
	return out
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mounted(dir string) bool {
	for _, m := range mounts() {
		if m.point == dir {
			return true
		}
	}
	return false
}

// unmountUnder lazily unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) {
	for range 5 {
		var points []string
		for _, m := range mounts() {
			if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
				points = append(points, m.point)
			}
		}
		if len(points) == 0 {
			return
		}
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		for _, p := range points {
			_ = syscall.Unmount(p, syscall.MNT_DETACH)
		}
	}
}

// killCgroup SIGKILLs every process in a cgroup whose path starts with prefix.
func killCgroup(prefix string) int {
	n := 0
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) == 3 && strings.HasPrefix(parts[2], prefix) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				n++
				break
			}
		}
	}
	return n
}

// removeCgroups removes the (empty) cgroup directories whose top-level name
// starts with prefix, in every hierarchy under /sys/fs/cgroup.
func removeCgroups(prefix string) {
	var dirs []string
	for _, top := range []string{"/sys/fs/cgroup/*/" + prefix + "*", "/sys/fs/cgroup/" + prefix + "*"} {
		matches, _ := filepath.Glob(top)
		for _, m := range matches {
			_ = filepath.WalkDir(m, func(p string, de os.DirEntry, err error) error {
				if err == nil && de.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
		}
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
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
