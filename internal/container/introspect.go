package container

import (
	"slices"
	"strings"

	"github.com/tether-shim/tether/internal/stdio"
)

// Accessors for `tether inspect` (package introspect, through the task
// service's adapter). Each takes only the mutex of what it reads.

// ExecID returns the exec id, "" for the init process.
func (p *Process) ExecID() string {
	if p.IsInit() {
		return ""
	}
	return p.id
}

// StdioStats returns what the process's stdio copies moved; zero without
// stdio.
func (p *Process) StdioStats() stdio.Stats {
	p.mu.Lock()
	pipes := p.pipes
	p.mu.Unlock()
	return pipes.Stats()
}

// Execs returns the container's exec processes, in exec id order.
func (c *Container) Execs() []*Process {
	c.mu.Lock()
	out := make([]*Process, 0, len(c.execs))
	for _, p := range c.execs {
		out = append(out, p)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b *Process) int { return strings.Compare(a.id, b.id) })
	return out
}

// CgroupPath returns the init's cgroup path, "" if it was not found (yet).
func (c *Container) CgroupPath() string {
	c.mu.Lock()
	cg := c.cgroup
	c.mu.Unlock()
	if cg == nil {
		return ""
	}
	return cg.Path()
}
