package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/procfs"
)

func runInspect(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("inspect")
	out := outputFlag(fs)
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError("inspect takes one SHIM or CONTAINER")
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	t, err := resolve(ctx, rest[0])
	if err != nil {
		return err
	}
	snap, err := snapshotOf(ctx, t.shim)
	if err != nil {
		return err
	}
	if st, err := procfs.Stats(snap.Shim.Pid); err == nil {
		snap.Process = &st
	}
	if t.id != "" {
		snap.Containers = onlyContainer(snap.Containers, t.id)
	}
	if *out == "json" {
		return writeJSON(e.stdout, snap)
	}
	return writeSnapshot(e.stdout, snap)
}

// onlyContainer returns the entry of id in cs (none if it is gone).
func onlyContainer(cs []introspect.Container, id string) []introspect.Container {
	for _, c := range cs {
		if c.ID == id {
			return []introspect.Container{c}
		}
	}
	return []introspect.Container{}
}

// writeSnapshot writes snap for a reader.
func writeSnapshot(w io.Writer, snap *introspect.Snapshot) error {
	s := snap.Shim
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "shim\t%d, Tether %s (%s)\n", s.Pid, s.Version, s.GoVersion)
	fmt.Fprintf(tw, "namespace\t%s\n", s.Namespace)
	fmt.Fprintf(tw, "group\t%s\n", s.Group)
	fmt.Fprintf(tw, "binary\t%s\n", s.Binary)
	fmt.Fprintf(tw, "socket\t%s\n", s.Socket)
	fmt.Fprintf(tw, "bundle\t%s\n", s.Bundle)
	fmt.Fprintf(tw, "containerd\t%s (events to %s)\n", orNone(s.Address), orNone(s.EventsAddress))
	fmt.Fprintf(tw, "started\t%s, up %s%s\n", s.StartedAt.UTC().Format(time.RFC3339), roundDuration(time.Duration(s.UptimeSeconds*float64(time.Second))), map[bool]string{true: ", -debug", false: ""}[s.Debug])
	if p := snap.Process; p != nil {
		fmt.Fprintf(tw, "memory\tRSS %s, PSS %s, Go heap %s, Go runtime %s\n", humanBytes(p.RSSBytes), humanBytes(p.PSSBytes), humanBytes(s.HeapBytes), humanBytes(s.GoRuntimeBytes))
		fmt.Fprintf(tw, "threads\t%d, fds %d, goroutines %d\n", p.Threads, p.FDs, s.Goroutines)
	} else {
		fmt.Fprintf(tw, "memory\tGo heap %s, Go runtime %s\n", humanBytes(s.HeapBytes), humanBytes(s.GoRuntimeBytes))
		fmt.Fprintf(tw, "goroutines\t%d\n", s.Goroutines)
	}
	c := snap.Connections
	fmt.Fprintf(tw, "connections\t%d open%s; %d accepted, %d refused\n", c.Open, peerList(c.Peers), c.Accepted, c.Refused)
	ev := snap.Events
	fmt.Fprintf(tw, "events\t%d queued; %d published, %d delivered, %d retried, %d dropped\n", ev.Queued, ev.Published, ev.Delivered, ev.Retried, ev.Dropped)
	if len(ev.Pending) > 0 {
		fmt.Fprintf(tw, "pending\t%s\n", strings.Join(ev.Pending, ", "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\ncontainers: %d\n", len(snap.Containers))
	for _, ct := range snap.Containers {
		writeContainer(w, ct)
	}
	if len(snap.RPC) > 0 {
		fmt.Fprintln(w, "\nrequests:")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  METHOD\tCOUNT\tERRORS\tMEAN")
		for _, m := range snap.RPC {
			mean := "-"
			if m.Count > 0 {
				mean = roundDuration(time.Duration(m.SumSeconds / float64(m.Count) * float64(time.Second)))
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\n", m.Method, m.Count, m.Errors, mean)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// writeContainer writes one container and its processes.
func writeContainer(w io.Writer, c introspect.Container) {
	fmt.Fprintf(w, "\n%s: %s, pid %d\n", c.ID, c.Status, c.Pid)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  bundle\t%s\n", c.Bundle)
	fmt.Fprintf(tw, "  runtime\t%s (root %s%s)\n", orNone(c.Runtime.Binary), orNone(c.Runtime.Root), map[bool]string{true: ", systemd cgroup", false: ""}[c.Runtime.SystemdCgroup])
	fmt.Fprintf(tw, "  cgroup\t%s\n", orNone(c.Cgroup))
	fmt.Fprintf(tw, "  counters\t%d exits, %d OOM kills, %d execs\n", c.Counters.Exits, c.Counters.OOMs, c.Counters.Execs)
	_ = tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  PROCESS\tPID\tSTATUS\tEXIT\tSTDIO\tOUT\tDROPS\tENDPOINTS")
	for _, p := range c.Processes {
		name := p.ID
		if p.ExecID == "" {
			name += " (init)"
		}
		exit := "-"
		if p.ExitStatus != nil {
			exit = fmt.Sprint(*p.ExitStatus)
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", name, p.Pid, p.Status, exit, p.Stdio.Mode, humanBytes(p.Stdio.OutBytes), p.Stdio.Drops, endpoints(p.Stdio))
	}
	_ = tw.Flush()
}

// endpoints lists a process's stdio endpoints.
func endpoints(s introspect.Stdio) string {
	var parts []string
	for _, e := range []struct{ name, v string }{{"in", s.Stdin}, {"out", s.Stdout}, {"err", s.Stderr}} {
		if e.v != "" {
			parts = append(parts, e.name+"="+e.v)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// peerList formats the peers of the open connections.
func peerList(peers []introspect.Peer) string {
	if len(peers) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(" (peer pids")
	for _, p := range peers {
		fmt.Fprintf(&b, " %d", p.Pid)
	}
	b.WriteString(")")
	return b.String()
}

// roundDuration shortens d for display: whole seconds above a minute,
// milliseconds above a second, microseconds below.
func roundDuration(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Microsecond).String()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
