package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/upgrade"
)

// runUpgrade implements `tether upgrade [--expect VERSION] [--timeout D]
// (--all | PID...)`: each shim server re-executes itself, under its pid,
// into the binary now installed at the path it was started from
// (docs/design.md, "Live upgrade"). Shims are found as every other
// command finds them (findShims, resolveShim). It reports each shim on
// e.stdout and fails if any was refused or failed.
func runUpgrade(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("upgrade")
	all := fs.Bool("all", false, "upgrade every Tether shim server of the node")
	expect := fs.String("expect", "", "refuse unless the binary on disk is this build (its -v version)")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on each shim's upgrade")
	pids, err := parse(fs, args)
	if err != nil {
		return err
	}
	var shims []shim
	switch {
	case *all && len(pids) > 0:
		return usageError("give --all or pids, not both")
	case *all:
		found, err := findShims()
		if err != nil {
			return err
		}
		for _, s := range found {
			if s.Socket != "" && s.UID == os.Geteuid() {
				shims = append(shims, s)
			}
		}
		if len(shims) == 0 {
			fmt.Fprintln(e.stdout, "no Tether shim server runs")
			return nil
		}
	case len(pids) == 0:
		return usageError("give --all or pids")
	default:
		for _, a := range pids {
			if !pidRef.MatchString(a) {
				return usageError("%q is not a pid", a)
			}
			s, err := resolveShim(a)
			if err != nil {
				return err
			}
			if err := ownShim(s); err != nil {
				return err
			}
			shims = append(shims, s)
		}
	}
	failed := 0
	for _, s := range shims {
		cctx, cancel := context.WithTimeout(ctx, *timeout)
		msg, err := upgradeShim(cctx, s, upgrade.Request{ExpectVersion: *expect})
		cancel()
		if err != nil {
			failed++
			fmt.Fprintf(e.stdout, "shim %d: %v\n", s.Pid, err)
			continue
		}
		fmt.Fprintf(e.stdout, "shim %d: %s\n", s.Pid, msg)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d shims not upgraded", failed, len(shims))
	}
	return nil
}

// upgradeShim upgrades the shim server pid and checks, on the same
// connection, that the new image answers.
func upgradeShim(ctx context.Context, s shim, r upgrade.Request) (string, error) {
	pid, sock := s.Pid, s.Socket
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", sock, err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	c := upgrade.NewClient(client)
	before, err := c.Status(ctx)
	if err != nil {
		return "", fmt.Errorf("status (does this shim have live upgrade?): %w", err)
	}
	if before.Pid != pid {
		return "", fmt.Errorf("the socket %s is served by pid %d", sock, before.Pid)
	}
	acc, err := c.Upgrade(ctx, r)
	if err != nil {
		return "", err
	}
	// Read after the accepting answer: by the new image, or by the old one
	// if the hand-over failed.
	after, err := c.Status(ctx)
	if err != nil {
		return "", fmt.Errorf("status after the hand-over: %w", err)
	}
	switch {
	case after.LastError != "":
		return "", fmt.Errorf("hand-over failed, still %s: %s", after.Version, after.LastError)
	case after.Pid != pid || after.Generation != before.Generation+1 || after.Version != acc.To:
		return "", fmt.Errorf("unexpected status after the hand-over: %+v", after)
	}
	return fmt.Sprintf("upgraded %s -> %s (%s, generation %d)", acc.From, acc.To, acc.Exe, after.Generation), nil
}

// ownShim refuses a shim of another uid than this process's effective one:
// as with ps, a process of another uid that looks like a shim is never
// asked, let alone told to execute a binary.
func ownShim(s shim) error {
	if me := os.Geteuid(); s.UID != me {
		return fmt.Errorf("shim %d runs as uid %d, this is uid %d: run tether as the shim's uid: %w", s.Pid, s.UID, me, introspect.ErrOtherUID)
	}
	return nil
}
