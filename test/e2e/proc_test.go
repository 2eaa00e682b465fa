package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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

// environ returns the environment of pid.
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

// isShim tells whether p runs a containerd shim binary (any runtime).
func isShim(p proc) bool {
	return len(p.args) > 0 && strings.HasPrefix(filepath.Base(p.args[0]), "containerd-shim-")
}

// shimProcesses returns the shim processes that belong to the containerd at
// sock: -address names it, or TTRPC_ADDRESS in their environment does.
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

// procName is the base name of argv[0] of pid.
func procName(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	return filepath.Base(strings.SplitN(string(data), "\x00", 2)[0])
}

// ppid returns the parent pid of pid from /proc/<pid>/stat.
func ppid(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("bad stat %q", s)
	}
	return strconv.Atoi(f[1])
}

// alive tells whether pid exists and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// unixSocket is a line of /proc/net/unix.
type unixSocket struct {
	inode uint64
	path  string // "@..." for abstract sockets
	state string // 01 listening/unconnected, 03 connected
	flags string // 00010000 = __SO_ACCEPTCON (listening)
}

func unixSockets() []unixSocket {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []unixSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 7 {
			continue
		}
		ino, _ := strconv.ParseUint(fs[6], 10, 64)
		s := unixSocket{inode: ino, flags: fs[3], state: fs[5]}
		if len(fs) >= 8 {
			s.path = fs[7]
		}
		out = append(out, s)
	}
	return out
}

// listeners returns the pids that hold a listening unix socket bound to path.
func listeners(path string) []int {
	inodes := map[uint64]bool{}
	for _, s := range unixSockets() {
		if s.path == path && s.flags == "00010000" {
			inodes[s.inode] = true
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	var pids []int
	for _, p := range allProcesses() {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid))
		if err != nil {
			continue
		}
		for _, e := range ents {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.pid, e.Name()))
			if err != nil {
				continue
			}
			var ino uint64
			if _, err := fmt.Sscanf(l, "socket:[%d]", &ino); err == nil && inodes[ino] {
				pids = append(pids, p.pid)
				break
			}
		}
	}
	return pids
}

// mountEntry is a line of /proc/self/mountinfo.
type mountEntry struct {
	point, fstype, source, superOpts string
}

func (m mountEntry) String() string {
	return fmt.Sprintf("%s on %s (%s, %s)", m.source, m.point, m.fstype, m.superOpts)
}

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
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 {
			continue
		}
		out = append(out, mountEntry{point: unescape(a[4]), fstype: b[0], source: unescape(b[1]), superOpts: b[2]})
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

// mountsMentioning returns the mounts whose mount point, source or options
// contain any of the strings.
func mountsMentioning(subs ...string) []mountEntry {
	var out []mountEntry
	for _, m := range mounts() {
		for _, s := range subs {
			if strings.Contains(m.point, s) || strings.Contains(m.source, s) || strings.Contains(m.superOpts, s) {
				out = append(out, m)
				break
			}
		}
	}
	return out
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
func killCgroup(prefix string) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
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
				break
			}
		}
	}
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

// waitFor polls cond every 100ms until it returns true, and fails the test
// with cond's last message if that does not happen within timeout. The
// timeout is a bound on a hang, not a performance assertion.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not the case after %v: %s", what, timeout, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeStaleSocket removes the socket file path if no process listens on it.
func removeStaleSocket(path string) {
	if st, err := os.Lstat(path); err == nil && st.Mode().Type() == os.ModeSocket && len(listeners(path)) == 0 {
		_ = os.Remove(path)
	}
}
