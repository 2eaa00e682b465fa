package container

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/runtime"
)

// initKind is the kind of a container's init process: the runtime starts,
// signals and deletes it as the container, and its exit ends the container.
type initKind struct {
	c *Container
}

func (initKind) lifecycle() *lifecycle { return &initLifecycle }

// start runs the runtime's start (or restore) and publishes TaskStart.
func (k initKind) start(ctx context.Context, p *Process) (int, error) {
	c := k.c
	if err := p.transition(OpStart); err != nil {
		return 0, fmt.Errorf("start %s: %w", c.id, err)
	}
	p.outbox.ExpectStart()
	if err := c.startInit(ctx); err != nil {
		p.outbox.AbortStart()
		p.settle(OpStartFailed)
		return 0, fmt.Errorf("start %s: %w", c.id, err)
	}
	p.settle(OpStarted)
	pid := p.Pid()
	p.outbox.Started(events.TopicStart, &eventsapi.TaskStart{ContainerID: c.id, Pid: uint32(pid)})
	return pid, nil
}

// kill signals the init, or with all every process of the container,
// through the runtime.
func (k initKind) kill(ctx context.Context, p *Process, signal uint32, all bool) error {
	c := k.c
	if err := p.transition(OpKill); err != nil {
		return fmt.Errorf("kill %s: %w", c.id, err)
	}
	err := c.rt.Kill(ctx, c.id, signal, all)
	if err == nil {
		return nil
	}
	if runtime.IsNotFound(err) || errors.Is(err, errdefs.ErrFailedPrecondition) {
		// The runtime saw the container stop before we collected the exit.
		return fmt.Errorf("kill %s: process already finished (%s): %w", c.id, err.Error(), errdefs.ErrNotFound)
	}
	return fmt.Errorf("kill %s: %w", c.id, err)
}

// delete deletes the container: the runtime's state, the stdio and the
// rootfs mounts, then publishes TaskDelete. A delete that fails leaves the
// container as it was (see Process.abortDelete) for another try.
func (k initKind) delete(ctx context.Context, p *Process) (Status, error) {
	c := k.c
	if err := p.transition(OpDelete); err != nil {
		return Status{}, fmt.Errorf("delete %s: %w", c.id, err)
	}
	if err := c.rt.Delete(ctx, c.id, true); err != nil {
		p.abortDelete()
		return Status{}, fmt.Errorf("delete %s: %w", c.id, err)
	}
	// A created container's init was just killed by the forced delete; wait
	// for its exit so that TaskExit comes before TaskDelete. A container
	// created from a checkpoint and never started has no init to wait for.
	if pid := p.Pid(); pid != 0 {
		select {
		case <-p.done:
		case <-time.After(deleteWaitTimeout):
			c.deps.Logger.Warn("delete: init exit not collected", "id", c.id, "pid", pid)
		}
	}
	if pipes := p.getPipes(); pipes != nil {
		pipes.Close()
	}
	if err := UnmountRootfs(c.bundle); err != nil {
		p.abortDelete()
		return Status{}, fmt.Errorf("delete %s: %w", c.id, err)
	}
	if err := c.bundle.MarkDeleted(); err != nil {
		// Only an optimisation is lost: `delete` then asks the runtime.
		c.deps.Logger.Warn("delete: mark bundle", "id", c.id, "error", err)
	}
	p.settle(OpDeleted)
	st := p.Status()
	p.outbox.Send(events.TopicDelete, &eventsapi.TaskDelete{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         uint32(st.Pid),
		ExitStatus:  st.ExitStatus,
		ExitedAt:    timestamppb.New(st.ExitedAt),
	})
	return st, nil
}

// reaped runs on the init's watcher goroutine as soon as the init's exit is
// collected, before its output drains: it looks for the OOM kill that may
// have caused the exit while the cgroup most likely still exists (systemd
// removes an empty scope at once), and publishes TaskOOM, which thus
// precedes TaskExit. Where the cgroup is gone already, an OOM kill may be
// inferred (cgroups.OOMWatcher.CheckExit). Then, in a shared pid namespace,
// it kills what the init left behind.
func (k initKind) reaped(e exits.Exit) {
	c := k.c
	c.mu.Lock()
	oom := c.oom
	c.mu.Unlock()
	if oom != nil {
		if report, _ := oom.CheckExit(e.Status == 128+int(syscall.SIGKILL)); report {
			c.publishOOM()
		}
	}
	if c.sharedPidNS {
		c.killLeftovers()
	}
}

// exiting runs on the init's watcher goroutine once the exit is recorded
// (the init is Exiting, so watchCgroup no longer installs an OOM watch),
// before its TaskExit is handed on: it closes the OOM watch and waits for
// the execs' exits to be published first (in a shared pid namespace,
// killLeftovers has already killed what the init left behind).
func (k initKind) exiting() {
	c := k.c
	c.mu.Lock()
	oom := c.oom
	c.mu.Unlock()
	if oom != nil {
		// An OOM kill since reaped's check (of a process the init left
		// behind in a shared pid namespace) is published before the exit
		// too.
		if oom.Check() {
			c.publishOOM()
		}
		if err := oom.Close(); err != nil {
			c.deps.Logger.Warn("close OOM watch", "id", c.id, "error", err)
		}
	}
	c.awaitExecs()
}

func (initKind) exited() {}

// killLeftovers runs on the init's watcher goroutine as soon as the init's
// exit is collected, in a shared pid namespace only: it kills every process
// the init left behind (no pid namespace goes away to kill them), before the
// init's output drains. They are what holds that output open: killed
// later, they would keep the drain waiting for its timeout, and the
// container's stop with it.
func (c *Container) killLeftovers() {
	if err := c.rt.Kill(context.Background(), c.id, uint32(syscall.SIGKILL), true); err != nil && !runtime.IsNotFound(err) {
		c.deps.Logger.Warn("kill the processes the init left", "id", c.id, "error", err)
	}
}

// Pids lists the pids of the container's processes. Until the container
// is deleted the list is never empty once it has an init: after the init
// has exited it is the init's pid alone, without asking the runtime, and
// so it is while the exit is being collected (the runtime already finds
// no process then). containerd 2.x, when it restarts, deletes the task of
// any shim whose Pids is empty as a leaked shim, and with it the exit
// status that no client has collected yet.
func (c *Container) Pids(ctx context.Context) ([]int, error) {
	initPid := c.init.Pid()
	if c.init.Exited() {
		return []int{initPid}, nil
	}
	pids, err := c.rt.Ps(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("pids %s: %w", c.id, err)
	}
	if len(pids) == 0 && initPid != 0 {
		return []int{initPid}, nil
	}
	return pids, nil
}
