package container

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/cgroups"
	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/handover"
	"github.com/tether-shim/tether/internal/runtime"
	"github.com/tether-shim/tether/internal/stdio"
)

// Handed describes a Container across a live upgrade (docs/design.md, "Live
// upgrade"): its immutable configuration, its processes, its cgroup and OOM
// watch. It is JSON, written by one build and read by another: AdoptContainer
// validates it.
type Handed struct {
	ID          string `json:"id"`
	Bundle      string `json:"bundle"`
	SharedPidNS bool   `json:"shared_pid_ns,omitempty"`
	IoUID       int    `json:"io_uid,omitempty"`
	IoGID       int    `json:"io_gid,omitempty"`
	// Init is the init process; Execs the exec processes, by id.
	Init  ProcessHanded   `json:"init"`
	Execs []ProcessHanded `json:"execs,omitempty"`
	// Cgroup is the init's cgroup, nil if it was not found.
	Cgroup *cgroups.CgroupHanded `json:"cgroup,omitempty"`
	// OOM is the OOM watch, nil if there is none (no cgroup, or the init
	// exited).
	OOM *cgroups.OOMHanded `json:"oom,omitempty"`
}

// ProcessHanded describes a Process across a live upgrade.
type ProcessHanded struct {
	// ID is the exec id; empty for the init.
	ID string `json:"id,omitempty"`
	// Spec is an exec's process spec.
	Spec  *specs.Process `json:"spec,omitempty"`
	State string         `json:"state"`
	Pid   int            `json:"pid,omitempty"`
	// Exit is the recorded exit, nil before it.
	Exit   *ExitHanded         `json:"exit,omitempty"`
	Stdio  stdio.Config        `json:"stdio"`
	IO     *stdio.Handed       `json:"io,omitempty"`
	Outbox events.OutboxHanded `json:"outbox"`
}

// ExitHanded is a recorded exit.
type ExitHanded struct {
	Pid    int       `json:"pid"`
	Status int       `json:"status"`
	At     time.Time `json:"at"`
}

// handedState returns the state named name if a process can be handed over
// in it: after the quiesce no request is under way (no Starting, no
// Deleting) and no exit is being handled (no Exiting).
func handedState(name string) (State, bool) {
	for _, st := range []State{Created, StartFailed, Running, Paused, Stopped} {
		if st.String() == name {
			return st, true
		}
	}
	return 0, false
}

// ErrNotQuiescent is returned (wrapped) by HandOver for a container with an
// operation or an exit under way.
var ErrNotQuiescent = errors.New("not quiescent")

// Quiesce parks the container's OOM watch and the stdio copies of its
// processes, bounded by ctx; Unquiesce undoes it. Call it once the
// requests are answered and the exits monitor is paused (exits.Reaper.Pause),
// so that nothing changes the container meanwhile. On error the parts
// already parked are resumed.
func (c *Container) Quiesce(ctx context.Context) error {
	oom := c.liveOOM()
	var undo undo
	if oom != nil {
		if err := oom.Pause(ctx); err != nil {
			return fmt.Errorf("container %s: OOM watch: %w", c.id, err)
		}
		undo.push(oom.Unpause)
	}
	for _, p := range c.processes() {
		if pipes := p.getPipes(); pipes != nil {
			if err := pipes.Pause(ctx); err != nil {
				undo.run()
				return fmt.Errorf("container %s, process %s: stdio: %w", c.id, p.id, err)
			}
			undo.push(pipes.Unpause)
		}
	}
	return nil
}

// Unquiesce resumes what Quiesce parked, after a failed hand-over.
func (c *Container) Unquiesce() {
	for _, p := range c.processes() {
		if pipes := p.getPipes(); pipes != nil {
			pipes.Unpause()
		}
	}
	if oom := c.liveOOM(); oom != nil {
		oom.Unpause()
	}
}

// liveOOM returns the OOM watch while the init has not exited: the init's
// exit closes it (initKind.exiting), and a closed watch has nothing to
// pause or hand over.
func (c *Container) liveOOM() *cgroups.OOMWatcher {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.init.mu.Lock()
	exited := c.init.exitRecordedLocked()
	c.init.mu.Unlock()
	if exited {
		return nil
	}
	return c.oom
}

// processes returns the init and the execs.
func (c *Container) processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Process, 0, len(c.execs)+1)
	out = append(out, c.init)
	for _, p := range c.execs {
		out = append(out, p)
	}
	return out
}

// HandOver describes a quiesced container, duplicating its descriptors into
// files. It changes nothing: the old image may go on if the hand-over
// fails. A container restored from a checkpoint and not yet started, or
// with a process in a transient state, is ErrNotQuiescent.
func (c *Container) HandOver(files *handover.Files) (Handed, error) {
	h := Handed{ID: c.id, Bundle: c.bundle.Dir(), SharedPidNS: c.sharedPidNS, IoUID: c.ioUID, IoGID: c.ioGID}
	if c.restore != nil && c.init.Status().State == Created {
		return Handed{}, fmt.Errorf("container %s is restored from a checkpoint and not yet started: %w", c.id, ErrNotQuiescent)
	}
	oom := c.liveOOM()
	c.mu.Lock()
	cg := c.cgroup
	execs := make([]*Process, 0, len(c.execs))
	for _, p := range c.execs {
		execs = append(execs, p)
	}
	c.mu.Unlock()
	var err error
	if h.Init, err = c.init.handOver(files); err != nil {
		return Handed{}, fmt.Errorf("container %s: %w", c.id, err)
	}
	for _, p := range execs {
		ph, err := p.handOver(files)
		if err != nil {
			return Handed{}, fmt.Errorf("container %s, exec %s: %w", c.id, p.id, err)
		}
		h.Execs = append(h.Execs, ph)
	}
	if cg != nil {
		ch := cg.HandOver()
		h.Cgroup = &ch
	}
	if oom != nil {
		oh, err := oom.HandOver()
		if err != nil {
			return Handed{}, fmt.Errorf("container %s: OOM watch: %w", c.id, err)
		}
		h.OOM = &oh
	}
	return h, nil
}

// handOver describes the process.
func (p *Process) handOver(files *handover.Files) (ProcessHanded, error) {
	p.mu.Lock()
	st, pid, exit, pipes := p.state, p.pid, p.exit, p.pipes
	p.mu.Unlock()
	if _, ok := handedState(st.String()); !ok {
		return ProcessHanded{}, fmt.Errorf("process %s is %s: %w", p.id, st, ErrNotQuiescent)
	}
	h := ProcessHanded{State: st.String(), Pid: pid, Stdio: p.stdioCfg}
	if k, ok := p.kind.(*execKind); ok {
		h.ID = k.execID
		spec := k.spec
		h.Spec = &spec
	}
	if st == Stopped {
		h.Exit = &ExitHanded{Pid: exit.Pid, Status: exit.Status, At: exit.At}
	}
	if pipes != nil {
		ioh, err := pipes.HandOver(files)
		if err != nil {
			return ProcessHanded{}, fmt.Errorf("process %s: stdio: %w", p.id, err)
		}
		h.IO = &ioh
	}
	oh, err := p.outbox.HandOver()
	if err != nil {
		return ProcessHanded{}, fmt.Errorf("process %s: events: %w", p.id, err)
	}
	h.Outbox = oh
	return h, nil
}

// AdoptContainer rebuilds, in the image a live upgrade started, the
// container h describes: its runtime from the configuration recorded in the
// bundle, its processes with their stdio and outboxes, and a watch of every
// process that has not exited (deps.Monitor must have adopted the old
// image's pidfds: exits.Reaper.Adopt). parent, if not empty, is the
// directory every bundle must be in. On error nothing it started is left
// running (the stdio it adopted is closed); the processes themselves are
// untouched.
func AdoptContainer(ctx context.Context, h Handed, parent string, deps Deps) (_ *Container, retErr error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	if err := ValidateBundle(h.ID, h.Bundle, parent); err != nil {
		return nil, err
	}
	b := bundle.New(h.Bundle)
	rc, err := runtime.LoadConfig(b.RuntimeConfig(), deps.Namespace)
	if err != nil {
		// What Create recorded is gone or damaged; the container is not
		// lost for it (nor would it be by a shim restarted by `delete`):
		// the runtime's defaults serve, as LoadConfig returns them.
		deps.Logger.Warn("adopt: runtime configuration unreadable; using the defaults", "id", h.ID, "error", err)
	}
	c := &Container{
		id:          h.ID,
		bundle:      b,
		rt:          runtime.New(rc, deps.Monitor),
		deps:        deps,
		execs:       make(map[string]*Process),
		ioUID:       h.IoUID,
		ioGID:       h.IoGID,
		sharedPidNS: h.SharedPidNS,
	}
	var cleanup undo
	defer func() {
		if retErr != nil {
			cleanup.run()
		}
	}()
	if c.init, err = c.adoptProcess(ctx, h.Init, initKind{c}, &cleanup); err != nil {
		return nil, err
	}
	watch := []*Process{c.init}
	for _, eh := range h.Execs {
		k := &execKind{c: c, execID: eh.ID, spec: *eh.Spec, startResolved: make(chan struct{})}
		p, err := c.adoptProcess(ctx, eh, k, &cleanup)
		if err != nil {
			return nil, err
		}
		switch st := p.Status().State; st {
		case Created:
			// Its Start resolves it.
		case Running:
			close(k.startResolved)
			c.execStarting()
		default:
			close(k.startResolved)
		}
		c.execs[eh.ID] = p
		watch = append(watch, p)
	}
	if h.Cgroup != nil {
		if c.cgroup, err = cgroups.AdoptCgroup(*h.Cgroup); err != nil {
			return nil, fmt.Errorf("adopt %s: %w", h.ID, err)
		}
	}
	if h.OOM != nil {
		if c.oom, err = c.cgroup.AdoptOOM(*h.OOM, c.publishOOM, deps.Logger.With("id", c.id)); err != nil {
			// As at Create: the container keeps running without OOM
			// events rather than being lost.
			deps.Logger.Warn("no OOM watch after the upgrade", "id", c.id, "error", err)
		} else {
			oom := c.oom
			cleanup.push(func() { _ = oom.Close() })
		}
	}
	// Last, once nothing else can fail: an exit collected from here on
	// finds the container complete. Every process with a pid and no exit is
	// watched: a created init, a running or paused one, a running exec.
	for _, p := range watch {
		if p.Exited() || p.Pid() == 0 {
			continue
		}
		if err := deps.Monitor.Watch(p.Pid(), p.onExit); err != nil {
			// Watches made before it are bound to this container: it is
			// adopted all the same, and this one process's exit will not
			// be reported (a pid that is no longer the shim's child).
			deps.Logger.Error("adopt: process not watched; its exit will not be reported", "id", h.ID, "process", p.id, "pid", p.Pid(), "error", err)
		}
	}
	return c, nil
}

// adoptProcess rebuilds one process of c from h, which Validate checked.
func (c *Container) adoptProcess(ctx context.Context, h ProcessHanded, k kind, cleanup *undo) (*Process, error) {
	id := c.id
	if h.ID != "" {
		id = h.ID
	}
	st, _ := handedState(h.State)
	logger := c.deps.Logger.With("id", c.id)
	if h.ID != "" {
		logger = logger.With("exec", h.ID)
	}
	ob, err := events.AdoptOutbox(c.deps.Events, logger, h.Outbox)
	if err != nil {
		return nil, fmt.Errorf("adopt %s, process %s: %w", c.id, id, err)
	}
	p := &Process{
		containerID: c.id,
		id:          id,
		kind:        k,
		stdioCfg:    h.Stdio,
		outbox:      ob,
		done:        make(chan struct{}),
		state:       st,
		pid:         h.Pid,
	}
	if h.Exit != nil {
		p.exit = exits.Exit{Pid: h.Exit.Pid, Status: h.Exit.Status, At: h.Exit.At}
		close(p.done)
	}
	if h.IO != nil {
		pipes, err := stdio.Adopt(ctx, *h.IO, c.stdioOptions())
		if err != nil {
			return nil, fmt.Errorf("adopt %s, process %s: stdio: %w", c.id, id, err)
		}
		cleanup.push(func() { pipes.Close() })
		p.pipes = pipes
	}
	return p, nil
}

// Validate checks what a description promises, without touching anything:
// valid container and exec ids, an absolute clean bundle path named after
// the container, states a process can be handed over in, pids and exits
// that agree with them, exec specs, stdio paths, an OOM watch only with a
// cgroup. Errors are errdefs.ErrInvalidArgument. The second dry run of a
// live upgrade runs it in the new binary (bootstrap.CheckShimState).
func (h Handed) Validate() error {
	if err := ValidateID("container", h.ID); err != nil {
		return err
	}
	if err := ValidateBundle(h.ID, h.Bundle, ""); err != nil {
		return err
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("handed-over container %s: %s: %w", h.ID, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	if h.IoUID < 0 || h.IoGID < 0 {
		return bad("io uid/gid %d/%d", h.IoUID, h.IoGID)
	}
	if h.Init.ID != "" || h.Init.Spec != nil {
		return bad("the init has an exec id or spec")
	}
	if err := h.Init.validate(true); err != nil {
		return bad("init: %v", err)
	}
	seen := make(map[string]bool, len(h.Execs))
	for _, e := range h.Execs {
		if err := ValidateID("exec", e.ID); err != nil {
			return bad("%v", err)
		}
		if seen[e.ID] {
			return bad("exec %s twice", e.ID)
		}
		seen[e.ID] = true
		if e.Spec == nil || len(e.Spec.Args) == 0 {
			return bad("exec %s has no process spec", e.ID)
		}
		if err := e.validate(false); err != nil {
			return bad("exec %s: %v", e.ID, err)
		}
	}
	if h.OOM != nil && h.Cgroup == nil {
		return bad("an OOM watch without a cgroup")
	}
	return nil
}

// validate checks a process's state, pid, exit and stdio paths.
func (h ProcessHanded) validate(isInit bool) error {
	st, ok := handedState(h.State)
	if !ok {
		return fmt.Errorf("state %q cannot be handed over", h.State)
	}
	live := st == Running || st == Paused || (st == Created && isInit)
	switch {
	case h.Pid < 0, live && h.Pid == 0:
		return fmt.Errorf("%s with pid %d", st, h.Pid)
	case (st == Stopped) != (h.Exit != nil):
		return fmt.Errorf("%s with exit %v", st, h.Exit)
	case !isInit && st == Paused:
		return errors.New("a paused exec")
	}
	if err := h.Outbox.Validate(); err != nil {
		return err
	}
	return h.Stdio.Validate()
}
