package cgroups

// Path returns the cgroup's path (the memory hierarchy's on v1), as
// /proc/<pid>/cgroup names it.
func (c *Cgroup) Path() string { return c.path }
