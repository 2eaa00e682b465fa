package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/oserr"
	"github.com/tether-shim/tether/internal/paths"
)

// procRoot is where procfs is mounted.
const procRoot = "/proc"

// Cgroup is a container's cgroup, found from its init pid.
//
// It has no mutex: every field is set by Load and never changed afterwards,
// so a Cgroup may be used from any number of goroutines.
type Cgroup struct {
	mode Mode              // the host's layout when Load ran
	path string            // the cgroup path (the memory hierarchy's on v1), for messages
	v1   map[string]string // Legacy and Hybrid: controller ("memory", "name=systemd") -> directory
	v2   string            // Unified: the cgroup's directory

	hugePages string // the directory listing the host's huge page sizes (/sys/kernel/mm/hugepages)
}

// Load finds the cgroup of pid (/proc/<pid>/cgroup): the v1 memory/cpu/...
// paths on Legacy and Hybrid hosts, the v2 path on Unified.
//
// The directories are resolved through this process's mounts
// (/proc/self/mountinfo), so a hierarchy mounted elsewhere than
// /sys/fs/cgroup is found too. Controllers that are not mounted are left out.
// Errors: errdefs.ErrInvalidArgument for pid <= 0, errdefs.ErrNotFound if
// the process or its cgroup does not exist, errdefs.ErrFailedPrecondition if
// no hierarchy of the process is mounted.
func Load(pid int) (*Cgroup, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("cgroups: load pid %d: %w", pid, errdefs.ErrInvalidArgument)
	}
	return load(HostMode(), procRoot, pid)
}

// load is Load for a host of the given mode with procfs at proc.
func load(mode Mode, proc string, pid int) (*Cgroup, error) {
	data, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return nil, wrap(err, "cgroups: cgroup of process %d", pid)
	}
	entries, err := parseProcCgroup(data)
	if err != nil {
		return nil, err
	}
	mounts, err := readMounts(proc)
	if err != nil {
		return nil, err
	}
	c, err := resolve(mode, mounts, entries)
	if err != nil {
		return nil, fmt.Errorf("cgroups: process %d: %w", pid, err)
	}
	if _, err := os.Stat(c.primary()); err != nil {
		return nil, wrap(err, "cgroups: cgroup %s of process %d", c.path, pid)
	}
	return c, nil
}

// readMounts returns the cgroup mounts of this process.
func readMounts(proc string) ([]mount, error) {
	data, err := os.ReadFile(filepath.Join(proc, "self", "mountinfo"))
	if err != nil {
		return nil, wrap(err, "cgroups: read mountinfo")
	}
	return parseMountinfo(data)
}

// primary returns the directory whose existence tells whether the cgroup
// still exists: the v2 directory, else the memory hierarchy's, else the
// first controller's in name order.
func (c *Cgroup) primary() string {
	if c.mode == Unified {
		return c.v2
	}
	if d, ok := c.v1["memory"]; ok {
		return d
	}
	keys := make([]string, 0, len(c.v1))
	for k := range c.v1 {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return c.v1[keys[0]]
}

// AddProcess moves pid into the cgroup at path (for the ShimCgroup option:
// the shim moving itself). path is a cgroup path like "/foo" relative to each
// hierarchy root (v1: every mounted controller; v2: the unified root).
//
// On v1 (Legacy and Hybrid hosts) the process is moved in every mounted v1
// hierarchy in which the cgroup exists, as containerd's cgroup1 does; the
// unified hierarchy of a Hybrid host, which has no controllers, is left
// alone. The cgroup is never created. Errors: errdefs.ErrInvalidArgument for
// a path that is not absolute and clean or pid <= 0, errdefs.ErrNotFound if
// the cgroup exists in no hierarchy or the process does not exist. A failure
// in one hierarchy stops the move there; hierarchies already written keep
// the process.
func AddProcess(path string, pid int) error {
	mounts, err := readMounts(procRoot)
	if err != nil {
		return err
	}
	return addProcess(HostMode(), mounts, path, pid)
}

// addProcess is AddProcess on a host of the given mode and cgroup mounts.
func addProcess(mode Mode, mounts []mount, cgPath string, pid int) error {
	if pid <= 0 {
		return fmt.Errorf("cgroups: add pid %d: %w", pid, errdefs.ErrInvalidArgument)
	}
	if err := paths.Check("cgroups: cgroup path", cgPath); err != nil {
		return err
	}
	var dirs []string
	if mode == Unified {
		if dir, ok := pickMount(mounts, cgPath, func(m mount) bool { return m.v2 }); ok {
			dirs = append(dirs, dir)
		}
	} else {
		var seen []string
		for _, m := range mounts {
			if m.v2 || slices.Contains(seen, m.dev) {
				continue
			}
			seen = append(seen, m.dev)
			dev := m.dev
			if dir, ok := pickMount(mounts, cgPath, func(m mount) bool { return !m.v2 && m.dev == dev }); ok {
				dirs = append(dirs, dir)
			}
		}
	}
	moved := 0
	for _, dir := range dirs {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := writeProcs(dir, pid); err != nil {
			return err
		}
		moved++
	}
	if moved == 0 {
		return fmt.Errorf("cgroups: cgroup %s exists in no %s hierarchy: %w", cgPath, mode, errdefs.ErrNotFound)
	}
	return nil
}

// writeProcs moves pid into the cgroup directory dir.
func writeProcs(dir string, pid int) error {
	p := filepath.Join(dir, "cgroup.procs")
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return wrap(err, "cgroups: add process %d", pid)
	}
	_, err = f.WriteString(strconv.Itoa(pid))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return wrap(err, "cgroups: add process %d to %s", pid, p)
	}
	return nil
}

// wrap returns err with the message before it and its errdefs class
// (oserr.Class) in the chain.
func wrap(err error, format string, args ...any) error {
	return oserr.Wrap(err, format, args...)
}

// gone reports whether err says that a cgroup file or directory is gone.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}
