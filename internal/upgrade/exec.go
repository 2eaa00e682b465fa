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
