package testkit

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

// Proc is a process as /proc shows it.
type Proc struct {
	Pid  int      // process id
	Args []string // argv, from /proc/<pid>/cmdline
}

// AllProcesses returns every process with a non-empty command line.
func AllProcesses() []Proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		out = append(out, Proc{Pid: pid, Args: strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")})
	}
	return out
}

// Environ returns the environment of pid.
func Environ(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// Getenv returns the value of key in env (KEY=value entries), or "".
func Getenv(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// ArgValue returns the value after flag in args (flag value or flag=value).
func ArgValue(args []string, flag string) string {
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

// IsShim tells whether p runs a containerd shim binary (any runtime).
func IsShim(p Proc) bool {
	return len(p.Args) > 0 && strings.HasPrefix(filepath.Base(p.Args[0]), "containerd-shim-")
}

// ShimProcesses returns the shim processes that belong to the containerd at
// sock: -address names it, or TTRPC_ADDRESS in their environment does.
func ShimProcesses(sock string) []Proc {
	var out []Proc
	for _, p := range AllProcesses() {
		if !IsShim(p) {
			continue
		}
		if ArgValue(p.Args, "-address") == sock || Getenv(Environ(p.Pid), "TTRPC_ADDRESS") == sock+".ttrpc" {
			out = append(out, p)
		}
	}
	return out
}

// UnixSocket is a line of /proc/net/unix.
type UnixSocket struct {
	Inode uint64 // socket inode, as in /proc/<pid>/fd links "socket:[inode]"
	Path  string // "@..." for abstract sockets
	State string // 01 listening/unconnected, 03 connected
	Flags string // 00010000 = __SO_ACCEPTCON (listening)
}

// UnixSockets returns the unix sockets of /proc/net/unix.
func UnixSockets() []UnixSocket {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []UnixSocket
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 7 {
			continue
		}
		ino, _ := strconv.ParseUint(fs[6], 10, 64)
		s := UnixSocket{Inode: ino, Flags: fs[3], State: fs[5]}
		if len(fs) >= 8 {
			s.Path = fs[7]
		}
		out = append(out, s)
	}
	return out
}

// MountEntry is a line of /proc/self/mountinfo.
type MountEntry struct {
	// Point is the mount point; FSType, Source and SuperOpts are the
	// filesystem type, source and super options after the " - " separator.
	Point, FSType, Source, SuperOpts string
}

// String formats m as "source on point (fstype, options)".
func (m MountEntry) String() string {
	return fmt.Sprintf("%s on %s (%s, %s)", m.Source, m.Point, m.FSType, m.SuperOpts)
}

// Mounts returns the mounts of /proc/self/mountinfo.
func Mounts() []MountEntry {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []MountEntry
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
		out = append(out, MountEntry{Point: unescape(a[4]), FSType: b[0], Source: unescape(b[1]), SuperOpts: b[2]})
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

// Mounted tells whether dir is a mount point.
func Mounted(dir string) bool {
	for _, m := range Mounts() {
		if m.Point == dir {
			return true
		}
	}
	return false
}

// UnmountUnder lazily unmounts every mount at or below dir, deepest first.
func UnmountUnder(dir string) {
	for range 5 {
		var points []string
		for _, m := range Mounts() {
			if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
				points = append(points, m.Point)
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

// KillCgroup SIGKILLs every process (but this one) in a cgroup whose path
// starts with prefix, and returns how many it signalled.
func KillCgroup(prefix string) int {
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

// RemoveCgroups removes the (empty) cgroup directories whose top-level name
// starts with prefix, in every hierarchy under /sys/fs/cgroup.
func RemoveCgroups(prefix string) {
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
