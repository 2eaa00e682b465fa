package container

import "github.com/tether-shim/tether/internal/exits"

// watchFunc is the register func of a runtime launch of p (create, exec,
// restore): the runtime calls it with the new pid under its Hold, and it
// records the pid and watches it through m (exits.WatchOrKill: a process
// that cannot be watched is killed, since its exit would never be
// published).
func (p *Process) watchFunc(m exits.Monitor) func(pid int) error {
	return func(pid int) error {
		p.setPid(pid)
		return exits.WatchOrKill(m, pid, p.onExit)
	}
}
