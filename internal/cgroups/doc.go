// Package cgroups reads a container's cgroup: its metrics for the Stats call
// and the OOM kills of its memory cgroup for TaskOOM.
//
// It reads the cgroup files itself and fills the generated protobuf types of
// github.com/containerd/cgroups/v3 (cgroup1/stats and cgroup2/stats) only: the
// cgroup1 and cgroup2 manager packages of that module would link godbus,
// go-systemd and (cgroup2) cilium/ebpf into the shim, and cgroup2 does not
// build against the slog stand-in that go.mod puts in place of
// github.com/containerd/log (it uses log.L). The stats packages need only
// google.golang.org/protobuf.
//
// Invariants:
//
//   - Layout. HostMode is asked of the kernel (statfs) on every call; nothing
//     is cached at package level. A Cgroup uses the v1 hierarchies on Legacy
//     and Hybrid hosts (as containerd does) and the unified hierarchy on
//     Unified hosts.
//   - Cgroup. A *Cgroup is immutable once Load returned it, so it is safe for
//     concurrent use without a lock. It names directories, not a process: it
//     stays valid after the process exits, until the cgroup is removed, after
//     which Stats and WatchOOM return an error of class errdefs.ErrNotFound.
//   - Stats never executes a program and never blocks on anything but reads of
//     cgroup files (kernfs: no I/O). A file the kernel does not offer (swap
//     accounting off, no hugetlb, an old kernel) leaves its fields zero.
//   - OOM source of truth. A watcher counts OOM kills with the kernel's own
//     counter: oom_kill of memory.oom_control (v1) or of memory.events (v2).
//     The kernel raises it before it sends SIGKILL to the victim, so when the
//     caller has seen a process die of an OOM kill, Check reads a counter
//     that already includes it. The eventfd (v1) and, on v2, the poll
//     wake-ups of memory.events and cgroup.events and an inotify watch only
//     wake the watcher up. The v1 eventfd is signalled when the cgroup hits
//     OOM, before the victim is chosen and counted, and the v2 kernel holds
//     back a notification that follows another within 20 ms, so after a
//     wake-up without a new kill the watcher reads the counter again after
//     1 ms, then after twice as long each time, for 2 s. On v1 kernels
//     older than 4.13, which have no oom_kill counter, the count of eventfd
//     notifications is used instead (the removal of the cgroup also signals
//     the eventfd; that is not counted).
//   - Inference. The one exception to the counter of the cgroup itself:
//     CheckExit, at the init's exit, reports a kill that the parent's
//     hierarchical counter shows when the v2 cgroup is already removed, the
//     init died of SIGKILL and the watcher saw the cgroup reach its limit
//     (see CheckExit and docs/design.md for the misattribution it risks).
//   - Exactly once. The watcher's mutex guards the count already reported.
//     onOOM (from the watcher goroutine) and Check/CheckExit each compare the counter
//     with it and advance it in one critical section, so one OOM kill is
//     reported by exactly one of them, and never twice. Several kills seen at
//     once are reported once.
//   - Hand-over (live upgrade, handover.go). From Pause until Unpause a
//     watcher reports nothing (no onOOM, Check answers false); Pause
//     returns once an onOOM under way has returned. HandOver describes
//     what it counted (the counter value up to which every kill was
//     reported, or the v1 notifications not reported); AdoptOOM in the new
//     image registers anew and reports every kill above that once. No
//     descriptor is passed: the kernel's counter is the truth. Exception:
//     v1 kernels without oom_kill (before 4.13) lose a notification that
//     comes between HandOver and AdoptOOM's registration.
//   - Goroutines. A watcher owns at most one goroutine, which waits in Go's
//     netpoller (no OS thread blocked per container). Close stops it and
//     waits for it; no onOOM call starts after Close has begun.
//   - Errors carry an errdefs class (wrapped with %w next to the cause):
//     ErrNotFound for a process or cgroup that is gone, ErrInvalidArgument,
//     ErrPermissionDenied, ErrFailedPrecondition (the controller is not
//     there), ErrInternal (a kernel file in an unexpected format).
package cgroups
