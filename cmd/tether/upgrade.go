package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/internal/upgrade"
)

// shimBinary is the name of the shim's binary; a shim server is a process
// running it with the action serve.
const shimBinary = "containerd-shim-tether-v2"

// runUpgrade implements `tether upgrade [--expect VERSION] [--timeout D]
// (--all | PID...)`: each shim server re-executes itself, under its pid,
// into the binary now installed at the path it was started from
// (docs/design.md, "Live upgrade"). It reports each shim on stdout and
// fails if any was refused or failed.
func runUpgrade(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tether upgrade", flag.ContinueOnError)
	all := fs.Bool("all", false, "upgrade every Tether shim server of the node")
	expect := fs.String("expect", "", "refuse unless the binary on disk is this build (its -v version)")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on each shim's upgrade")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var pids []int
	switch {
	case *all && fs.NArg() > 0:
		return errors.New("give --all or pids, not both")
	case *all:
		var err error
		if pids, err = shimPids("/proc"); err != nil {
			return err
		}
		if len(pids) == 0 {
			fmt.Println("no Tether shim server runs")
			return nil
		}
	case fs.NArg() == 0:
		return errors.New("usage: tether upgrade [--expect VERSION] [--timeout D] (--all | PID...)")
	default:
		for _, a := range fs.Args() {
			pid, err := strconv.Atoi(a)
			if err != nil || pid <= 0 {
				return fmt.Errorf("%q is not a pid", a)
			}
			pids = append(pids, pid)
		}
	}
	failed := 0
	for _, pid := range pids {
		cctx, cancel := context.WithTimeout(ctx, *timeout)
		msg, err := upgradeShim(cctx, pid, upgrade.Request{ExpectVersion: *expect})
		cancel()
		if err != nil {
			failed++
			fmt.Printf("shim %d: %v\n", pid, err)
			continue
		}
		fmt.Printf("shim %d: %s\n", pid, msg)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d shims not upgraded", failed, len(pids))
	}
	return nil
}

// upgradeShim upgrades the shim server pid and checks, on the same
// connection, that the new image answers.
func upgradeShim(ctx context.Context, pid int, r upgrade.Request) (string, error) {
	sock, err := listeningSocket("/proc", pid)
	if err != nil {
		return "", err
	}
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

// shimPids lists the Tether shim servers: processes running the shim's
// binary with the action serve.
func shimPids(proc string) ([]int, error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
		if err != nil {
			continue // gone, or not ours to read
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(argv) > 1 && filepath.Base(argv[0]) == shimBinary && argv[len(argv)-1] == "serve" {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// listeningSocket finds the path of the unix socket pid listens on, from
// its descriptors and its network namespace's /proc/PID/net/unix.
func listeningSocket(proc string, pid int) (string, error) {
	dir := filepath.Join(proc, strconv.Itoa(pid))
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return "", fmt.Errorf("descriptors of pid %d: %w", pid, err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	f, err := os.Open(filepath.Join(dir, "net", "unix"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	path, err := findListening(f, inodes)
	if err != nil {
		return "", fmt.Errorf("pid %d: %w", pid, err)
	}
	return path, nil
}

// acceptConn is __SO_ACCEPTCON in the Flags column of /proc/net/unix: a
// listening socket.
const acceptConn = 0x10000

// findListening returns the path of the one listening socket of
// /proc/net/unix (r) among inodes.
func findListening(r io.Reader, inodes map[string]bool) (string, error) {
	// Num RefCount Protocol Flags Type St Inode Path
	var found []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 8 || !inodes[string(fields[6])] {
			continue
		}
		flags, err := strconv.ParseUint(string(fields[3]), 16, 32)
		if err != nil || flags&acceptConn == 0 {
			continue
		}
		found = append(found, string(fields[7]))
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if len(found) != 1 {
		return "", fmt.Errorf("want one listening unix socket, found %d (%v): not a shim server?", len(found), found)
	}
	return found[0], nil
}
