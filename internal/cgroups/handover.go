package cgroups

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/errdefs"
)

// The OOMHanded sources: how the watcher counts kills (see oomSource).
const (
	handedV1Counter = "v1-counter" // oom_kill of memory.oom_control
	handedV1Events  = "v1-events"  // eventfd notifications (kernels before 4.13)
	handedV2Events  = "v2-events"  // oom_kill of memory.events
)

// OOMHanded describes an OOMWatcher across a live upgrade: what it counted,
// so that the new image reports every kill once, none twice. JSON. No
// descriptor is passed: the new image registers its own eventfd (v1) or
// epoll and inotify (v2), and the kernel's counter tells which kills it has
// to report.
type OOMHanded struct {
	// Source is "v1-counter", "v1-events" or "v2-events".
	Source string `json:"source"`
	// Counted (v1-counter, v2-events) is the value of the cgroup's
	// oom_kill counter up to which every kill was reported (the base the
	// watcher started from plus what it reported): a kill above it is the
	// new image's to report. 0 for v1-events.
	Counted uint64 `json:"counted"`
	// Pending (v1-events) is the number of OOM notifications the old
	// watcher took from its eventfd, up to the hand-over, and did not
	// report. 0 for the counters.
	Pending uint64 `json:"pending"`
}

// Validate checks an OOMHanded read back from a state document.
func (h OOMHanded) Validate() error {
	switch h.Source {
	case handedV1Counter, handedV2Events:
		if h.Pending != 0 {
			return fmt.Errorf("cgroups: handed OOM watch: %s with pending notifications %d: %w", h.Source, h.Pending, errdefs.ErrInvalidArgument)
		}
	case handedV1Events:
		if h.Counted != 0 {
			return fmt.Errorf("cgroups: handed OOM watch: %s with a counter %d: %w", h.Source, h.Counted, errdefs.ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("cgroups: handed OOM watch: unknown source %q: %w", h.Source, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Pause stops the watcher from reporting, bounded by ctx: a kill from now
// on is left for the new image. Unpause undoes it.
//
// From Pause on no onOOM call starts and Check and CheckExit answer false;
// Pause returns once an onOOM call under way has returned. If ctx ends
// first, Pause unpauses the watcher again and returns an error wrapping
// ctx's. A closed watcher cannot be paused.
func (w *OOMWatcher) Pause(ctx context.Context) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return fmt.Errorf("cgroups: pause OOM watch %s: closed: %w", w.counter, errdefs.ErrFailedPrecondition)
	}
	w.paused = true
	if w.reporting && w.idle == nil {
		w.idle = make(chan struct{})
	}
	idle := w.idle
	w.mu.Unlock()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		w.Unpause()
		return fmt.Errorf("cgroups: pause OOM watch %s: onOOM still running: %w", w.counter, ctx.Err())
	}
}

// Unpause resumes reporting after a failed hand-over: the goroutine looks
// at the counter again at once, so a kill recorded while paused is
// reported (once). It does nothing on a watcher that is not paused.
func (w *OOMWatcher) Unpause() {
	w.mu.Lock()
	if !w.paused {
		w.mu.Unlock()
		return
	}
	w.paused = false
	w.kicked = true
	w.mu.Unlock()
	// Wakes the goroutine if it waits; it fails harmlessly once Close
	// closed the file.
	_ = w.file.SetReadDeadline(time.Unix(1, 0))
}

// takeKick reports and clears an Unpause's request to look again.
func (w *OOMWatcher) takeKick() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := w.kicked
	w.kicked = false
	return k
}

// afterKick is wait's answer to Unpause: a wake-up (which starts the
// re-polls), after a srcV1Events watcher took the notifications it left in
// its eventfd while paused.
func (w *OOMWatcher) afterKick() (bool, error) {
	if w.src != srcV1Events {
		return true, nil
	}
	var derr error
	if err := w.conn.Control(func(fd uintptr) {
		w.mu.Lock()
		defer w.mu.Unlock()
		_, derr = w.drainLocked(int(fd))
	}); err != nil {
		return false, err
	}
	return derr == nil, derr
}

// HandOver, on a paused watcher, returns its description. The watcher
// is unchanged (after a failed hand-over, Unpause and it goes on); a
// v1-events watcher takes the notifications waiting in its eventfd into
// what it hands over (its own count: Unpause reports them too).
//
// v1-events has no counter in the kernel: a notification that comes after
// HandOver, before the new image registered its eventfd, is lost (only on
// kernels before 4.13, which have no oom_kill in memory.oom_control).
func (w *OOMWatcher) HandOver() (OOMHanded, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return OOMHanded{}, fmt.Errorf("cgroups: hand over OOM watch %s: closed: %w", w.counter, errdefs.ErrFailedPrecondition)
	}
	if !w.paused {
		return OOMHanded{}, fmt.Errorf("cgroups: hand over OOM watch %s: not paused: %w", w.counter, errdefs.ErrFailedPrecondition)
	}
	switch w.src {
	case srcV1Counter:
		return OOMHanded{Source: handedV1Counter, Counted: w.base + w.reported}, nil
	case srcV2Events:
		return OOMHanded{Source: handedV2Events, Counted: w.base + w.reported}, nil
	}
	var derr error
	if err := w.conn.Control(func(fd uintptr) { _, derr = w.drainLocked(int(fd)) }); err != nil {
		derr = err
	}
	if derr != nil {
		return OOMHanded{}, fmt.Errorf("cgroups: hand over OOM watch %s: %w", w.counter, derr)
	}
	return OOMHanded{Source: handedV1Events, Pending: w.pending + w.notes - w.reported}, nil
}

// continueFrom makes a new watcher, before its goroutine starts, continue
// from what h (if not nil) says the old one counted: a kill recorded after
// the old watcher's last report is reported (once), none before. The
// source must be the one the kernel gives the new watcher.
func (w *OOMWatcher) continueFrom(h *OOMHanded) error {
	if h == nil {
		return nil
	}
	want := map[oomSource]string{srcV1Counter: handedV1Counter, srcV1Events: handedV1Events, srcV2Events: handedV2Events}[w.src]
	if h.Source != want {
		return fmt.Errorf("cgroups: adopt OOM watch %s: handed source %q, the kernel gives %q: %w", w.counter, h.Source, want, errdefs.ErrFailedPrecondition)
	}
	switch w.src {
	case srcV1Events:
		w.pending = h.Pending
	default:
		if h.Counted > w.base {
			// The counter only grows: the cgroup is another one.
			w.logger.Warn("cgroups: handed OOM count above the kernel's; counting from the kernel's", "handed", h.Counted, "oom_kill", w.base)
			break
		}
		w.base = h.Counted
	}
	return nil
}

// AdoptOOM watches c again, in the image a live upgrade started, from where
// the watcher h describes stopped: it is WatchOOM (same errors, same
// contract), except that every kill recorded after the old watcher's last
// report (during the hand-over included) is reported once, by onOOM or
// Check, and none before. Call it before the container's init can be
// checked (CheckExit), i.e. before its Reaper.Watch. A handed description
// that does not Validate, or whose source is not the one the kernel gives
// (another cgroup version), is an error.
func (c *Cgroup) AdoptOOM(h OOMHanded, onOOM func(), logger *slog.Logger) (*OOMWatcher, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	if onOOM == nil {
		return nil, fmt.Errorf("cgroups: AdoptOOM with a nil callback: %w", errdefs.ErrInvalidArgument)
	}
	if logger == nil {
		return nil, fmt.Errorf("cgroups: AdoptOOM with a nil logger: %w", errdefs.ErrInvalidArgument)
	}
	logger = logger.With("cgroup", c.path)
	if c.mode == Unified {
		return watchV2(c.v2, onOOM, logger, &h)
	}
	dir, ok := c.v1["memory"]
	if !ok {
		return nil, fmt.Errorf("cgroups: cgroup %s: the memory controller is not mounted: %w", c.path, errdefs.ErrFailedPrecondition)
	}
	return watchV1(dir, onOOM, logger, h.Source == handedV1Events, &h)
}
