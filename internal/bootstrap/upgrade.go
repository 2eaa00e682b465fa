package bootstrap

import (
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/taskservice"
	"github.com/tether-shim/tether/internal/upgrade"
)

// serverListener returns the server's listening socket: the one `start`
// passed on listenFD, or, in an image a live upgrade started, the one in
// the inherited state, with the connections handed over.
func serverListener(inherited *upgrade.State) (*net.UnixListener, []upgrade.Handed, error) {
	if inherited != nil {
		return upgrade.Resumed(*inherited)
	}
	sock := os.NewFile(listenFD, "socket")
	fl, err := net.FileListener(sock)
	sock.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("listening socket on fd %d: %w", listenFD, err)
	}
	ln, ok := fl.(*net.UnixListener)
	if !ok {
		fl.Close()
		return nil, nil, fmt.Errorf("fd %d is not a unix socket", listenFD)
	}
	return ln, nil, nil
}

// newUpgrader returns the server's live upgrade (docs/design.md, "Live
// upgrade"). The new image is the binary at the path the first image was
// started from, run with the same arguments and the environment `start`
// gives a server (serverEnv).
func newUpgrader(logger *slog.Logger, version string, inherited *upgrade.State, ln *net.UnixListener, q *upgrade.Quiescer,
	svc *taskservice.Service, reaper *exits.Reaper, publisher *events.Publisher) (*upgrade.Upgrader, error) {
	exe, generation := "", 0
	if inherited != nil {
		exe, generation = inherited.Exe, inherited.Generation
	} else {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("live upgrade: own binary: %w", err)
		}
	}
	return upgrade.New(upgrade.Config{
		Logger:     logger,
		Version:    version,
		Exe:        exe,
		Generation: generation,
		Argv:       os.Args,
		Env:        func() []string { return serverEnv(os.Environ()) },
		Listener:   ln,
		Quiescer:   q,
		Hold:       reaper.Hold,
		Busy: func() error {
			if n := svc.Held(); n > 0 {
				return fmt.Errorf("the shim holds %d containers, and handing containers over is not built yet (state version %d carries none): %w", n, upgrade.StateVersion, upgrade.ErrNotHandedOver)
			}
			if pids, err := reaper.Children(); err != nil {
				return fmt.Errorf("list child processes: %w", err)
			} else if len(pids) > 0 {
				return fmt.Errorf("the shim has child processes %v, whose exits state version %d cannot carry: %w", pids, upgrade.StateVersion, upgrade.ErrNotHandedOver)
			}
			if n := publisher.Queued(); n > 0 {
				return fmt.Errorf("%d events are not yet delivered to containerd, and state version %d carries none: %w", n, upgrade.StateVersion, upgrade.ErrNotHandedOver)
			}
			return nil
		},
		// The new image's runtime must start without huge pages, as one
		// `start` launches (thp.go); its Serve releases the flag.
		BeforeExec:      holdHugePages,
		AfterFailedExec: func() { _ = releaseHugePages() },
	}), nil
}
