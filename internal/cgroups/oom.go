package cgroups

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// oomSource is where a watcher counts OOM kills.
type oomSource int

const (
	// srcV1Counter: oom_kill of memory.oom_control (Linux 4.13+); an eventfd
	// registered through cgroup.event_control wakes the watcher.
	srcV1Counter oomSource = iota
	// srcV1Events: the number of eventfd notifications (v1 kernels without
	// oom_kill), the signal the kernel sends when the cgroup is removed
	// excepted.
	srcV1Events
	// srcV2Events: oom_kill of memory.events; an inotify watch (IN_MODIFY)
	// on it wakes the watcher.
	srcV2Events
)

// The v1 kernel signals the eventfd when the cgroup runs out of memory,
// before it chooses and kills a victim, so after a wake-up that showed no new
// kill a srcV1Counter watcher looks again, after repollFirst and then twice
// as long each time, until repollTotal has passed.
const (
	repollFirst = time.Millisecond
	repollTotal = 2 * time.Second
)

// OOMWatcher watches one cgroup for OOM kills.
//
// It owns exactly one goroutine, which waits for its non-blocking eventfd
// (v1) or inotify fd (v2) in Go's netpoller (os.NewFile + SyscallConn().Read):
// a thousand containers cost a thousand small goroutines and no OS thread. A
// single goroutine shared by all watchers would need state shared by every
// Cgroup, which this API has no owner for. The goroutine ends at Close, or
// earlier once the cgroup is removed; Close waits for it.
//
// Every OOM kill that the kernel records in the cgroup after WatchOOM began
// is reported exactly once: by a call of onOOM or by a Check that returns
// true, never both (see the package doc). Call WatchOOM after `runc create`
// and before `runc start`, so that no kill in the container can precede it.
type OOMWatcher struct {
	// Set by WatchOOM and never changed: read without the lock.
	src     oomSource
	counter string          // memory.oom_control (v1) or memory.events (v2)
	file    *os.File        // the eventfd or inotify fd, non-blocking, in the netpoller
	conn    syscall.RawConn // file's
	onOOM   func()
	logger  *slog.Logger
	done    chan struct{} // closed when the goroutine has returned

	// mu guards the fields below it. It is held while the counter file is
	// read and the fd drained (short reads of kernel files that never
	// block), never while onOOM runs or while file is closed.
	mu        sync.Mutex
	closed    bool   // Close has begun: nothing is reported any more
	base      uint64 // srcV1Counter, srcV2Events: oom_kill when WatchOOM read it
	pending   uint64 // srcV1Events: notifications drained, not yet told from the removal signal
	notes     uint64 // srcV1Events: notifications that were OOMs
	watchGone bool   // srcV2Events: the kernel dropped the inotify watch (IN_IGNORED)
	reported  uint64 // OOM kills reported so far (by onOOM or Check), counted from base
}

// WatchOOM watches the cgroup's memory controller for OOM kills and calls
// onOOM, from the watcher's goroutine and without any lock held, at most once
// per kill recorded (kills seen together are reported once). onOOM must not
// call Close. Kills recorded before WatchOOM are not reported. The watcher's
// warnings go to logger.
//
// Errors: errdefs.ErrInvalidArgument for a nil onOOM, errdefs.ErrNotFound if
// the cgroup was removed, errdefs.ErrFailedPrecondition if the memory
// controller is not mounted (v1) or not enabled for the cgroup (v2).
func (c *Cgroup) WatchOOM(onOOM func(), logger *slog.Logger) (*OOMWatcher, error) {
	if onOOM == nil {
		return nil, fmt.Errorf("cgroups: WatchOOM with a nil callback: %w", errdefs.ErrInvalidArgument)
	}
	if logger == nil {
		return nil, fmt.Errorf("cgroups: WatchOOM with a nil logger: %w", errdefs.ErrInvalidArgument)
	}
	logger = logger.With("cgroup", c.path)
	if c.mode == Unified {
		return watchV2(c.v2, onOOM, logger)
	}
	dir, ok := c.v1["memory"]
	if !ok {
		return nil, fmt.Errorf("cgroups: cgroup %s: the memory controller is not mounted: %w", c.path, errdefs.ErrFailedPrecondition)
	}
	return watchV1(dir, onOOM, logger, false)
}

// missing is the error for a counter file p that is not there: the cgroup
// directory is gone, or the kernel does not offer the file.
func missing(p string) error {
	if _, err := os.Stat(filepath.Dir(p)); err != nil {
		return wrap(err, "cgroups: watch OOM")
	}
	return fmt.Errorf("cgroups: watch OOM: %s does not exist (memory controller not enabled?): %w", p, errdefs.ErrFailedPrecondition)
}

// watchV1 registers an eventfd for the OOM notifications of the v1 memory
// cgroup at dir (cgroup.event_control, Documentation/admin-guide/cgroup-v1/memory.rst).
// notifications makes it count notifications even where the kernel has the
// oom_kill counter (the tests use it to run the path of older kernels).
func watchV1(dir string, onOOM func(), logger *slog.Logger, notifications bool) (*OOMWatcher, error) {
	ctl := filepath.Join(dir, "memory.oom_control")
	kv, ok, err := readFlatKeyed(ctl)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, missing(ctl)
	}
	w := &OOMWatcher{src: srcV1Events, counter: ctl, onOOM: onOOM, logger: logger}
	if n, ok := kv["oom_kill"]; ok && !notifications {
		w.src, w.base = srcV1Counter, n
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, wrap(err, "cgroups: watch OOM: eventfd")
	}
	if err := registerEventfd(dir, ctl, efd); err != nil {
		unix.Close(efd)
		return nil, err
	}
	return w.start(os.NewFile(uintptr(efd), "oom-eventfd:"+dir))
}

// registerEventfd asks the kernel to signal efd on OOM in the memory cgroup
// dir. The kernel keeps no reference to memory.oom_control's fd, which is
// closed again; the registration lives until efd is closed or the cgroup is
// removed.
func registerEventfd(dir, ctl string, efd int) error {
	ofd, err := unix.Open(ctl, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return wrap(err, "cgroups: watch OOM: open %s", ctl)
	}
	defer unix.Close(ofd)
	p := filepath.Join(dir, "cgroup.event_control")
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return wrap(err, "cgroups: watch OOM")
	}
	_, err = f.WriteString(strconv.Itoa(efd) + " " + strconv.Itoa(ofd))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return wrap(err, "cgroups: watch OOM: register eventfd in %s", p)
	}
	return nil
}

// watchV2 watches memory.events of the v2 cgroup at dir with inotify.
func watchV2(dir string, onOOM func(), logger *slog.Logger) (*OOMWatcher, error) {
	ev := filepath.Join(dir, "memory.events")
	kv, ok, err := readFlatKeyed(ev)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, missing(ev)
	}
	w := &OOMWatcher{src: srcV2Events, counter: ev, onOOM: onOOM, logger: logger, base: kv["oom_kill"]}
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, wrap(err, "cgroups: watch OOM: inotify")
	}
	if _, err := unix.InotifyAddWatch(ifd, ev, unix.IN_MODIFY); err != nil {
		unix.Close(ifd)
		return nil, wrap(err, "cgroups: watch OOM: watch %s", ev)
	}
	return w.start(os.NewFile(uintptr(ifd), "oom-inotify:"+dir))
}

// start puts the non-blocking fd f (owned by w from now on) in the netpoller
// and starts the goroutine.
func (w *OOMWatcher) start(f *os.File) (*OOMWatcher, error) {
	conn, err := f.SyscallConn()
	if err == nil {
		// Fails if the fd did not make it into the netpoller, where
		// waiting would block an OS thread.
		err = f.SetReadDeadline(time.Time{})
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cgroups: watch OOM: %w: %w", err, errdefs.ErrInternal)
	}
	w.file, w.conn, w.done = f, conn, make(chan struct{})
	go w.run()
	return w, nil
}

// run is the watcher goroutine. It looks once at once (a kill between the
// first read of the counter and the registration has no wake-up of its
// own), then at every wake-up and, for srcV1Counter, at the re-polls.
func (w *OOMWatcher) run() {
	defer close(w.done)
	var delay, waited time.Duration // srcV1Counter: next re-poll, 0 for none; time re-polled so far
	for first := true; ; first = false {
		if !first {
			woke, err := w.wait(delay)
			if err != nil {
				if !w.isClosed() {
					w.logger.Warn("cgroups: OOM watch stopped", "error", err)
				}
				return
			}
			if w.src == srcV1Counter {
				if woke {
					delay, waited = repollFirst, 0
				} else if waited += delay; waited >= repollTotal {
					delay = 0
				} else {
					delay *= 2
				}
			}
		}
		w.mu.Lock()
		report, stop, err := w.updateLocked()
		w.mu.Unlock()
		if err != nil {
			w.logger.Warn("cgroups: read OOM counter", "file", w.counter, "error", err)
		}
		if report {
			w.onOOM()
		}
		if stop {
			return
		}
	}
}

// wait waits in the netpoller until the fd has something to read, which it
// drains, or until delay has passed (0: no limit). woke is false after a
// time-out. An error means the fd was closed or failed.
func (w *OOMWatcher) wait(delay time.Duration) (woke bool, err error) {
	var deadline time.Time
	if delay > 0 {
		deadline = time.Now().Add(delay)
	}
	if err := w.file.SetReadDeadline(deadline); err != nil {
		return false, err
	}
	var derr error
	err = w.conn.Read(func(fd uintptr) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		var got bool
		got, derr = w.drainLocked(int(fd))
		return got || derr != nil
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	if err == nil {
		err = derr
	}
	return err == nil, err
}

// drainLocked reads what the fd has without blocking: the eventfd's count
// (kept as pending for srcV1Events) or the inotify events (noting
// IN_IGNORED). got is false if there was nothing to read.
func (w *OOMWatcher) drainLocked(fd int) (got bool, err error) {
	var buf [4096]byte
	for {
		n, err := unix.Read(fd, buf[:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return got, nil
		case err != nil:
			return got, fmt.Errorf("cgroups: read OOM notification fd: %w", err)
		case n <= 0:
			return got, nil
		}
		got = true
		if w.src != srcV2Events {
			// An eventfd read returns its 8-byte count and resets it.
			if n == 8 && w.src == srcV1Events {
				w.pending += binary.NativeEndian.Uint64(buf[:8])
			}
			return got, nil
		}
		if inotifyIgnored(buf[:n]) {
			w.watchGone = true
		}
	}
}

// inotifyIgnored reports whether a buffer of inotify events holds IN_IGNORED
// (the watch was removed: the file is gone).
func inotifyIgnored(b []byte) bool {
	for len(b) >= unix.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(b[4:8])
		size := unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(b[12:16]))
		if mask&unix.IN_IGNORED != 0 {
			return true
		}
		if size > len(b) {
			break
		}
		b = b[size:]
	}
	return false
}

// updateLocked reads the kernel's count of OOM kills and reports (returns
// true and advances reported) if it is higher than what was reported. stop
// is true when nothing more can come: the cgroup is gone or Close began.
func (w *OOMWatcher) updateLocked() (report, stop bool, err error) {
	if w.closed {
		return false, true, nil
	}
	var count uint64
	switch w.src {
	case srcV1Events:
		if _, err := os.Stat(w.counter); err != nil {
			if gone(err) {
				// The last signal was (or included) the removal's.
				w.pending = 0
				return false, true, nil
			}
			return false, false, wrap(err, "cgroups: OOM counter")
		}
		w.notes += w.pending
		w.pending = 0
		count = w.notes
	default:
		kv, ok, err := readFlatKeyed(w.counter)
		if err != nil {
			return false, false, err
		}
		if !ok {
			return false, true, nil
		}
		if n := kv["oom_kill"]; n > w.base {
			count = n - w.base
		}
	}
	stop = w.watchGone
	if count > w.reported {
		w.reported = count
		return true, stop, nil
	}
	return false, stop, nil
}

// isClosed reports whether Close has begun.
func (w *OOMWatcher) isClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

// Check reports (and consumes) an OOM kill recorded since the last Check or
// notification, without blocking; the caller calls it at exit time so that
// TaskOOM precedes TaskExit.
//
// It reads the kernel's counter itself, so a kill is seen even if the
// watcher goroutine has not woken up yet; the kill is then not reported to
// onOOM again. Call it before the cgroup is removed (before `runc delete`):
// a removed cgroup has no counter left, and Check returns false. After Close,
// Check returns false.
func (w *OOMWatcher) Check() bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	var derr error
	if w.src == srcV1Events {
		// The notifications are the count: take those not yet drained.
		if err := w.conn.Control(func(fd uintptr) { _, derr = w.drainLocked(int(fd)) }); err != nil {
			derr = err
		}
	}
	report, _, err := w.updateLocked()
	w.mu.Unlock()
	if err = errors.Join(derr, err); err != nil {
		w.logger.Warn("cgroups: OOM check", "file", w.counter, "error", err)
	}
	return report
}

// Close stops watching: it closes the fd (which ends the kernel's
// registration), stops the goroutine and waits for it, including an onOOM
// call in progress. No onOOM call starts after Close has begun. Close is
// idempotent; later calls wait for the goroutine too and return nil. It must
// not be called from onOOM.
func (w *OOMWatcher) Close() error {
	w.mu.Lock()
	already := w.closed
	w.closed = true
	w.mu.Unlock()
	if already {
		<-w.done
		return nil
	}
	err := w.file.Close()
	<-w.done
	if err != nil {
		return fmt.Errorf("cgroups: close OOM watcher: %w: %w", err, errdefs.ErrInternal)
	}
	return nil
}
