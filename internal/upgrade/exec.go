package upgrade

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exec replaces the process image with bin, passing s: it writes s to a
// sealed memfd, clears close-on-exec on the memfd and on every descriptor s
// names, and execve's bin through /proc/self/fd with argv and env (plus
// EnvState). It returns only if execve failed, with the descriptors' flags
// as they were.
//
// It holds syscall.ForkLock for writing from clearing close-on-exec to
// execve, so that no child the process starts meanwhile inherits them.
func Exec(bin *Binary, argv, env []string, s State) error {
	data, err := Encode(s)
	if err != nil {
		return err
	}
	mem, err := writeMemfd(data)
	if err != nil {
		return err
	}
	defer mem.Close()
	memfd := int(mem.Fd())
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, EnvState+"=") })
	env = append(env, EnvState+"="+strconv.Itoa(memfd))
	fds := append(s.Descriptors(), memfd)

	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	for i, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			for _, done := range fds[:i] {
				unix.CloseOnExec(done)
			}
			return fmt.Errorf("clear close-on-exec of descriptor %d: %w", fd, err)
		}
	}
	err = unix.Exec(fmt.Sprintf("/proc/self/fd/%d", bin.FD()), argv, env)
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	return fmt.Errorf("execve %s: %w", bin.Path, err)
}

// Dup returns a duplicate of the descriptor of c (close-on-exec, above 2),
// without changing c's blocking mode (as File would).
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
