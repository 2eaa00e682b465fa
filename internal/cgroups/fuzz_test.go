package cgroups

import "testing"

// FuzzParseProcFiles: whatever /proc/<pid>/cgroup, /proc/self/mountinfo and
// a flat-keyed cgroup file hold, the parsers return a value or an error and
// never panic; resolving what they return never panics either.
func FuzzParseProcFiles(f *testing.F) {
	f.Add([]byte("0::/system.slice/x.scope\n"),
		[]byte("35 25 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"),
		[]byte("oom 0\noom_kill 3\n"))
	f.Add([]byte("12:memory:/a\n1:name=systemd:/b\n0::/c\n"),
		[]byte("40 30 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"),
		[]byte("x\n"))
	f.Fuzz(func(t *testing.T, procCgroup, mountinfo, flat []byte) {
		entries, err1 := parseProcCgroup(procCgroup)
		mounts, err2 := parseMountinfo(mountinfo)
		_, _ = parseFlatKeyed(flat)
		_, _ = parseUintList(flat)
		_ = parseRdma(flat)
		if err1 == nil && err2 == nil {
			for _, m := range []Mode{Legacy, Hybrid, Unified} {
				_, _ = resolve(m, mounts, entries)
			}
		}
	})
}

// TestRegressionMountinfoWithoutSuperOptions: a cgroup line of mountinfo
// that ended after its source (no superoptions field) made parseMountinfo
// index past the end and panic (found by FuzzParseProcFiles).
func TestRegressionMountinfoWithoutSuperOptions(t *testing.T) {
	if _, err := parseMountinfo([]byte("0 0 0 0 0 0 - cgroup 0")); err == nil {
		t.Fatal("a mountinfo line without superoptions was accepted")
	}
}
