package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/container"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/paths"
	"github.com/tether-shim/tether/internal/runtime"
)

// noMonitor is the exits.Monitor of `delete`, which runs no exit monitor
// and starts no process it would watch: it holds nothing, and watches and
// signals nothing.
type noMonitor struct{}

// Hold holds nothing.
func (noMonitor) Hold() func() { return func() {} }

// Watch refuses: `delete` watches no process.
func (noMonitor) Watch(pid int, _ func(exits.Exit)) error {
	return fmt.Errorf("delete: watch pid %d: no exit monitor", pid)
}

// Signal refuses: `delete` watches no process.
func (noMonitor) Signal(pid int, _ syscall.Signal) error {
	return fmt.Errorf("delete: signal pid %d: no exit monitor: %w", pid, unix.ESRCH)
}

// Delete implements `delete`, which containerd runs when a server died or a
// start failed, and also after every server it disconnects from. Unless the
// server marked the bundle deleted, it force-deletes the container in the
// runtime and unmounts the rootfs. It removes a dead server's socket, asks
// a live one to leave if it serves nothing (shutdownIfIdle), and prints a DeleteResponse with exit status 137 (SIGKILL). Problems that do
// not stop the cleanup go to warn, which containerd logs as warnings.
func Delete(ctx context.Context, f Flags, stdout, warn io.Writer) error {
	if err := f.validate(); err != nil {
		return err
	}
	if err := container.ValidateID("container", f.ID); err != nil {
		return err
	}
	dir, err := f.bundleDir()
	if err != nil {
		return err
	}
	b := bundle.New(dir)
	pid, _ := runtime.ReadPidFile(b.InitPid())
	// containerd runs `delete` after every server it disconnects from, also
	// after a clean Delete and Shutdown; then the runtime has nothing left.
	if !b.WasDeleted() {
		cleanupRuntime(ctx, f, b, warn)
	}
	if path := removeDeadSocket(b); path != "" {
		if err := shutdownIfIdle(ctx, path, f.Namespace, f.ID); err != nil {
			fmt.Fprintf(warn, "ask the server on %s to leave if it serves nothing: %v\n", path, err)
		}
	}
	resp, err := proto.Marshal(&taskapi.DeleteResponse{
		Pid:        uint32(pid),
		ExitStatus: 128 + uint32(unix.SIGKILL),
		ExitedAt:   timestamppb.New(time.Now()),
	})
	if err != nil {
		return err
	}
	_, err = stdout.Write(resp)
	return err
}

// cleanupRuntime force-deletes the container in its runtime and unmounts
// its rootfs, reporting problems to warn.
func cleanupRuntime(ctx context.Context, f Flags, b bundle.Bundle, warn io.Writer) {
	cfg, err := runtime.LoadConfig(b.RuntimeConfig(), f.Namespace)
	if err != nil {
		fmt.Fprintf(warn, "%v; using %s\n", err, cfg.Binary)
	}
	cfg.Log = b.RuntimeLog()
	rt := runtime.New(cfg, noMonitor{})
	if err := rt.Delete(ctx, f.ID, true); err != nil {
		fmt.Fprintf(warn, "%v\n", err)
	}
	if err := container.UnmountRootfs(b); err != nil {
		fmt.Fprintf(warn, "%v\n", err)
	}
}

// removeDeadSocket removes the socket named in the bundle's address file, if it has
// the form of a Tether socket, when no server answers on it any more: a server killed with SIGKILL cannot
// remove its own. It returns the socket's path if a server still answers
// on it, else "".
func removeDeadSocket(b bundle.Bundle) string {
	address, err := b.ReadAddress()
	if err != nil {
		return ""
	}
	path := socketPathOf(strings.TrimSpace(address))
	if st, err := os.Lstat(path); err != nil || st.Mode().Type() != os.ModeSocket ||
		!paths.CleanAbs(path) || !isSocketName(filepath.Base(path)) {
		return ""
	}
	unlock, err := lockDir(filepath.Dir(path))
	if err != nil {
		return ""
	}
	defer unlock()
	if !serving(path) {
		os.Remove(path)
		return ""
	}
	return path
}

// shutdownAskTimeout bounds the Shutdown request `delete` sends.
const shutdownAskTimeout = 3 * time.Second

// shutdownIfIdle sends the live server on path the Shutdown that containerd
// sends after a Delete: the server leaves only if it serves no container
// and creates none, so a group's server with other containers stays.
// containerd runs `delete` for a task it gives up on; when that task never
// reached the server (containerd died between `start` and Create, and on
// restart found no such task in it), nothing else ever asked that server
// to leave, and it served nothing until the node rebooted.
func shutdownIfIdle(ctx context.Context, path, ns, id string) error {
	ctx, cancel := context.WithTimeout(ctx, shutdownAskTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{"containerd-namespace-ttrpc": []string{ns}})
	_, err = taskapi.NewTTRPCTaskClient(c).Shutdown(ctx, &taskapi.ShutdownRequest{ID: id})
	if errors.Is(err, ttrpc.ErrClosed) {
		// A server that obeys leaves at once, and its answer may not
		// get out before the connection closes: it did as asked
		// (containerd reads a Shutdown the same way).
		return nil
	}
	return err
}
