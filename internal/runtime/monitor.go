package runtime

import (
	"errors"
	"os/exec"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
)

// waitDelay is how long a runtime command's Wait waits, after the runtime
// process has exited or been killed, for its output pipes to close. A hung
// helper of the runtime that survived the kill of the process group (it
// left the group) must not keep the command, and the Hold it runs under,
// waiting.
const waitDelay = 2 * time.Second

// GroupMonitor is go-runc's ProcessMonitor for Tether: like go-runc's own,
// except that a command whose context ends kills the runtime's whole
// process group (New sets Setpgid), not just the runtime process, and that
// Wait gives up on the output after waitDelay. Without it, a runtime that
// hangs in a child (a hook, a helper) kept its output pipe open after it
// was killed at its deadline, and the command never returned.
type GroupMonitor struct{}

// UseGroupMonitor makes go-runc start every command through GroupMonitor.
// go-runc keeps its monitor in a package variable: call this once, first
// thing in main (and in TestMain), before any runtime command can run.
func UseGroupMonitor() { runc.Monitor = GroupMonitor{} }

// prepare sets cmd up to be killed as a process group and waited for with
// a bound.
func prepare(cmd *exec.Cmd) {
	cmd.WaitDelay = waitDelay
	if cmd.Cancel == nil {
		return // not started with a context: nothing cancels it
	}
	cmd.Cancel = func() error {
		if cmd.SysProcAttr != nil && cmd.SysProcAttr.Setpgid && cmd.Process.Pid > 0 {
			// The group is the runtime's pid; ESRCH means it is gone.
			if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err == nil || !errors.Is(err, syscall.ESRCH) {
				return err
			}
		}
		return cmd.Process.Kill()
	}
}

// Start starts cmd and returns a channel that receives its exit.
func (GroupMonitor) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	prepare(cmd)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ec := make(chan runc.Exit, 1)
	go wait(cmd, ec)
	return ec, nil
}

// StartLocked is Start; Tether sets no Pdeathsig, so the thread that
// starts a runtime does not matter (internal/trim's invariant: the trimmer
// ends threads, and TestNoThreadLocksOrPdeathsig fails if anything in the
// shim sets a parent-death signal).
func (m GroupMonitor) StartLocked(cmd *exec.Cmd) (chan runc.Exit, error) {
	return m.Start(cmd)
}

// Wait returns the exit status sent on ec.
func (GroupMonitor) Wait(_ *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	return e.Status, nil
}

// wait waits for cmd and sends its exit on ec, as go-runc's monitor does:
// status 255 when there is no exit status (killed by a signal, or an
// output that stayed open past waitDelay).
func wait(cmd *exec.Cmd, ec chan runc.Exit) {
	status := 0
	if err := cmd.Wait(); err != nil {
		status = 255
	}
	// The process's own status, also when only its output outlived it
	// (exec.ErrWaitDelay); -1 if a signal killed it, as with go-runc.
	if ps := cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			status = ws.ExitStatus()
		}
	}
	ec <- runc.Exit{Timestamp: time.Now(), Pid: cmd.Process.Pid, Status: status}
	close(ec)
}
