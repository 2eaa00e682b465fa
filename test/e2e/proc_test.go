package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

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

// listeners returns the pids that hold a listening unix socket bound to path.
func listeners(path string) []int {
	inodes := map[uint64]bool{}
	for _, s := range testkit.UnixSockets() {
		if s.Path == path && s.Flags == "00010000" {
			inodes[s.Inode] = true
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	var pids []int
	for _, p := range testkit.AllProcesses() {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid))
		if err != nil {
			continue
		}
		for _, e := range ents {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.Pid, e.Name()))
			if err != nil {
				continue
			}
			var ino uint64
			if _, err := fmt.Sscanf(l, "socket:[%d]", &ino); err == nil && inodes[ino] {
				pids = append(pids, p.Pid)
				break
			}
		}
	}
	return pids
}

// mountsMentioning returns the mounts whose mount point, source or options
// contain any of the strings.
func mountsMentioning(subs ...string) []testkit.MountEntry {
	var out []testkit.MountEntry
	for _, m := range testkit.Mounts() {
		for _, s := range subs {
			if strings.Contains(m.Point, s) || strings.Contains(m.Source, s) || strings.Contains(m.SuperOpts, s) {
				out = append(out, m)
				break
			}
		}
	}
	return out
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
