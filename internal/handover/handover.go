// Package handover carries descriptors across the execve of a live upgrade
// (docs/design.md, "Live upgrade"). The old image collects, in one Files,
// a duplicate of every descriptor a component hands over and writes their
// numbers into its part of the state document; package upgrade clears their
// close-on-exec flag just before execve. The new image takes each number
// back with Take.
//
// Invariants:
//   - A duplicate shares the open file description with the original, so
//     its status flags (O_NONBLOCK among them) are the original's: a pipe
//     the old image polled stays non-blocking, and os.NewFile in the new
//     image puts it in the netpoller again. Duplicates are made with
//     F_DUPFD_CLOEXEC through the file's RawConn, never with (*os.File).Fd,
//     which would switch the shared description to blocking mode and break
//     the old image if the hand-over fails.
//   - Until Exec, every duplicate is close-on-exec: a child the old image
//     starts meanwhile inherits none. After a failed hand-over, Close
//     closes them all and the originals are untouched.
//
// This package imports nothing of Tether's, so every component can use it.
package handover

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxFD bounds the descriptor numbers Take accepts.
const maxFD = 1 << 20

// Dup returns a duplicate of the descriptor of c, close-on-exec and above 2,
// without changing c's blocking mode (as (*os.File).Fd would).
func Dup(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	return nfd, nil
}

// Files collects the duplicates one hand-over passes. Its zero value is
// ready to use; it is safe for concurrent use.
type Files struct {
	mu sync.Mutex
	// fds are the duplicates made so far, in order; guarded by mu.
	fds []int
}

// Add duplicates c's descriptor into the hand-over and returns the number
// the new image finds it under.
func (h *Files) Add(c syscall.Conn) (int, error) {
	fd, err := Dup(c)
	if err != nil {
		return -1, err
	}
	h.mu.Lock()
	h.fds = append(h.fds, fd)
	h.mu.Unlock()
	return fd, nil
}

// AddFD duplicates a raw descriptor (one not wrapped in an *os.File, such as
// an eventfd) into the hand-over.
func (h *Files) AddFD(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return -1, fmt.Errorf("dup descriptor %d: %w", fd, err)
	}
	h.mu.Lock()
	h.fds = append(h.fds, nfd)
	h.mu.Unlock()
	return nfd, nil
}

// FDs returns the descriptors collected, in the order they were added.
func (h *Files) FDs() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.fds...)
}

// Close closes every duplicate: the hand-over failed and the old image goes
// on with the originals.
func (h *Files) Close() {
	h.mu.Lock()
	fds := h.fds
	h.fds = nil
	h.mu.Unlock()
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// ErrBadFD is returned (wrapped) by Take for a number that cannot be a
// handed-over descriptor.
var ErrBadFD = errors.New("not a handed-over descriptor")

// Take returns the handed-over descriptor fd as a file named name, and
// makes it close-on-exec again. A descriptor in non-blocking mode goes to
// the netpoller (os.NewFile's rule), so deadlines work on it.
func Take(fd int, name string) (*os.File, error) {
	if fd < 3 || fd > maxFD {
		return nil, fmt.Errorf("%s: descriptor %d: %w", name, fd, ErrBadFD)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("%s: descriptor %d: %w: %w", name, fd, ErrBadFD, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// CloseUntaken closes, in the image a live upgrade started, every handed
// descriptor of fds that no part took: upgrade.Exec cleared close-on-exec on
// all of them and Take sets it again, so one still without it was never
// taken (a part that could not be adopted). Left open, it would be
// inherited by every child and hold, say, the read end of a container's
// stdout pipe that nobody reads. It returns how many it closed.
func CloseUntaken(fds []int) int {
	n := 0
	for _, fd := range fds {
		if fd < 3 || fd > maxFD {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		if unix.Close(fd) == nil {
			n++
		}
	}
	return n
}
