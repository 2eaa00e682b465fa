package container

import "github.com/tether-shim/tether/internal/exits"

// watchFunc is the register func of a runtime launch of p (create, exec,
// restore): the runtime calls it with the new pid under its Hold, and it
// records the pid (first, so that an exit collected at once finds it) and
// watches it through m (exits.WatchOrKill: a process that cannot be watched
// is killed, since its exit would never be published). A pid whose watch
// failed is forgotten again: nothing would ever report its exit, and a
// recorded pid made Delete wait its full timeout for it and Status report a
// killed process.
func (p *Process) watchFunc(m exits.Monitor) func(pid int) error {
	return func(pid int) error {
		p.setPid(pid)
		if err := exits.WatchOrKill(m, pid, p.onExit); err != nil {
			p.setPid(0)
			return err
		}
		return nil
	}
}
