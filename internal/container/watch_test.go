package container

import (
	"errors"
	"io"
	"log/slog"
	"os/exec"
	"syscall"
	"testing"

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
