package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/bootstrap"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/procfs"
)

// Kinds of findings of `tether doctor`.
const (
	kindDeadSocket    = "dead-socket"
	kindIdleShim      = "idle-shim"
	kindLostContainer = "lost-container"
	kindOrphanState   = "orphan-runtime-state"
	kindLiveState     = "runtime-state-without-shim"
	kindStaleMount    = "stale-mount"
	kindStaleBundle   = "stale-bundle"
	kindUnanswered    = "shim-not-inspected"
)

// taskStateDirName is the name of containerd's task state directory,
// <containerd state>/io.containerd.runtime.v2.task, which holds the
// bundles as <namespace>/<id>.
const taskStateDirName = "io.containerd.runtime.v2.task"

// Bounds of doctor's probes.
const (
	probeTimeout   = time.Second
	runtimeTimeout = 30 * time.Second
	defaultGrace   = time.Minute
)

// finding is one thing doctor found; its JSON is `doctor -o json`'s
// (docs/operators.md).
type finding struct {
	Kind string `json:"kind"`
	// Path is the socket, directory or mount point; Pid the shim's.
	Path      string `json:"path,omitempty"`
	Pid       int    `json:"pid,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	ID        string `json:"id,omitempty"`
	// Why says why it is a leak.
	Why string `json:"why"`
	// Fixable: --fix removes it, because it is provably dead. Fixed and
	// FixError tell what --fix did.
	Fixable  bool   `json:"fixable"`
	Fixed    bool   `json:"fixed"`
	FixError string `json:"fix_error,omitempty"`
	// fix removes it; nil unless Fixable.
	fix func(ctx context.Context) error
}

func runDoctor(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("doctor")
	fix := fs.Bool("fix", false, "remove what is provably dead")
	out := outputFlag(fs)
	grace := fs.Duration("grace", defaultGrace, "a bundle younger than this may be one containerd is creating: not reported")
	namespace := fs.String("namespace", "", "look only at this containerd namespace (sockets, which have none, are always checked)")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageError("doctor takes no arguments")
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	n, err := survey(ctx, e.paths)
	if err != nil {
		return err
	}
	findings := n.diagnose(*grace, time.Now())
	if *namespace != "" {
		findings = slices.DeleteFunc(findings, func(f finding) bool { return f.Kind != kindDeadSocket && f.Namespace != *namespace })
	}
	failed := 0
	if *fix {
		for i := range findings {
			f := &findings[i]
			if !f.Fixable {
				continue
			}
			if err := f.fix(ctx); err != nil {
				f.FixError = err.Error()
				failed++
			} else {
				f.Fixed = true
			}
		}
	}
	if findings == nil {
		findings = []finding{} // [] in the JSON, never null
	}
	if *out == "json" {
		err = writeJSON(e.stdout, findings)
	} else {
		err = writeFindings(e.stdout, findings, *fix)
	}
	if err == nil && failed > 0 {
		err = fmt.Errorf("%d of the fixes failed", failed)
	}
	return err
}

// writeFindings writes findings for a reader.
func writeFindings(w io.Writer, findings []finding, fixing bool) error {
	if len(findings) == 0 {
		_, err := fmt.Fprintln(w, "no leaks found")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tWHAT\tSTATE\tWHY")
	for _, f := range findings {
		what := f.Path
		if f.Pid != 0 {
			what = fmt.Sprintf("pid %d %s", f.Pid, f.Path)
		}
		state := "not fixable"
		switch {
		case f.Fixed:
			state = "removed"
		case f.FixError != "":
			state = "fix failed: " + f.FixError
		case f.Fixable && fixing:
			state = "not removed"
		case f.Fixable:
			state = "fixable (--fix)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Kind, what, state, f.Why)
	}
	return tw.Flush()
}

// node is what doctor surveyed of the node.
type node struct {
	paths paths
	// shims are the Tether servers; snaps their snapshots by pid (absent
	// for one that did not answer; snapErr says why).
	shims   []shim
	snaps   map[int]*introspect.Snapshot
	snapErr map[int]error
	// served holds "namespace/id" of every container a Tether shim
	// serves.
	served map[string]bool
	// listening holds the paths of the listening unix sockets.
	listening map[string]bool
	// cwds holds the working directories of every process.
	cwds map[string]bool
	// mounts are this process's mounts.
	mounts []procfs.Mount
	// stateDirs and runtimeRoots are the flags' and those the shims use.
	stateDirs, runtimeRoots []string
	// runtime are the containers of the runtime roots, with the status
	// their runtime gives.
	runtime []runtimeContainer
}

// survey reads the node.
func survey(ctx context.Context, p paths) (*node, error) {
	n := &node{
		paths:     p,
		snaps:     make(map[int]*introspect.Snapshot),
		snapErr:   make(map[int]error),
		served:    make(map[string]bool),
		listening: make(map[string]bool),
		cwds:      make(map[string]bool),
	}
	var err error
	if n.shims, err = findShims(); err != nil {
		return nil, err
	}
	socks, err := listeningSockets()
	if err != nil {
		return nil, err
	}
	for _, path := range socks {
		n.listening[path] = true
	}
	if n.mounts, err = procfs.Mounts(); err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	pids, err := procfs.Pids()
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		if cwd, deleted, err := procfs.Link(pid, "cwd"); err == nil && !deleted {
			n.cwds[cwd] = true
		}
	}
	n.stateDirs = slices.Clone(p.stateDirs)
	n.runtimeRoots = slices.Clone(p.runtimeRoots)
	for _, s := range n.shims {
		// Only a directory containerd names so is taken for a task state
		// directory: whatever is two levels below it may be removed.
		if sd := filepath.Dir(filepath.Dir(s.bundle())); filepath.Base(sd) == taskStateDirName {
			n.stateDirs = appendNew(n.stateDirs, sd)
		}
		snap, err := snapshotOf(ctx, s)
		if err != nil {
			n.snapErr[s.Pid] = err
			continue
		}
		n.snaps[s.Pid] = snap
		for _, c := range snap.Containers {
			n.served[s.Flags.Namespace+"/"+c.ID] = true
			if c.Runtime.Root != "" {
				n.runtimeRoots = appendNew(n.runtimeRoots, filepath.Dir(c.Runtime.Root))
			}
		}
	}
	n.runtime = n.runtimeContainers(ctx)
	return n, nil
}

// appendNew appends v to list unless it is there.
func appendNew(list []string, v string) []string {
	if slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}

// diagnose lists the findings, in a fixed order of kinds: sockets, shims,
// runtime state, mounts, bundles. A fix of a later finding may depend on
// an earlier one's (a bundle is removed only once unmounted).
func (n *node) diagnose(grace time.Duration, now time.Time) []finding {
	var out []finding
	out = append(out, n.deadSockets()...)
	out = append(out, n.shimFindings()...)
	out = append(out, n.runtimeState()...)
	out = append(out, n.staleMounts()...)
	out = append(out, n.staleBundles(grace, now)...)
	return out
}

// deadSockets finds the sockets of the socket directory that no process
// listens on and whose connect is refused.
func (n *node) deadSockets() []finding {
	dir := n.paths.socketDir
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []finding
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if e.Type() != os.ModeSocket || n.listening[path] || !refused(path) {
			continue
		}
		out = append(out, finding{
			Kind: kindDeadSocket, Path: path, Fixable: true,
			Why: "no process listens on it (/proc/net/unix) and connect(2) is refused: its server died without removing it",
			fix: func(context.Context) error { return removeDeadSocket(dir, path) },
		})
	}
	return out
}

// refused reports whether connecting to path is refused: nobody listens.
func refused(path string) bool {
	conn, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// removeDeadSocket removes path under the socket directory's lock, once
// more finding it refused.
func removeDeadSocket(dir, path string) error {
	unlock, err := bootstrap.LockSocketDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if !refused(path) {
		return errors.New("a server answers on it now")
	}
	return os.Remove(path)
}

// shimFindings finds shims that serve nothing and whose bundle is gone,
// containers whose bundle is gone, and shims that could not be asked.
func (n *node) shimFindings() []finding {
	var out []finding
	for _, s := range n.shims {
		snap, ok := n.snaps[s.Pid]
		if !ok {
			out = append(out, finding{Kind: kindUnanswered, Pid: s.Pid, Path: s.Socket, Namespace: s.Flags.Namespace,
				Why: fmt.Sprintf("its containers are not checked: %v", n.snapErr[s.Pid])})
			continue
		}
		bundle := s.bundle()
		if len(snap.Containers) == 0 && bundle != "" && !exists(bundle) {
			s := s
			out = append(out, finding{
				Kind: kindIdleShim, Pid: s.Pid, Path: bundle, Namespace: s.Flags.Namespace, ID: s.Flags.ID, Fixable: true,
				Why: "its bundle is gone and it serves no container: containerd will never ask it anything again",
				fix: func(ctx context.Context) error {
					ctx, cancel := context.WithTimeout(ctx, callTimeout)
					defer cancel()
					return bootstrap.ShutdownIfIdle(ctx, s.Socket, s.Flags.Namespace, s.Flags.ID)
				},
			})
		}
		for _, c := range snap.Containers {
			if exists(c.Bundle) {
				continue
			}
			why := "its bundle is gone: containerd no longer knows the task"
			if !exists(filepath.Dir(c.Bundle)) {
				why = "its namespace's task directory is gone: the namespace was removed under it"
			}
			out = append(out, finding{Kind: kindLostContainer, Pid: s.Pid, Path: c.Bundle, Namespace: s.Flags.Namespace, ID: c.ID,
				Why: why + "; its processes still run, so it is not removed: kill it, then run doctor again"})
		}
	}
	return out
}

// hasShim reports whether a shim serves container ns/id: a Tether shim
// lists it, or its bundle in a state directory names a socket that a
// process listens on (address, or containerd 2's bootstrap.json), or a
// process works in that bundle (containerd starts every shim there).
func (n *node) hasShim(ns, id string) bool {
	if n.served[ns+"/"+id] {
		return true
	}
	for _, sd := range n.stateDirs {
		b := filepath.Join(sd, ns, id)
		if n.cwds[b] {
			return true
		}
		for _, a := range bundleAddresses(b) {
			if n.listening[a] {
				return true
			}
		}
	}
	return false
}

// bundleAddresses returns the socket paths a bundle's address and
// bootstrap.json name.
func bundleAddresses(bundle string) []string {
	var out []string
	if data, err := os.ReadFile(filepath.Join(bundle, "address")); err == nil {
		out = append(out, strings.TrimPrefix(strings.TrimSpace(string(data)), "unix://"))
	}
	if data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var b struct {
			Address string `json:"address"`
		}
		if json.Unmarshal(data, &b) == nil && b.Address != "" {
			out = append(out, strings.TrimPrefix(b.Address, "unix://"))
		}
	}
	return out
}

// runtimeContainer is a container's state in a runtime root.
type runtimeContainer struct {
	root, ns, id, binary string
	// status is what the runtime's state command says; statusErr why it
	// could not say.
	status    string
	statusErr error
}

// runtimeContainers lists the containers of every runtime root:
// <root>/<namespace>/<id> with runc's state.json (binary runc) or crun's
// status (binary crun), and asks the runtime for each one's status.
func (n *node) runtimeContainers(ctx context.Context) []runtimeContainer {
	var out []runtimeContainer
	for _, root := range n.runtimeRoots {
		eachNamespaced(root, func(ns, id string) {
			dir := filepath.Join(root, ns, id)
			rc := runtimeContainer{root: filepath.Join(root, ns), ns: ns, id: id}
			switch {
			case exists(filepath.Join(dir, "state.json")):
				rc.binary = "runc"
			case exists(filepath.Join(dir, "status")):
				rc.binary = "crun"
			default:
				return
			}
			rc.status, rc.statusErr = runtimeStatus(ctx, rc)
			out = append(out, rc)
		})
	}
	return out
}

// eachNamespaced calls f for every directory <dir>/<namespace>/<id>, in
// name order; unreadable directories are skipped.
func eachNamespaced(dir string, f func(ns, id string)) {
	nss, _ := os.ReadDir(dir)
	for _, ns := range nss {
		if !ns.IsDir() {
			continue
		}
		ids, _ := os.ReadDir(filepath.Join(dir, ns.Name()))
		for _, id := range ids {
			if id.IsDir() {
				f(ns.Name(), id.Name())
			}
		}
	}
}

// runtimeStatus asks the runtime for the container's status (`state`):
// stopped, running, created, paused.
func runtimeStatus(ctx context.Context, rc runtimeContainer) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, runtimeTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, rc.binary, "--root", rc.root, "state", rc.id).Output()
	if err != nil {
		return "", fmt.Errorf("%s state %s: %w", rc.binary, rc.id, err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.Status == "" {
		return "", fmt.Errorf("%s state %s: unreadable: %q", rc.binary, rc.id, out)
	}
	return st.Status, nil
}

// runtimeState finds runtime state no shim serves: stopped (fixable: the
// runtime's delete) or with processes still running (not).
func (n *node) runtimeState() []finding {
	var out []finding
	for _, rc := range n.runtime {
		if n.hasShim(rc.ns, rc.id) {
			continue
		}
		dir := filepath.Join(rc.root, rc.id)
		status, err := rc.status, rc.statusErr
		if err != nil {
			out = append(out, finding{Kind: kindLiveState, Path: dir, Namespace: rc.ns, ID: rc.id,
				Why: fmt.Sprintf("no shim serves it, and its state could not be read (%v)", err)})
			continue
		}
		if status != "stopped" {
			out = append(out, finding{Kind: kindLiveState, Path: dir, Namespace: rc.ns, ID: rc.id,
				Why: fmt.Sprintf("no shim serves it, but %s says it is %s: its processes run with nobody to report their exit; not removed", rc.binary, status)})
			continue
		}
		rc := rc
		out = append(out, finding{
			Kind: kindOrphanState, Path: dir, Namespace: rc.ns, ID: rc.id, Fixable: true,
			Why: fmt.Sprintf("no shim serves it and %s says it is stopped: nothing will ever delete it", rc.binary),
			fix: func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, runtimeTimeout)
				defer cancel()
				if out, err := exec.CommandContext(ctx, rc.binary, "--root", rc.root, "delete", "--force", rc.id).CombinedOutput(); err != nil {
					return fmt.Errorf("%s delete: %w: %s", rc.binary, err, strings.TrimSpace(string(out)))
				}
				return nil
			},
		})
	}
	return out
}

// bundleOf tells whether path is <state dir>/<namespace>/<id>[/rest] and
// returns the parts.
func (n *node) bundleOf(path string) (sd, ns, id, rest string, ok bool) {
	for _, sd := range n.stateDirs {
		rel, found := strings.CutPrefix(path, sd+"/")
		if !found {
			continue
		}
		parts := strings.SplitN(rel, "/", 3)
		if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
			continue
		}
		if len(parts) == 3 {
			rest = parts[2]
		}
		return sd, parts[0], parts[1], rest, true
	}
	return "", "", "", "", false
}

// liveRuntime reports whether the runtime runs container ns/id (any
// status but stopped, or one it cannot tell).
func (n *node) liveRuntime(ns, id string) bool {
	for _, rc := range n.runtime {
		if rc.ns == ns && rc.id == id && (rc.statusErr != nil || rc.status != "stopped") {
			return true
		}
	}
	return false
}

// staleMounts finds rootfs mounts of bundles that no shim serves and no
// runtime runs.
func (n *node) staleMounts() []finding {
	var out []finding
	for i := len(n.mounts) - 1; i >= 0; i-- {
		m := n.mounts[i]
		_, ns, id, rest, ok := n.bundleOf(m.Point)
		if !ok || rest != "rootfs" || n.hasShim(ns, id) || n.liveRuntime(ns, id) {
			continue
		}
		point := m.Point
		out = append(out, finding{
			Kind: kindStaleMount, Path: point, Namespace: ns, ID: id, Fixable: true,
			Why: fmt.Sprintf("the rootfs (%s %s) of a container no shim serves and no runtime runs", m.FSType, m.Source),
			fix: func(context.Context) error {
				if err := unix.Unmount(point, 0); err != nil {
					return fmt.Errorf("unmount: %w", err)
				}
				return nil
			},
		})
	}
	return out
}

// staleBundles finds bundles older than grace that no shim serves and no
// runtime runs.
func (n *node) staleBundles(grace time.Duration, now time.Time) []finding {
	var out []finding
	for _, sd := range n.stateDirs {
		eachNamespaced(sd, func(ns, id string) {
			if n.hasShim(ns, id) || n.liveRuntime(ns, id) {
				return
			}
			dir := filepath.Join(sd, ns, id)
			info, err := os.Lstat(dir)
			if err != nil || now.Sub(info.ModTime()) < grace || !isBundle(dir) {
				return
			}
			out = append(out, finding{
				Kind: kindStaleBundle, Path: dir, Namespace: ns, ID: id, Fixable: true,
				Why: "no shim serves it (no process works in it, no socket it names answers) and no runtime runs it",
				fix: func(context.Context) error { return removeBundle(dir) },
			})
		})
	}
	return out
}

// isBundle reports whether dir looks like a bundle containerd made: it
// holds the config.json containerd writes before it starts a shim, or a
// rootfs directory.
func isBundle(dir string) bool {
	return exists(filepath.Join(dir, "config.json")) || exists(filepath.Join(dir, "rootfs"))
}

// removeBundle removes a bundle directory, refusing if anything is mounted
// in it (a rootfs still mounted would have its files removed with it) and
// never crossing into another filesystem.
func removeBundle(dir string) error {
	mounts, err := procfs.Mounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if strings.HasPrefix(m.Point, dir+"/") {
			return fmt.Errorf("%s is still mounted", m.Point)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		return err
	}
	return removeSameDev(dir, st.Dev)
}

// removeSameDev removes dir and its content, refusing any directory on
// another device than dev.
func removeSameDev(dir string, dev uint64) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() {
			var st syscall.Stat_t
			if err := syscall.Lstat(p, &st); err != nil {
				return err
			}
			if st.Dev != dev {
				return fmt.Errorf("%s is on another filesystem (device %s)", p, strconv.FormatUint(st.Dev, 10))
			}
			if err := removeSameDev(p, dev); err != nil {
				return err
			}
			continue
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return os.Remove(dir)
}
