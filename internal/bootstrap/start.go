package bootstrap

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/bundle"
)

// maxStdin bounds what `start` reads from containerd: a BootstrapParams or
// an options Any is a few KiB.
const maxStdin = 1 << 20

// stdinTimeout bounds the wait for containerd to close stdin.
const stdinTimeout = 5 * time.Second

// Start implements `start`: it finds or launches the server of the
// container's group and writes the answer to stdout. self is the shim binary
// to run as the server.
func Start(ctx context.Context, f Flags, self string, stdin *os.File, stdout io.Writer) error {
	if err := f.validate(); err != nil {
		return err
	}
	in, err := readStdin(stdin)
	if err != nil {
		return err
	}
	req, err := ParseStartInput(in, f)
	if err != nil {
		return err
	}
	bundleDir, err := f.bundleDir()
	if err != nil {
		return err
	}
	b := bundle.New(bundleDir)
	group, err := GroupID(b, f.ID)
	if err != nil {
		return err
	}
	dir := DefaultSocketDir
	if req.Params != nil && req.Params.GetSocketDir() != "" {
		dir = req.Params.GetSocketDir()
	}
	path, err := SocketPath(dir, f.Address, f.Namespace, group)
	if err != nil {
		return err
	}
	address := SocketAddress(path)
	if err := ensureServer(f, self, b.Dir(), dir, path); err != nil {
		return err
	}
	if err := b.WriteAddress(address); err != nil {
		return err
	}
	answer, err := Answer(req.Dialect, address)
	if err != nil {
		return err
	}
	_, err = stdout.Write(answer)
	return err
}

// readStdin reads what containerd wrote, up to maxStdin, waiting at most
// stdinTimeout for EOF. containerd's pipe arrives in blocking mode, where
// no deadline can be set, so it reads a non-blocking duplicate through the
// netpoller. A stdin that cannot take a deadline (/dev/null, a file) ends
// on its own.
func readStdin(f *os.File) ([]byte, error) {
	if f == nil {
		return nil, nil
	}
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	in := os.NewFile(uintptr(fd), "stdin")
	defer in.Close()
	_ = in.SetReadDeadline(time.Now().Add(stdinTimeout))
	data, err := io.ReadAll(io.LimitReader(in, maxStdin))
	if err != nil {
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	return data, nil
}

// ensureServer makes sure a server listens on path: the group's running
// server, or a new one.
func ensureServer(f Flags, self, bundle, dir, path string) error {
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if serving(path) {
		return nil
	}
	ln, err := listen(path)
	if err != nil {
		return err
	}
	// The server owns the socket from now on; closing our listener must not
	// unlink it.
	ln.SetUnlinkOnClose(false)
	defer ln.Close()
	lf, err := ln.File()
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("socket file: %w", err)
	}
	defer lf.Close()
	if err := launch(f, self, bundle, lf); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// serverSetting is a variable of the Go runtime's environment that the
// server runs with a value of its own, and whose caller's value it carries
// in carrier and restores (restoreCallerEnv) once the runtime has read it,
// so that the processes it starts (the OCI runtime, and through it the
// containers, and logging binaries) inherit the environment containerd
// gave the shim.
type serverSetting struct {
	name, carrier string
	// value is the server's value given the caller's (empty if unset).
	value func(caller string) string
}

// serverSettings are the server's own runtime settings:
//
//   - GOMAXPROCS=1. The server runs on one P (see Serve), and it must have
//     one from the first instruction: the Go runtime starts with a P per
//     CPU, package initialisation then allocates from each P's cache, and
//     when Serve cut the Ps to one, the spans cached by the others went
//     back to the heap's central lists. That touched span-set metadata the
//     runtime never returns, by chance: the same shim held 2.2 MB or
//     2.85 MB of anonymous memory from one start to the next
//     (docs/performance.md, "One P from the start").
//   - GODEBUG with disablethp=1 after the caller's settings. With
//     transparent huge pages set to "always" (Debian's and RHEL's kernel
//     default), the kernel backs the heap's first touches with 2 MiB pages
//     and a shim's RSS doubles (docs/performance.md, "Huge pages"). The
//     setting is the runtime's own madvise(MADV_NOHUGEPAGE) of its heap,
//     per mapping, so unlike prctl(PR_SET_THP_DISABLE) it is not inherited
//     by the containers.
//   - GODEBUG with adaptivestackstart=0, likewise. By default each
//     collection sets the stack a new goroutine starts with to the average
//     stack it scanned, and a dead goroutine whose stack has that size keeps
//     it on its P's free list (up to 63 of them) until it is reused, which
//     in an idle shim is never. ttrpc runs two
//     goroutines per connection and one per request: a burst of connections
//     raised the starting stack to 4 KiB and left a shim 260 to 390 kB of
//     such stacks once idle. With the fixed 2 KiB start, a goroutine that
//     grew frees its stack when it ends
//     (TestRegressionBurstStacksKeptWhenIdle; docs/performance.md, "After
//     abuse").
func serverSettings() []serverSetting {
	return []serverSetting{
		{"GOMAXPROCS", "TETHER_CALLER_GOMAXPROCS", func(string) string { return "1" }},
		{"GODEBUG", "TETHER_CALLER_GODEBUG", func(caller string) string {
			if caller == "" {
				return serverGODEBUG
			}
			return caller + "," + serverGODEBUG
		}},
	}
}

// serverGODEBUG is what the server adds to the caller's GODEBUG (see
// serverSettings).
const serverGODEBUG = "disablethp=1,adaptivestackstart=0"

// serverEnv is the server's environment: env with each of serverSettings
// set to the server's value, and the caller's value (empty if unset) in its
// carrier.
func serverEnv(env []string) []string {
	settings := serverSettings()
	out := make([]string, 0, len(env)+2*len(settings))
	caller := make(map[string]string, len(settings))
next:
	for _, kv := range env {
		for _, s := range settings {
			if v, ok := strings.CutPrefix(kv, s.name+"="); ok {
				caller[s.name] = v
				continue next
			}
			if strings.HasPrefix(kv, s.carrier+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	for _, s := range settings {
		out = append(out, s.name+"="+s.value(caller[s.name]), s.carrier+"="+caller[s.name])
	}
	return out
}

// restoreCallerEnv undoes serverEnv in the server's own environment, once
// the Go runtime has read it: each caller's value comes back, or the
// variable goes if the caller had none. A setting without its carrier (a
// server not launched by `start`) is left as it is.
func restoreCallerEnv() error {
	for _, s := range serverSettings() {
		caller, ok := os.LookupEnv(s.carrier)
		if !ok {
			continue
		}
		if err := os.Unsetenv(s.carrier); err != nil {
			return err
		}
		var err error
		if caller == "" {
			err = os.Unsetenv(s.name)
		} else {
			err = os.Setenv(s.name, caller)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// launch runs the server detached: in the bundle, in its own process group,
// with the listening socket as fd 3 and /dev/null as stdio, so that it holds
// none of containerd's pipes, and with containerd's oom_score_adj plus one
// (adjustOOMScore). It does not wait for the server.
func launch(f Flags, self, bundle string, socket *os.File) error {
	args := []string{
		"-namespace", f.Namespace,
		"-id", f.ID,
		"-address", f.Address,
		"-publish-binary", f.PublishBinary,
		"-bundle", bundle,
	}
	if f.Debug {
		args = append(args, "-debug")
	}
	args = append(args, ActionServe)
	cmd := exec.Command(self, args...)
	cmd.Dir = bundle
	cmd.Env = serverEnv(os.Environ())
	cmd.ExtraFiles = []*os.File{socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Cleared by the server in Serve, before it starts any child.
	if err := holdHugePages(); err != nil {
		return fmt.Errorf("launch server: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("launch server: %w", err)
	}
	// Our parent is containerd. The server starts no container before
	// containerd has our answer, so every container inherits the score.
	if err := adjustOOMScore(cmd.Process.Pid, os.Getppid()); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("launch server: %w", err)
	}
	// The server is not our child for long: we exit and it is reparented.
	return cmd.Process.Release()
}
