package container

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os/exec"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/stdio"
)

// refusingMonitor refuses every Watch, as a closed monitor does.
type refusingMonitor struct{}

func (refusingMonitor) Hold() func()                      { return func() {} }
func (refusingMonitor) Watch(int, func(exits.Exit)) error { return errors.New("monitor closed") }
func (refusingMonitor) Signal(int, syscall.Signal) error  { return nil }

// TestRegressionUnwatchedPidKept: a process whose watch failed was killed
// but its pid stayed recorded, so Delete waited its whole timeout for an
// exit nothing would report and Status showed the killed pid. Its pid is
// forgotten now.
func TestRegressionUnwatchedPidKept(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := newProcess("c1", "e1", &execKind{}, stdio.Config{}, nopSink{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := p.watchFunc(refusingMonitor{})(cmd.Process.Pid); err == nil {
		t.Fatal("a refused watch was not an error")
	}
	if pid := p.Pid(); pid != 0 {
		t.Errorf("pid %d still recorded after its watch failed", pid)
	}
	// The unwatched process was killed.
	if err := cmd.Wait(); err == nil {
		t.Error("the unwatched process was not killed")
	}
}

// TestRegressionExecDeletedBeforeItsExit: an exec deleted while Exiting
// (its exit collected, TaskExit not yet handed on) left the container's
// exec table at once, so a new exec of the same id could be announced
// before the old one's TaskExit. Delete now waits for the exit to be
// handed on.
func TestRegressionExecDeletedBeforeItsExit(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := &Container{id: "c1", execs: map[string]*Process{}, deps: Deps{Logger: logger}}
	k := &execKind{c: c, execID: "e1", startResolved: make(chan struct{})}
	p := newProcess("c1", "e1", k, stdio.Config{}, nopSink{}, logger)
	c.execs["e1"] = p
	p.state = Exiting
	var handedOn atomic.Bool
	go func() {
		time.Sleep(50 * time.Millisecond) // gives a delete that does not wait the time to return
		handedOn.Store(true)
		close(p.done)
	}()
	if _, err := k.delete(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if !handedOn.Load() {
		t.Error("delete returned before the exec's exit was handed on")
	}
	if _, ok := c.execs["e1"]; ok {
		t.Error("the exec is still in the table after its delete")
	}
}
