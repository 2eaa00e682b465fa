package cgroups

import (
	"path/filepath"

	"golang.org/x/sys/unix"
)

// defaultRoot is where the host mounts its cgroup hierarchies.
const defaultRoot = "/sys/fs/cgroup"

// Mode is the host's cgroup layout.
type Mode int

const (
	// Legacy: every controller on a v1 hierarchy under /sys/fs/cgroup, no
	// unified hierarchy at /sys/fs/cgroup/unified.
	Legacy Mode = iota
	// Hybrid: the controllers on v1 hierarchies, and a unified (v2)
	// hierarchy without controllers at /sys/fs/cgroup/unified. Treated as
	// Legacy for metrics and OOM.
	Hybrid
	// Unified: /sys/fs/cgroup is the v2 hierarchy.
	Unified
)

// String returns "legacy", "hybrid" or "unified".
func (m Mode) String() string {
	switch m {
	case Legacy:
		return "legacy"
	case Hybrid:
		return "hybrid"
	case Unified:
		return "unified"
	}
	return "unknown"
}

// HostMode returns the host's cgroup layout, as the kernel reports the file
// systems mounted at /sys/fs/cgroup and /sys/fs/cgroup/unified. It asks the
// kernel on every call (two statfs at most) and caches nothing. A host
// without /sys/fs/cgroup is reported as Legacy.
func HostMode() Mode {
	return hostMode(defaultRoot)
}

// hostMode is HostMode for the cgroup root directory root.
func hostMode(root string) Mode {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return Legacy
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return Unified
	}
	if err := unix.Statfs(filepath.Join(root, "unified"), &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return Hybrid
	}
	return Legacy
}
