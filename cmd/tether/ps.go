package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tether-shim/tether/internal/procfs"
)

// versionTimeout bounds `<shim binary> -v`, run for a shim that does not
// tell its version over its socket.
const versionTimeout = 5 * time.Second

// psRow is one shim of `tether ps`; its JSON is `tether ps -o json`'s
// (docs/operators.md).
type psRow struct {
	Pid       int    `json:"pid"`
	Namespace string `json:"namespace"`
	Group     string `json:"group"`
	// Tasks is the number of containers; null when the shim did not say.
	Tasks   *int   `json:"tasks"`
	Version string `json:"version"`
	Binary  string `json:"binary"`
	// OnDisk compares the binary now at Binary with the running one:
	// same, newer, older, different or missing.
	OnDisk   string `json:"binary_on_disk"`
	RSSBytes uint64 `json:"rss_bytes"`
	PSSBytes uint64 `json:"pss_bytes"`
	Socket   string `json:"socket"`
	// Error is why the shim could not be asked, if it could not.
	Error string `json:"error,omitempty"`
}

// Values of psRow.OnDisk.
const (
	diskSame      = "same"
	diskNewer     = "newer"
	diskOlder     = "older"
	diskDifferent = "different"
	diskMissing   = "missing"
)

func runPs(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("ps")
	out := outputFlag(fs)
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageError("ps takes no arguments")
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	shims, err := findShims()
	if err != nil {
		return err
	}
	rows := make([]psRow, 0, len(shims))
	for _, s := range shims {
		rows = append(rows, psRowOf(ctx, s))
	}
	if *out == "json" {
		return writeJSON(e.stdout, rows)
	}
	return writePsTable(e.stdout, rows)
}

// psRowOf describes s: from /proc, and from its snapshot when it gives one.
func psRowOf(ctx context.Context, s shim) psRow {
	r := psRow{Pid: s.Pid, Namespace: s.Flags.Namespace, Group: s.Flags.ID, Binary: s.Exe, Socket: s.Socket}
	r.OnDisk = compareBinary(s.Pid, s.Exe)
	if st, err := procfs.Stats(s.Pid); err == nil {
		r.RSSBytes, r.PSSBytes = st.RSSBytes, st.PSSBytes
	}
	if me := os.Geteuid(); s.UID != me {
		// Not asked, and its binary never run: a process of another uid
		// that looks like a shim is not one this tool may trust.
		r.Error = fmt.Sprintf("shim %d runs as uid %d, this is uid %d: run tether as the shim's uid", s.Pid, s.UID, me)
		r.Version = "?"
		return r
	}
	snap, err := snapshotOf(ctx, s)
	if err != nil {
		r.Error = err.Error()
		r.Version = runningVersion(ctx, s.Pid)
		return r
	}
	n := len(snap.Containers)
	r.Tasks = &n
	r.Version = snap.Shim.Version
	return r
}

// compareBinary compares the file now at path with the image pid runs.
func compareBinary(pid int, path string) string {
	var running, disk syscall.Stat_t
	if err := syscall.Stat(procfs.ExeFile(pid), &running); err != nil {
		return diskMissing
	}
	if err := syscall.Stat(path, &disk); err != nil {
		return diskMissing
	}
	return compareStat(running, disk)
}

// compareStat compares two stats of a binary: the same file, or which one
// was modified later.
func compareStat(running, disk syscall.Stat_t) string {
	if running.Dev == disk.Dev && running.Ino == disk.Ino {
		return diskSame
	}
	rt := time.Unix(running.Mtim.Unix())
	dt := time.Unix(disk.Mtim.Unix())
	switch {
	case dt.After(rt):
		return diskNewer
	case dt.Before(rt):
		return diskOlder
	}
	return diskDifferent
}

// runningVersion asks the image pid runs for its version (`-v`), for a
// shim of this uid that cannot tell it over its socket; "?" if that fails.
func runningVersion(ctx context.Context, pid int) string {
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, procfs.ExeFile(pid), "-v").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return "?"
	}
	return f[1]
}

// writePsTable writes rows as an aligned table.
func writePsTable(w io.Writer, rows []psRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tNAMESPACE\tGROUP\tTASKS\tVERSION\tBINARY\tON DISK\tRSS\tPSS")
	for _, r := range rows {
		tasks := "?"
		if r.Tasks != nil {
			tasks = strconv.Itoa(*r.Tasks)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Pid, r.Namespace, r.Group, tasks, r.Version, r.Binary, r.OnDisk, humanBytes(r.RSSBytes), humanBytes(r.PSSBytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintln(w, r.Error)
		}
	}
	return nil
}

// humanBytes formats n in binary units, to one decimal.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
