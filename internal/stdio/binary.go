package stdio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/tether-shim/tether/internal/exits"
)

// Deadlines of a logging binary: how long it may take to signal readiness;
// how long it gets to exit at EOF before SIGTERM, and after SIGTERM before
// SIGKILL.
const (
	loggerReadyTimeout = 10 * time.Second
	loggerEOFGrace     = time.Second
	loggerStopTimeout  = 5 * time.Second
)

// logger is a running logging binary.
type logger struct {
	pid     int
	monitor exits.Monitor
	// exited is closed by the exit watcher.
	exited chan struct{}
}

// startLogger starts the logging binary of a binary:// URI with the read
// ends of the stdout and stderr pipes as fds 3 and 4 and the write end of a
// readiness pipe as fd 5, and waits until it closes fd 5 (or exits). Its
// arguments are the URI's query as key, value pairs; its environment adds
// CONTAINER_ID and CONTAINER_NAMESPACE.
func (p *IO) startLogger(ctx context.Context, bin output, opts Options) (retErr error) {
	if opts.Monitor == nil {
		return errors.New("stdio: binary:// needs a monitor")
	}
	var parent []*os.File // the ends the logger gets; closed here once it has them
	defer func() {
		for _, f := range parent {
			f.Close()
		}
	}()
	outR, outW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("stdio: pipe: %w", err)
	}
	parent = append(parent, outR)
	p.stdoutW = outW
	errR, errW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("stdio: pipe: %w", err)
	}
	parent = append(parent, errR)
	p.stderrW = errW
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("stdio: pipe: %w", err)
	}
	defer readyR.Close()
	parent = append(parent, readyW)

	cmd := exec.Command(bin.path, bin.args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+opts.ID, "CONTAINER_NAMESPACE="+opts.Namespace)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	release := opts.Monitor.Hold()
	if err := cmd.Start(); err != nil {
		release()
		return fmt.Errorf("stdio: start logging binary %s: %w", bin.path, err)
	}
	l := &logger{pid: cmd.Process.Pid, monitor: opts.Monitor, exited: make(chan struct{})}
	err = exits.WatchOrKill(opts.Monitor, l.pid, func(exits.Exit) { close(l.exited) })
	release()
	// The exit monitor reaps it; os/exec must not.
	_ = cmd.Process.Release()
	if err != nil {
		return fmt.Errorf("stdio: watch logging binary: %w", err)
	}
	p.logger = l
	for _, f := range parent {
		f.Close()
	}
	parent = nil

	deadline := time.Now().Add(loggerReadyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = readyR.SetReadDeadline(deadline)
	// A cancelled ctx ends the wait too, not only its deadline.
	stopWait := context.AfterFunc(ctx, func() { _ = readyR.SetReadDeadline(time.Now()) })
	defer stopWait()
	_, err = io.Copy(io.Discard, readyR)
	// ctx first: a cancelled ctx ends the wait with a read deadline, and
	// the AfterFunc runs in a goroutine of its own, so a logger that got
	// ready at once can also win the race against an already cancelled ctx.
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("stdio: logging binary %s: %w", bin.path, cerr)
	}
	if err != nil {
		return fmt.Errorf("stdio: logging binary %s not ready: %w", bin.path, err)
	}
	return nil
}

// stop waits a moment for the logging binary to exit by itself (the
// container's output has ended, so it sees EOF), then asks it with SIGTERM
// so that it can flush, and kills it after loggerStopTimeout.
func (l *logger) stop() error {
	select {
	case <-l.exited:
		return nil
	case <-time.After(loggerEOFGrace):
	}
	_ = l.monitor.Signal(l.pid, syscall.SIGTERM)
	select {
	case <-l.exited:
		return nil
	case <-time.After(loggerStopTimeout):
	}
	_ = l.monitor.Signal(l.pid, syscall.SIGKILL)
	select {
	case <-l.exited:
		return fmt.Errorf("stdio: logging binary %d killed: it ignored EOF and SIGTERM", l.pid)
	case <-time.After(loggerStopTimeout):
		return fmt.Errorf("stdio: logging binary %d did not exit", l.pid)
	}
}
