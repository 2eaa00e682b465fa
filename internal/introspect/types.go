package introspect

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// SchemaVersion is the version of Snapshot's JSON. A change that removes or
// renames a field, or changes its meaning, bumps it; adding a field does
// not. Decoders refuse a snapshot of another version.
const SchemaVersion = 1

// Snapshot is a shim's state at one moment: the reply of the Snapshot
// method and, with Process filled in from /proc by the tool, the document
// `tether inspect -o json` prints. docs/operators.md describes every field.
type Snapshot struct {
	// Schema is SchemaVersion.
	Schema int `json:"schema"`
	// Shim describes the shim process.
	Shim Shim `json:"shim"`
	// Process is the shim process as /proc shows it; the shim leaves it
	// empty and the tool fills it in.
	Process *ProcStats `json:"process,omitempty"`
	// Connections are the connections to the shim's socket.
	Connections Connections `json:"connections"`
	// Containers are the shim's containers, in id order.
	Containers []Container `json:"containers"`
	// Events are the task events to containerd: queued and counted.
	Events Events `json:"events"`
	// RPC are the counts and latencies of the requests served, one entry
	// per method that was called, in method order.
	RPC []RPCMethod `json:"rpc"`
}

// Shim describes the shim process.
type Shim struct {
	Pid       int    `json:"pid"`
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	// Binary is the path the shim runs from (its os.Executable).
	Binary string `json:"binary"`
	// Namespace is the containerd namespace it serves.
	Namespace string `json:"namespace"`
	// Group is the id it was started with: the group of its containers.
	Group string `json:"group"`
	// Bundle is the bundle it was started in (its first container's).
	Bundle string `json:"bundle"`
	// Socket is the path of its socket.
	Socket string `json:"socket"`
	// Address is containerd's gRPC address; EventsAddress the ttrpc
	// address it forwards events to.
	Address       string `json:"address"`
	EventsAddress string `json:"events_address"`
	// Debug tells whether it was started with -debug.
	Debug     bool      `json:"debug"`
	StartedAt time.Time `json:"started_at"`
	// UptimeSeconds is the time since StartedAt, when the snapshot was
	// taken.
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Goroutines is the number of goroutines.
	Goroutines int `json:"goroutines"`
	// HeapBytes is the memory of live and not yet freed heap objects;
	// GoRuntimeBytes all the memory the Go runtime has mapped.
	HeapBytes      uint64 `json:"heap_bytes"`
	GoRuntimeBytes uint64 `json:"go_runtime_bytes"`
}

// ProcStats is a process as /proc shows it.
type ProcStats struct {
	RSSBytes uint64 `json:"rss_bytes"`
	// PSSBytes is the proportional set size (smaps_rollup); 0 if the
	// kernel does not tell it.
	PSSBytes uint64 `json:"pss_bytes"`
	Threads  int    `json:"threads"`
	FDs      int    `json:"fds"`
}

// Connections are the connections to the shim's socket.
type Connections struct {
	// Open is the number of connections open now; Peers their peers.
	Open  int    `json:"open"`
	Peers []Peer `json:"peers"`
	// Accepted counts the connections admitted since the start, Refused
	// those refused (a peer of another uid).
	Accepted uint64 `json:"accepted"`
	Refused  uint64 `json:"refused"`
}

// Peer is the process at the other end of a connection (SO_PEERCRED, as
// of when it connected).
type Peer struct {
	Pid int `json:"pid"`
	UID int `json:"uid"`
}

// Container is one container of the shim.
type Container struct {
	ID     string `json:"id"`
	Bundle string `json:"bundle"`
	// Status and Pid are the init process's.
	Status string `json:"status"`
	Pid    int    `json:"pid"`
	// Runtime is the OCI runtime and its root.
	Runtime Runtime `json:"runtime"`
	// Cgroup is the init's cgroup path; empty if it was not found.
	Cgroup string `json:"cgroup"`
	// Processes are the init (first) and the exec processes, in exec id
	// order.
	Processes []Process `json:"processes"`
	// Counters count what happened to the container while this shim
	// served it.
	Counters ContainerCounters `json:"counters"`
}

// Runtime is the OCI runtime a container runs with.
type Runtime struct {
	Binary        string `json:"binary"`
	Root          string `json:"root"`
	SystemdCgroup bool   `json:"systemd_cgroup"`
}

// ContainerCounters count what happened to a container.
type ContainerCounters struct {
	// Exits counts the exits of its processes (init and execs), OOMs the
	// OOM kills in its cgroup, Execs the exec processes started.
	Exits uint64 `json:"exits"`
	OOMs  uint64 `json:"ooms"`
	Execs uint64 `json:"execs"`
}

// Process is a container's init or exec process.
type Process struct {
	// ID is the container id for the init, the exec id for an exec;
	// ExecID is empty for the init.
	ID     string `json:"id"`
	ExecID string `json:"exec_id"`
	Pid    int    `json:"pid"`
	Status string `json:"status"`
	// ExitStatus and ExitedAt are set once the process exited.
	ExitStatus *uint32    `json:"exit_status,omitempty"`
	ExitedAt   *time.Time `json:"exited_at,omitempty"`
	Stdio      Stdio      `json:"stdio"`
}

// Stdio is a process's stdio: its mode, the client's endpoints and what
// the shim copied.
type Stdio struct {
	// Mode is StdioMode of the endpoints.
	Mode     string `json:"mode"`
	Stdin    string `json:"stdin"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Terminal bool   `json:"terminal"`
	// OutBytes counts the bytes of output delivered to the client (or
	// the logging binary, or the file); Drops the bytes read from the
	// process that could not be delivered.
	OutBytes uint64 `json:"out_bytes"`
	Drops    uint64 `json:"drops"`
}

// Stdio modes.
const (
	ModeNull     = "null"
	ModeFifo     = "fifo"
	ModeFile     = "file"
	ModeBinary   = "binary"
	ModeTerminal = "terminal"
)

// StdioMode names how a process's output is delivered: ModeTerminal, or
// by the scheme of its stdout (else stderr) endpoint, or ModeNull.
func StdioMode(stdin, stdout, stderr string, terminal bool) string {
	if terminal {
		return ModeTerminal
	}
	out := stdout
	if out == "" {
		out = stderr
	}
	switch {
	case out == "" && stdin == "":
		return ModeNull
	case strings.HasPrefix(out, "file://"):
		return ModeFile
	case strings.HasPrefix(out, "binary://"):
		return ModeBinary
	}
	return ModeFifo
}

// Events are the task events the shim forwards to containerd.
type Events struct {
	// Queued is the number of events not yet delivered; Pending their
	// topics, oldest first (at most MaxPending of them).
	Queued  int      `json:"queued"`
	Pending []string `json:"pending"`
	// Published counts the events queued since the start, Delivered
	// those containerd acknowledged, Retried the failed attempts that
	// were retried, Dropped the events given up on.
	Published uint64 `json:"published"`
	Delivered uint64 `json:"delivered"`
	Retried   uint64 `json:"retried"`
	Dropped   uint64 `json:"dropped"`
}

// MaxPending bounds Events.Pending, so that a shim whose containerd is
// gone answers with a bounded reply.
const MaxPending = 100

// RPCMethod are the counts and latencies of one ttrpc method.
type RPCMethod struct {
	// Method is the full name, "/service/method".
	Method string `json:"method"`
	Count  uint64 `json:"count"`
	// Errors counts the requests answered with an error.
	Errors uint64 `json:"errors"`
	// SumSeconds is the total time spent serving them.
	SumSeconds float64 `json:"sum_seconds"`
	// Buckets are cumulative: Count of requests served in at most LE
	// seconds, for each bound of the histogram (0.5 ms to 10 s).
	Buckets []Bucket `json:"buckets"`
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	LE    float64 `json:"le"`
	Count uint64  `json:"count"`
}

// Limits of a decoded snapshot, well above any real shim's, so that a
// broken or hostile peer cannot make the tool allocate without bound.
const (
	maxContainers = 10000
	maxProcesses  = 10000
)

// ErrSchema is a snapshot of a schema version this tool does not know.
var ErrSchema = errors.New("introspect: unknown snapshot schema")

// DecodeSnapshot decodes and checks a snapshot: its schema is
// SchemaVersion, its counts are within bounds, every container and
// process has an id and histogram buckets are cumulative.
func DecodeSnapshot(data []byte) (*Snapshot, error) {
	var s Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("introspect: decode snapshot: %w", err)
	}
	if s.Schema != SchemaVersion {
		return nil, fmt.Errorf("%w: version %d, this tool reads %d", ErrSchema, s.Schema, SchemaVersion)
	}
	if len(s.Containers) > maxContainers {
		return nil, fmt.Errorf("introspect: snapshot of %d containers (at most %d)", len(s.Containers), maxContainers)
	}
	for _, c := range s.Containers {
		if c.ID == "" {
			return nil, errors.New("introspect: snapshot: a container without an id")
		}
		if len(c.Processes) > maxProcesses {
			return nil, fmt.Errorf("introspect: container %s: %d processes (at most %d)", c.ID, len(c.Processes), maxProcesses)
		}
		for _, p := range c.Processes {
			if p.ID == "" {
				return nil, fmt.Errorf("introspect: container %s: a process without an id", c.ID)
			}
		}
	}
	for _, m := range s.RPC {
		var last uint64
		for _, b := range m.Buckets {
			if b.Count < last || b.Count > m.Count {
				return nil, fmt.Errorf("introspect: rpc %s: buckets are not cumulative", m.Method)
			}
			last = b.Count
		}
	}
	return &s, nil
}
