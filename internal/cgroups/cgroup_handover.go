package cgroups

import (
	"fmt"
	"maps"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/paths"
)

// CgroupHanded describes a Cgroup across a live upgrade: what Load found,
// so that the new image need not find it again from a pid that may have
// exited and been reaped. JSON.
type CgroupHanded struct {
	Mode      Mode              `json:"mode"`
	Path      string            `json:"path"`
	V1        map[string]string `json:"v1,omitempty"`
	V2        string            `json:"v2,omitempty"`
	HugePages string            `json:"huge_pages,omitempty"`
}

// HandOver returns c's description.
func (c *Cgroup) HandOver() CgroupHanded {
	h := CgroupHanded{Mode: c.mode, Path: c.path, V2: c.v2, HugePages: c.hugePages}
	if len(c.v1) > 0 {
		h.V1 = maps.Clone(c.v1)
	}
	return h
}

// AdoptCgroup returns the Cgroup h describes. The directories must be
// absolute and clean, under the hierarchy h's mode has; a description of
// another mode than the host's, or none, is ErrInvalidArgument.
func AdoptCgroup(h CgroupHanded) (*Cgroup, error) {
	bad := func(what string) error {
		return fmt.Errorf("cgroups: handed-over cgroup %q: %s: %w", h.Path, what, errdefs.ErrInvalidArgument)
	}
	if h.Mode != HostMode() {
		return nil, bad(fmt.Sprintf("mode %v, the host's is %v", h.Mode, HostMode()))
	}
	dirs := make([]string, 0, len(h.V1)+1)
	switch h.Mode {
	case Unified:
		if h.V2 == "" || len(h.V1) > 0 {
			return nil, bad("a unified cgroup has one directory")
		}
		dirs = append(dirs, h.V2)
	default:
		if len(h.V1) == 0 {
			return nil, bad("no controller directory")
		}
		for _, d := range h.V1 {
			dirs = append(dirs, d)
		}
		if h.V2 != "" {
			dirs = append(dirs, h.V2)
		}
	}
	if h.HugePages != "" {
		dirs = append(dirs, h.HugePages)
	}
	for _, d := range dirs {
		if err := paths.Check("directory", d); err != nil {
			return nil, bad(err.Error())
		}
	}
	c := &Cgroup{mode: h.Mode, path: h.Path, v2: h.V2, hugePages: h.HugePages}
	if len(h.V1) > 0 {
		c.v1 = maps.Clone(h.V1)
	}
	return c, nil
}
