package cgroups

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/procfs"
)

// mount is one cgroup file system mount from /proc/self/mountinfo.
type mount struct {
	dev         string   // major:minor; one per v1 hierarchy
	root        string   // the directory of the hierarchy mounted here
	point       string   // the mount point
	v2          bool     // cgroup2 (the unified hierarchy)
	controllers []string // v1: the super options, which name its controllers ("cpu", "name=systemd")
}

// has reports whether the v1 mount m holds every controller of want.
func (m mount) has(want []string) bool {
	for _, c := range want {
		if !slices.Contains(m.controllers, c) {
			return false
		}
	}
	return len(want) > 0
}

// dir returns the directory of the cgroup cgPath (a path from the root of the
// hierarchy, as /proc/<pid>/cgroup shows it) under m. ok is false if the
// cgroup is outside the part of the hierarchy mounted at m.
func (m mount) dir(cgPath string) (string, bool) {
	if m.root == "/" {
		return path.Join(m.point, cgPath), true
	}
	if cgPath != m.root && !strings.HasPrefix(cgPath, m.root+"/") {
		return "", false
	}
	return path.Join(m.point, strings.TrimPrefix(cgPath, m.root)), true
}

// parseMountinfo returns the cgroup and cgroup2 mounts of a mountinfo file
// (procfs.ParseMountinfoOf: every container's start reads the file, and
// the other mounts, however many, make no garbage).
func parseMountinfo(data []byte) ([]mount, error) {
	cg, err := procfs.ParseMountinfoOf(data, "cgroup", "cgroup2")
	if err != nil {
		return nil, fmt.Errorf("cgroups: %w: %w", err, errdefs.ErrInternal)
	}
	out := make([]mount, 0, len(cg))
	for _, pm := range cg {
		m := mount{dev: pm.Dev, root: pm.Root, point: pm.Point, v2: pm.FSType == "cgroup2"}
		if !m.v2 {
			m.controllers = strings.Split(pm.SuperOpts, ",")
		}
		out = append(out, m)
	}
	return out, nil
}

// procEntry is one line of /proc/<pid>/cgroup: "id:controllers:path".
type procEntry struct {
	id          string
	controllers []string // empty for the unified hierarchy ("0::/path")
	path        string
	deleted     bool // v2: the kernel marked the cgroup " (deleted)"
}

// parseProcCgroup parses the contents of /proc/<pid>/cgroup (cgroups(7)).
func parseProcCgroup(data []byte) ([]procEntry, error) {
	var out []procEntry
	for i, line := range strings.Split(string(data), "\n") {
		if line == "" {
			continue
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			return nil, fmt.Errorf("cgroups: /proc/<pid>/cgroup line %d %q: %w", i+1, line, errdefs.ErrInternal)
		}
		e := procEntry{id: parts[0], path: parts[2]}
		if parts[1] != "" {
			e.controllers = strings.Split(parts[1], ",")
		}
		if p, ok := strings.CutSuffix(e.path, " (deleted)"); ok {
			e.path, e.deleted = p, true
		}
		out = append(out, e)
	}
	return out, nil
}

// pickMount returns the mount of the hierarchy that satisfies match and shows
// cgPath, preferring one under /sys/fs/cgroup (a hierarchy may be mounted more
// than once, e.g. bind-mounted into a container).
func pickMount(mounts []mount, cgPath string, match func(mount) bool) (string, bool) {
	var fallback string
	found := false
	for _, m := range mounts {
		if !match(m) {
			continue
		}
		dir, ok := m.dir(cgPath)
		if !ok {
			continue
		}
		if m.point == defaultRoot || strings.HasPrefix(m.point, defaultRoot+"/") {
			return dir, true
		}
		if !found {
			fallback, found = dir, true
		}
	}
	return fallback, found
}

// resolve computes the directories of a process's cgroup from the host's
// layout, its cgroup mounts and the process's /proc/<pid>/cgroup entries.
// It does not look at the file system.
func resolve(mode Mode, mounts []mount, entries []procEntry) (*Cgroup, error) {
	c := &Cgroup{mode: mode, hugePages: hugePagesDir}
	if mode == Unified {
		for _, e := range entries {
			if e.id != "0" || len(e.controllers) != 0 {
				continue
			}
			if e.deleted {
				return nil, fmt.Errorf("cgroups: cgroup %s was removed: %w", e.path, errdefs.ErrNotFound)
			}
			dir, ok := pickMount(mounts, e.path, func(m mount) bool { return m.v2 })
			if !ok {
				return nil, fmt.Errorf("cgroups: cgroup %s is not visible in any cgroup2 mount: %w", e.path, errdefs.ErrFailedPrecondition)
			}
			c.path, c.v2 = e.path, dir
			return c, nil
		}
		return nil, fmt.Errorf("cgroups: no unified hierarchy entry (0::) for the process: %w", errdefs.ErrFailedPrecondition)
	}
	c.v1 = make(map[string]string)
	for _, e := range entries {
		if len(e.controllers) == 0 {
			continue // the unified hierarchy of a hybrid host: no controllers
		}
		dir, ok := pickMount(mounts, e.path, func(m mount) bool { return !m.v2 && m.has(e.controllers) })
		if !ok {
			continue // not mounted here (net_cls, perf_event, ...)
		}
		for _, ctrl := range e.controllers {
			c.v1[ctrl] = dir
		}
		if slices.Contains(e.controllers, "memory") || c.path == "" {
			c.path = e.path
		}
	}
	if len(c.v1) == 0 {
		return nil, fmt.Errorf("cgroups: none of the process's v1 hierarchies is mounted: %w", errdefs.ErrFailedPrecondition)
	}
	return c, nil
}
