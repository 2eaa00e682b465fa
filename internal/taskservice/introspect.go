package taskservice

import (
	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/container"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/runtime"
)

// Containers reports every container for `tether inspect`: the service is
// the shim's introspect.Source. It reads the table under mu, then each
// container through its own accessors (never a runtime command), and the
// runtime each one uses from its bundle (runtime.LoadConfig).
func (s *Service) Containers() []introspect.Container {
	s.mu.Lock()
	cs := make([]*container.Container, 0, len(s.containers))
	for _, c := range s.containers {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	out := make([]introspect.Container, 0, len(cs))
	for _, c := range cs {
		out = append(out, s.describe(c))
	}
	return out
}

// describe is one container's entry.
func (s *Service) describe(c *container.Container) introspect.Container {
	init := describeProcess(c.Init())
	ic := introspect.Container{
		ID:        c.ID(),
		Bundle:    c.Bundle(),
		Status:    init.Status,
		Pid:       init.Pid,
		Cgroup:    c.CgroupPath(),
		Processes: []introspect.Process{init},
	}
	if cfg, err := runtime.LoadConfig(bundle.New(c.Bundle()).RuntimeConfig(), s.cfg.Namespace); err == nil {
		ic.Runtime = introspect.Runtime{Binary: cfg.Binary, Root: cfg.Root, SystemdCgroup: cfg.SystemdCgroup}
	}
	for _, p := range c.Execs() {
		ic.Processes = append(ic.Processes, describeProcess(p))
	}
	return ic
}

// describeProcess is one process's entry.
func describeProcess(p *container.Process) introspect.Process {
	st := p.Status()
	io := p.StdioStats()
	ip := introspect.Process{
		ID:     p.ID(),
		ExecID: p.ExecID(),
		Pid:    st.Pid,
		Status: st.State.String(),
		Stdio: introspect.Stdio{
			Mode:     introspect.StdioMode(st.Stdio.Stdin, st.Stdio.Stdout, st.Stdio.Stderr, st.Stdio.Terminal),
			Stdin:    st.Stdio.Stdin,
			Stdout:   st.Stdio.Stdout,
			Stderr:   st.Stdio.Stderr,
			Terminal: st.Stdio.Terminal,
			OutBytes: io.OutBytes,
			Drops:    io.Drops,
		},
	}
	if p.Exited() {
		code, at := st.ExitStatus, st.ExitedAt
		ip.ExitStatus, ip.ExitedAt = &code, &at
	}
	return ip
}
