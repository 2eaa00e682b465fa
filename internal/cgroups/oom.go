package cgroups

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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
	// srcV2Events: oom_kill of memory.events, read through an fd kept open;
	// the kernel's poll wake-up of that fd (EPOLLPRI) and an inotify watch
	// (IN_MODIFY, IN_IGNORED) on it wake the watcher.
	srcV2Events
)

// The v1 kernel signals the eventfd when the cgroup runs out of memory,
// before it chooses and kills a victim; the v2 kernel notifies memory.events
// first for "max" (the limit was hit), and a notification that follows
// within 20 ms of another (CGROUP_FILE_NOTIFY_MIN_INTV), such as the one for
// oom_kill, waits on a timer that the removal of the cgroup cancels. So
// after a wake-up that showed no new kill a srcV1Counter or srcV2Events
// watcher looks again, after repollFirst and then twice as long each time,
// until repollTotal has passed.
const (
	repollFirst = time.Millisecond
	repollTotal = 2 * time.Second
)

// OOMWatcher watches one cgroup for OOM kills.
//
// It owns exactly one goroutine, which waits for its non-blocking eventfd
// (v1) or epoll fd (v2: memory.events for EPOLLPRI and an inotify fd) in
// Go's netpoller (os.NewFile + SyscallConn().Read):
// a thousand containers cost a thousand small goroutines and no OS thread. A
// single goroutine shared by all watchers would need state shared by every
// Cgroup, which this API has no owner for. The goroutine ends at Close, or
// earlier once it sees the cgroup removed (v1: the eventfd's removal signal;
// v2: a read answering ENODEV, at a wake-up or re-poll; kernfs wakes no
// poller at the removal itself, so a v2 watcher with nothing pending waits
// for Close); Close waits for it.
//
// Every OOM kill that the kernel records in the cgroup after WatchOOM began
// is reported exactly once: by a call of onOOM or by a Check or CheckExit
// that returns true, never both (see the package doc). CheckExit may also
// report a kill that it infers from the parent cgroup's counter (v2, the
// cgroup already removed; see CheckExit). Call WatchOOM after `runc create`
// and before `runc start`, so that no kill in the container can precede it.
type OOMWatcher struct {
	// Set by WatchOOM and never changed: read without the lock.
	src     oomSource
	counter string          // memory.oom_control (v1) or memory.events (v2)
	file    *os.File        // the eventfd (v1) or epoll fd (v2), non-blocking, in the netpoller
	conn    syscall.RawConn // file's
	onOOM   func()
	logger  *slog.Logger
	done    chan struct{} // closed when the goroutine has returned
	// srcV2Events: evfd is memory.events, open for reading (read with
	// pread at offset 0, it gives the current counters, or ENODEV once the
	// cgroup is removed); ifd is the inotify fd; popfd is the cgroup's
	// cgroup.events, only polled (-1 if there is none); parent is the
	// parent cgroup's memory.events, "" if the parent has none (the root),
	// and parentfd that file, open and polled (-1 if it could not be).
	// The fds are -1 otherwise; Close closes them once the goroutine has
	// ended.
	evfd, ifd, popfd, parentfd int
	parent                     string
	polled                     bool // srcV2Events: evfd is in the epoll set (kernfs; a regular file is not)

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
	// srcV2Events, for CheckExit's inference: gone is set once a read of
	// memory.events failed because the cgroup was removed; parentBase is
	// the parent's oom_kill read just before the last successful read of
	// the cgroup's own counter (or read again after it, when that read
	// showed a new kill).
	gone       bool
	parentBase uint64
	parentOK   bool // parentBase was read
	// wokeBy names the fds of the last epoll wake-up (srcV2Events), for
	// the log.
	wokeBy []string
	// Live upgrade (handover.go). paused is set by Pause: nothing is
	// reported (the goroutine skips its updates, Check answers false) and
	// a srcV1Events watcher leaves its eventfd undrained. kicked is set by
	// Unpause, which also sets a past read deadline, so that the goroutine
	// looks again. reporting is true while the goroutine runs onOOM; idle,
	// made by a Pause that found it true, is closed when onOOM returned.
	paused    bool
	kicked    bool
	reporting bool
	idle      chan struct{}
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
		return watchV2(c.v2, onOOM, logger, nil)
	}
	dir, ok := c.v1["memory"]
	if !ok {
		return nil, fmt.Errorf("cgroups: cgroup %s: the memory controller is not mounted: %w", c.path, errdefs.ErrFailedPrecondition)
	}
	return watchV1(dir, onOOM, logger, false, nil)
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
// from, if not nil, is what a watcher handed over counted (AdoptOOM).
func watchV1(dir string, onOOM func(), logger *slog.Logger, notifications bool, from *OOMHanded) (*OOMWatcher, error) {
	ctl := filepath.Join(dir, "memory.oom_control")
	kv, ok, err := readFlatKeyed(ctl)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, missing(ctl)
	}
	w := &OOMWatcher{src: srcV1Events, counter: ctl, onOOM: onOOM, logger: logger, evfd: -1, ifd: -1, popfd: -1, parentfd: -1}
	if n, ok := kv["oom_kill"]; ok && !notifications {
		w.src, w.base = srcV1Counter, n
	}
	if err := w.continueFrom(from); err != nil {
		return nil, err
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

// watchV2 watches memory.events of the v2 cgroup at dir. It keeps the file
// open: kernfs wakes the pollers of a cgroup file at once when the kernel
// notifies it, while the inotify event is queued to a workqueue, so the
// first notification of an OOM (the "max" event) reaches the watcher early,
// and the re-polls read the same fd. It polls the cgroup's cgroup.events
// too: "populated 0" wakes it as soon as the last process is gone, before
// systemd (told through inotify) removes the cgroup, and the kill is
// counted by then. inotify stays for files that cannot be polled (a
// regular file standing in for memory.events in the tests) and IN_IGNORED.
func watchV2(dir string, onOOM func(), logger *slog.Logger, from *OOMHanded) (*OOMWatcher, error) {
	return watchV2File(filepath.Join(dir, "memory.events"), onOOM, logger, from)
}

// watchV2File is watchV2 for the file ev (the tests use it on another
// cgroup file where the host has no v2 memory controller).
func watchV2File(ev string, onOOM func(), logger *slog.Logger, from *OOMHanded) (_ *OOMWatcher, retErr error) {
	dir := filepath.Dir(ev)
	w := &OOMWatcher{src: srcV2Events, counter: ev, onOOM: onOOM, logger: logger, evfd: -1, ifd: -1, popfd: -1, parentfd: -1}
	defer func() {
		if retErr != nil {
			w.closeFds()
		}
	}()
	var err error
	w.evfd, err = unix.Open(ev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if gone(err) {
			return nil, missing(ev)
		}
		return nil, wrap(err, "cgroups: watch OOM: open %s", ev)
	}
	kv, err := w.readEvents()
	if err != nil {
		return nil, err
	}
	w.base = kv["oom_kill"]
	if err := w.continueFrom(from); err != nil {
		return nil, err
	}
	if p := filepath.Join(filepath.Dir(dir), "memory.events"); filepath.Dir(dir) != dir {
		// The root cgroup has no memory.events: no parent to infer from.
		if pkv, ok, err := readFlatKeyed(p); err == nil && ok {
			w.parent, w.parentBase, w.parentOK = p, pkv["oom_kill"], true
		}
	}
	w.ifd, err = unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, wrap(err, "cgroups: watch OOM: inotify")
	}
	// IN_ATTRIB: an unlink of a file that evfd keeps open sends no
	// IN_DELETE_SELF or IN_IGNORED until evfd is closed, only IN_ATTRIB
	// (the link count).
	if _, err := unix.InotifyAddWatch(w.ifd, ev, unix.IN_MODIFY|unix.IN_ATTRIB); err != nil {
		return nil, wrap(err, "cgroups: watch OOM: watch %s", ev)
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, wrap(err, "cgroups: watch OOM: epoll")
	}
	// Non-blocking before os.NewFile, which puts only such fds in the
	// netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, wrap(err, "cgroups: watch OOM: epoll")
	}
	ep := os.NewFile(uintptr(epfd), "oom-epoll:"+dir)
	add := func(fd int, events uint32) error {
		return unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)})
	}
	if err := add(w.ifd, unix.EPOLLIN); err != nil {
		ep.Close()
		return nil, wrap(err, "cgroups: watch OOM: epoll inotify")
	}
	// EPERM: not a file the kernel can poll (only inotify wakes us then).
	switch err := add(w.evfd, unix.EPOLLPRI|unix.EPOLLET); {
	case err == nil:
		w.polled = true
	case !errors.Is(err, unix.EPERM):
		ep.Close()
		return nil, wrap(err, "cgroups: watch OOM: epoll %s", ev)
	}
	// cgroup.events: "populated 0" once the last process is gone, when an
	// OOM kill is counted already; its poll wake-up comes before systemd,
	// which learns of it through inotify, can remove the cgroup.
	pop := filepath.Join(dir, "cgroup.events")
	if w.popfd, err = unix.Open(pop, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		w.popfd = -1
		if !gone(err) {
			ep.Close()
			return nil, wrap(err, "cgroups: watch OOM: open %s", pop)
		}
	} else if err := add(w.popfd, unix.EPOLLPRI|unix.EPOLLET); err != nil && !errors.Is(err, unix.EPERM) {
		ep.Close()
		return nil, wrap(err, "cgroups: watch OOM: epoll %s", pop)
	}
	// The parent's memory.events: the kernel notifies it of every kill
	// below it, so that the watcher reads the parent's count again after a
	// kill in another cgroup (see CheckExit). Without it the parent's count
	// is read only at this cgroup's own wake-ups.
	if w.parent != "" {
		if w.parentfd, err = unix.Open(w.parent, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			w.parentfd = -1
		} else if err := add(w.parentfd, unix.EPOLLPRI|unix.EPOLLET); err != nil && !errors.Is(err, unix.EPERM) {
			ep.Close()
			return nil, wrap(err, "cgroups: watch OOM: epoll %s", w.parent)
		}
	}
	return w.start(ep)
}

// readEvents reads memory.events through evfd. An error of class
// errdefs.ErrNotFound means the cgroup was removed: kernfs answers ENODEV;
// a file that is no longer linked anywhere (what stands in for
// memory.events in the tests) counts as removed too.
func (w *OOMWatcher) readEvents() (map[string]uint64, error) {
	var buf [1024]byte
	for {
		n, err := unix.Pread(w.evfd, buf[:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err == nil {
			var st unix.Stat_t
			if err = unix.Fstat(w.evfd, &st); err == nil && st.Nlink == 0 {
				err = unix.ENOENT
			}
		}
		if err != nil {
			return nil, wrap(err, "cgroups: read %s", w.counter)
		}
		kv, err := parseFlatKeyed(buf[:n])
		if err != nil {
			return nil, badFormat(w.counter, err)
		}
		return kv, nil
	}
}

// closeFds closes evfd, ifd, popfd and parentfd if open.
func (w *OOMWatcher) closeFds() {
	for _, fd := range []*int{&w.evfd, &w.ifd, &w.popfd, &w.parentfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
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
// own), then at every wake-up and, for srcV1Counter and srcV2Events, at the
// re-polls.
func (w *OOMWatcher) run() {
	defer close(w.done)
	var delay, waited time.Duration // next re-poll, 0 for none; time re-polled so far
	for first := true; ; first = false {
		by := "first look"
		if !first {
			woke, err := w.wait(delay)
			if err != nil {
				if !w.isClosed() {
					w.logger.Warn("cgroups: OOM watch stopped", "error", err)
				}
				return
			}
			by = "re-poll"
			ownWake := woke
			if woke {
				by = "notification"
				w.mu.Lock()
				if len(w.wokeBy) > 0 {
					by += " (" + strings.Join(w.wokeBy, ", ") + ")"
					// The parent's notifications alone (another
					// cgroup's events) start no re-polls.
					ownWake = slices.ContainsFunc(w.wokeBy, func(s string) bool { return s != "parent" })
				}
				w.mu.Unlock()
			}
			if w.src != srcV1Events {
				if ownWake {
					delay, waited = repollFirst, 0
				} else if waited += delay; waited >= repollTotal {
					delay = 0
				} else {
					delay *= 2
				}
			}
		}
		w.mu.Lock()
		if w.paused {
			// A kill is left for the new image, or for Unpause, which
			// wakes this goroutine again.
			w.mu.Unlock()
			continue
		}
		report, stop, err := w.updateLocked()
		w.reporting = report
		w.mu.Unlock()
		if err != nil {
			w.logger.Warn("cgroups: read OOM counter", "file", w.counter, "error", err)
		}
		if report {
			w.logger.Info("cgroups: OOM kill", "by", by)
			w.onOOM()
			w.mu.Lock()
			w.reporting = false
			if w.idle != nil {
				close(w.idle)
				w.idle = nil
			}
			w.mu.Unlock()
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
	// After the deadline is set: an Unpause that set its past deadline
	// before ours has set kicked already.
	if w.takeKick() {
		return w.afterKick()
	}
	var derr error
	err = w.conn.Read(func(fd uintptr) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.paused && w.src == srcV1Events {
			// The notifications are the count: leave them in the
			// eventfd for HandOver or Unpause.
			return false
		}
		var got bool
		got, derr = w.drainLocked(int(fd))
		return got || derr != nil
	})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if w.takeKick() {
			return w.afterKick()
		}
		return false, nil
	}
	if err == nil {
		err = derr
	}
	return err == nil, err
}

// drainLocked takes what the fd has without blocking: the eventfd's count
// (kept as pending for srcV1Events), or (srcV2Events) the epoll fd's events
// and the inotify events (noting IN_IGNORED). got is false if there was
// nothing.
func (w *OOMWatcher) drainLocked(fd int) (got bool, err error) {
	if w.src == srcV2Events {
		if w.closed {
			// ifd may be closed once the goroutine ends.
			return false, nil
		}
		// One call takes every fd's event (the kernfs files are
		// edge-triggered; the inotify fd, level-triggered, stays ready
		// until drained below).
		var evs [4]unix.EpollEvent
		for {
			n, err := unix.EpollWait(fd, evs[:], 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return false, fmt.Errorf("cgroups: epoll_wait: %w", err)
			}
			got = n > 0
			w.wokeBy = w.wokeBy[:0]
			for _, e := range evs[:n] {
				switch int(e.Fd) {
				case w.evfd:
					w.wokeBy = append(w.wokeBy, "memory.events")
				case w.popfd:
					w.wokeBy = append(w.wokeBy, "cgroup.events")
				case w.parentfd:
					w.wokeBy = append(w.wokeBy, "parent")
				default:
					w.wokeBy = append(w.wokeBy, "inotify")
				}
			}
			break
		}
		fd = w.ifd
	}
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
	case srcV1Counter:
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
	case srcV2Events:
		if w.gone {
			return false, true, nil
		}
		// The parent first: a kill in this cgroup is counted here before
		// it is counted in the parent (mem_cgroup's event walks up), so a
		// parent count read before a count of our own that shows no new
		// kill does not hold a kill of ours either.
		var parent uint64
		parentOK := false
		if w.parent != "" {
			if kv, ok, err := readFlatKeyed(w.parent); err == nil && ok {
				parent, parentOK = kv["oom_kill"], true
			}
		}
		kv, err := w.readEvents()
		if err != nil {
			if gone(err) {
				w.gone = true
				return false, true, nil
			}
			return false, false, err
		}
		if n := kv["oom_kill"]; n > w.base {
			count = n - w.base
		}
		if count > w.reported {
			// Our kill is in the parent's count now: a new base that
			// holds it (a kill of a sibling in between is left out, which
			// errs towards reporting nothing).
			// (The kernel counts a kill in the cgroup and then, a few
			// instructions later, in the parent: a read that falls in
			// between would leave our kill out of the base, and an
			// inference at the exit could report it again.)
			if kv, ok, err := readFlatKeyed(w.parent); w.parent != "" && err == nil && ok {
				parent, parentOK = kv["oom_kill"], true
			}
		}
		w.parentBase, w.parentOK = parent, parentOK
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
// notification, without blocking.
//
// It reads the kernel's counter itself, so a kill is seen even if the
// watcher goroutine has not woken up yet; the kill is then not reported to
// onOOM again. A removed cgroup has no counter left, and Check returns
// false (see CheckExit). After Close, and while the watcher is paused (live
// upgrade: the kill is left for the new image or for Unpause), Check
// returns false.
func (w *OOMWatcher) Check() bool {
	report, _ := w.check(false)
	return report
}

// CheckExit is Check for the moment the cgroup's init process has exited
// (before TaskExit is published, so that TaskOOM precedes it); sigkilled
// says that SIGKILL ended the init. inferred reports that the kill was not
// read from the cgroup's own counter but inferred (logged at Info).
//
// A v2 cgroup may be gone by then (systemd removes an empty scope at once,
// and the notification of its oom_kill, held by the kernel's rate limit,
// is dropped with it). CheckExit then reports an OOM kill, once, if all of
// these hold: the cgroup's memory.events can no longer be read (the cgroup
// was removed); sigkilled; and the parent cgroup's hierarchical oom_kill is
// higher than when the watcher last read it, which it does just before
// every successful read of the cgroup's own counter, at the cgroup's own
// wake-ups and at every notification of the parent's memory.events (the
// kernel notifies it of every kill below it). So another cgroup's kill is
// misattributed only if this cgroup's init dies of someone else's SIGKILL
// and its cgroup is removed before the watcher has handled the parent's
// notification of that kill; docs/design.md weighs this. With the
// memory_localevents mount option the parent's counter does not include
// its children's kills and nothing is inferred.
func (w *OOMWatcher) CheckExit(sigkilled bool) (report, inferred bool) {
	return w.check(sigkilled)
}

func (w *OOMWatcher) check(sigkilled bool) (report, inferred bool) {
	w.mu.Lock()
	if w.closed || w.paused {
		w.mu.Unlock()
		return false, false
	}
	var derr error
	if w.src == srcV1Events {
		// The notifications are the count: take those not yet drained.
		if err := w.conn.Control(func(fd uintptr) { _, derr = w.drainLocked(int(fd)) }); err != nil {
			derr = err
		}
	}
	report, _, err := w.updateLocked()
	var parentBefore, parentNow uint64
	if !report && sigkilled {
		inferred, parentBefore, parentNow = w.inferLocked()
		report = inferred
	}
	w.mu.Unlock()
	if err = errors.Join(derr, err); err != nil {
		w.logger.Warn("cgroups: OOM check", "file", w.counter, "error", err)
	}
	switch {
	case inferred:
		w.logger.Info("cgroups: OOM kill inferred: the cgroup is gone, its init was SIGKILLed, and the parent counted a kill since the last read",
			"parent", w.parent, "parent_oom_kill_before", parentBefore, "parent_oom_kill", parentNow)
	case report:
		w.logger.Info("cgroups: OOM kill", "by", "check")
	}
	return report, inferred
}

// inferLocked is CheckExit's inference for a removed v2 cgroup (see
// CheckExit); it consumes what it reports.
func (w *OOMWatcher) inferLocked() (ok bool, before, now uint64) {
	if w.src != srcV2Events || !(w.gone || w.watchGone) || !w.parentOK {
		return false, 0, 0
	}
	kv, found, err := readFlatKeyed(w.parent)
	if err != nil || !found || kv["oom_kill"] <= w.parentBase {
		return false, 0, 0
	}
	before, now = w.parentBase, kv["oom_kill"]
	w.parentBase = now
	return true, before, now
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
	w.closeFds()
	if err != nil {
		return fmt.Errorf("cgroups: close OOM watcher: %w: %w", err, errdefs.ErrInternal)
	}
	return nil
}
