package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tether-shim/tether/internal/bootstrap"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/procfs"
)

// callTimeout bounds one request to a shim (a CPU profile adds its length).
const callTimeout = 10 * time.Second

// paths are the node's directories the tool looks in.
type paths struct {
	// socketDir holds the shims' sockets.
	socketDir string
	// stateDirs are containerd's task state directories
	// (<state>/io.containerd.runtime.v2.task), which hold
	// <namespace>/<id> bundles.
	stateDirs listFlag
	// runtimeRoots are OCI runtime roots holding <namespace>/<id> state
	// (runc's and crun's, as containerd's shims use them).
	runtimeRoots listFlag
}

// defaultPaths are containerd's defaults.
func defaultPaths() paths {
	return paths{
		socketDir:    bootstrap.DefaultSocketDir,
		stateDirs:    listFlag{"/run/containerd/io.containerd.runtime.v2.task"},
		runtimeRoots: listFlag{"/run/containerd/runc"},
	}
}

// register adds the global flags that set p.
func (p *paths) register(fs *flag.FlagSet) {
	fs.StringVar(&p.socketDir, "socket-dir", p.socketDir, "directory of the shims' sockets")
	fs.Var(&p.stateDirs, "state-dir", "containerd task state directories, comma-separated (<containerd state>/io.containerd.runtime.v2.task)")
	fs.Var(&p.runtimeRoots, "runtime-root", "OCI runtime roots holding <namespace>/<id>, comma-separated")
}

// listFlag is a comma-separated list of paths; setting it replaces the
// default.
type listFlag []string

// String implements flag.Value.
func (l *listFlag) String() string { return strings.Join(*l, ",") }

// Set implements flag.Value: absolute paths, cleaned.
func (l *listFlag) Set(s string) error {
	*l = nil
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%q is not an absolute path", p)
		}
		*l = append(*l, filepath.Clean(p))
	}
	return nil
}

// shim is a Tether shim server found in /proc.
type shim struct {
	Pid int
	// Flags are its command line's.
	Flags bootstrap.Flags
	// Exe is the path it runs from; ExeDeleted is set when that path
	// was replaced or removed since it started.
	Exe        string
	ExeDeleted bool
	// Socket is the path it listens on ("" if none was found).
	Socket string
	// UID is its real uid.
	UID int
}

// bundle is the shim's bundle: its -bundle flag (every Tether server gets
// one), else its working directory.
func (s shim) bundle() string {
	if s.Flags.Bundle != "" {
		return s.Flags.Bundle
	}
	cwd, _, _ := procfs.Link(s.Pid, "cwd")
	return cwd
}

// isShimServer reports whether argv is a Tether shim server's: a shim
// binary (containerd-shim-*: Tether also runs installed as
// containerd-shim-runc-v2, as a drop-in) run with the serve action, which
// only Tether has (containerd's shims run their server without one).
func isShimServer(argv []string) (bootstrap.Flags, bool) {
	if len(argv) < 2 || !strings.HasPrefix(filepath.Base(argv[0]), "containerd-shim-") || argv[len(argv)-1] != bootstrap.ActionServe {
		return bootstrap.Flags{}, false
	}
	f, err := bootstrap.ParseFlags(argv[1:], io.Discard)
	if err != nil || f.Action != bootstrap.ActionServe {
		return bootstrap.Flags{}, false
	}
	return f, true
}

// findShims lists the Tether shim servers of the node, in pid order, with
// the socket each listens on.
func findShims() ([]shim, error) {
	pids, err := procfs.Pids()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	listening, err := listeningSockets()
	if err != nil {
		return nil, err
	}
	var out []shim
	for _, pid := range pids {
		if s, ok := inspectPid(pid, listening); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// inspectPid returns the shim with pid, if pid is one.
func inspectPid(pid int, listening map[uint64]string) (shim, bool) {
	argv, err := procfs.Cmdline(pid)
	if err != nil {
		return shim{}, false
	}
	f, ok := isShimServer(argv)
	if !ok {
		return shim{}, false
	}
	s := shim{Pid: pid, Flags: f, UID: -1}
	s.Exe, s.ExeDeleted, _ = procfs.Link(pid, "exe")
	if data, err := os.ReadFile(filepath.Join(procfs.Root, strconv.Itoa(pid), "status")); err == nil {
		if st, err := procfs.ParseStatus(data); err == nil {
			s.UID = st.UID
		}
	}
	inodes, _ := procfs.SocketInodes(pid)
	for _, ino := range inodes {
		if p, ok := listening[ino]; ok {
			s.Socket = p
			break
		}
	}
	return s, true
}

// listeningSockets maps the inodes of the listening unix sockets bound to
// a path to that path.
func listeningSockets() (map[uint64]string, error) {
	socks, err := procfs.UnixSockets()
	if err != nil {
		return nil, fmt.Errorf("read unix sockets: %w", err)
	}
	out := make(map[uint64]string)
	for _, s := range socks {
		if s.Listening && strings.HasPrefix(s.Path, "/") {
			out[s.Inode] = s.Path
		}
	}
	return out, nil
}

// target is what a SHIM|CONTAINER argument resolved to: a shim, and for a
// container its namespace and id.
type target struct {
	shim          shim
	namespace, id string
}

// pidRef matches a pid.
var pidRef = regexp.MustCompile(`^[0-9]+$`)

// resolveShim resolves a SHIM argument: a pid or a socket path.
func resolveShim(arg string) (shim, error) {
	switch {
	case pidRef.MatchString(arg):
		pid, err := strconv.Atoi(arg)
		if err != nil || pid <= 0 {
			return shim{}, fmt.Errorf("pid %q is out of range", arg)
		}
		argv, err := procfs.Cmdline(pid)
		if errors.Is(err, os.ErrNotExist) {
			return shim{}, fmt.Errorf("no process has pid %d", pid)
		}
		if err != nil {
			return shim{}, fmt.Errorf("process %d: %w", pid, err)
		}
		if _, ok := isShimServer(argv); !ok {
			return shim{}, fmt.Errorf("process %d is not a Tether shim server (it runs %q)", pid, strings.Join(argv, " "))
		}
		listening, err := listeningSockets()
		if err != nil {
			return shim{}, err
		}
		s, _ := inspectPid(pid, listening)
		if s.Socket == "" {
			return shim{}, fmt.Errorf("shim %d listens on no socket", pid)
		}
		return s, nil
	case strings.HasPrefix(arg, "/"):
		shims, err := findShims()
		if err != nil {
			return shim{}, err
		}
		for _, s := range shims {
			if s.Socket == filepath.Clean(arg) {
				return s, nil
			}
		}
		if st, err := os.Stat(arg); err != nil {
			return shim{}, fmt.Errorf("socket %s: %w", arg, err)
		} else if st.Mode().Type() != os.ModeSocket {
			return shim{}, fmt.Errorf("%s is not a socket", arg)
		}
		// A socket no Tether server listens on: let Dial say why
		// (another uid, nobody, another shim).
		return shim{Pid: 0, Socket: filepath.Clean(arg), UID: -1}, nil
	}
	return shim{}, usageError("%q is neither a pid nor a socket path", arg)
}

// resolve resolves a SHIM|CONTAINER argument: a pid, a socket path, or a
// container id (NAMESPACE/ID or ID) that one shim serves.
func resolve(ctx context.Context, arg string) (target, error) {
	if pidRef.MatchString(arg) || strings.HasPrefix(arg, "/") {
		s, err := resolveShim(arg)
		return target{shim: s}, err
	}
	ns, id, scoped := strings.Cut(arg, "/")
	if !scoped {
		ns, id = "", arg
	}
	shims, err := findShims()
	if err != nil {
		return target{}, err
	}
	var found []target
	var unreachable []string
	for _, s := range shims {
		if ns != "" && s.Flags.Namespace != ns {
			continue
		}
		snap, err := snapshotOf(ctx, s)
		if err != nil {
			unreachable = append(unreachable, fmt.Sprintf("shim %d: %v", s.Pid, err))
			continue
		}
		for _, c := range snap.Containers {
			if c.ID == id {
				found = append(found, target{shim: s, namespace: s.Flags.Namespace, id: id})
			}
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		msg := fmt.Sprintf("no Tether shim serves a container %q", arg)
		if len(unreachable) > 0 {
			msg += " (not asked: " + strings.Join(unreachable, "; ") + ")"
		}
		return target{}, errors.New(msg)
	}
	var where []string
	for _, t := range found {
		where = append(where, t.namespace+"/"+t.id)
	}
	slices.Sort(where)
	return target{}, fmt.Errorf("container %q is in several namespaces (%s): name it NAMESPACE/ID", arg, strings.Join(where, ", "))
}

// dial connects to s's socket, bounded by callTimeout, and returns its
// snapshot too: the snapshot's pid is how the tool knows the server on the
// socket is s (SO_PEERCRED names the process that made the socket, the
// shim's `start`). A shim older than the service answers no snapshot; its
// error is returned with the client, which then serves nothing else either.
func dial(ctx context.Context, s shim) (*introspect.Client, *introspect.Snapshot, error) {
	if s.Socket == "" {
		return nil, nil, fmt.Errorf("shim %d listens on no socket", s.Pid)
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	c, err := introspect.Dial(ctx, s.Socket)
	if errors.Is(err, os.ErrNotExist) && s.Pid != 0 {
		return nil, nil, fmt.Errorf("shim %d: its socket %s was removed while it listens on it: nothing can connect to it any more", s.Pid, s.Socket)
	}
	if err != nil {
		return nil, nil, explain(s, err)
	}
	snap, err := c.Snapshot(ctx)
	if err != nil {
		c.Close()
		return nil, nil, explain(s, err)
	}
	if s.Pid != 0 && snap.Shim.Pid != s.Pid {
		c.Close()
		return nil, nil, fmt.Errorf("shim %d: its socket %s was replaced; shim %d listens there now", s.Pid, s.Socket, snap.Shim.Pid)
	}
	return c, snap, nil
}

// snapshotOf asks s for its snapshot.
func snapshotOf(ctx context.Context, s shim) (*introspect.Snapshot, error) {
	c, snap, err := dial(ctx, s)
	if err != nil {
		return nil, err
	}
	c.Close()
	return snap, nil
}

// explain adds to an error of a shim what an operator can do about it.
func explain(s shim, err error) error {
	who := fmt.Sprintf("shim %d", s.Pid)
	if s.Pid == 0 {
		who = "socket " + s.Socket
	}
	switch {
	case errors.Is(err, introspect.ErrNotServed):
		return fmt.Errorf("%s (%s) runs a Tether older than this tool, which does not serve %s; `tether upgrade %d` brings it up to date: %w", who, s.Exe, introspect.ServiceName, s.Pid, introspect.ErrNotServed)
	case errors.Is(err, introspect.ErrOtherUID):
		return fmt.Errorf("%s: run tether as the shim's uid: %w", who, err)
	case errors.Is(err, introspect.ErrNoServer):
		return fmt.Errorf("%s: %w (a leftover: see `tether doctor`)", who, err)
	}
	return fmt.Errorf("%s: %w", who, err)
}
