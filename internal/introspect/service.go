package introspect

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// ServiceName is the ttrpc service the shim serves for the tool.
const ServiceName = "tether.introspect.v1.Introspect"

// Methods of ServiceName. Each takes and returns a google.protobuf.Any of
// type BytesType whose value is the message: a JSON request
// (ProfileRequest for Profile, empty for the others) and, in return, a
// JSON Snapshot, the text of the goroutine dump, or a profile in pprof's
// format.
const (
	MethodSnapshot = "Snapshot"
	MethodStacks   = "Stacks"
	MethodProfile  = "Profile"
)

// BytesType is the type URL of the google.protobuf.Any that carries every
// request and reply of ServiceName, its value the bytes the method takes
// or gives. An Any, not a google.protobuf.BytesValue: the shim links anypb
// anyway (the task API), and linking wrapperspb would cost every shim the
// heap its init registers, about 12 kB for good (docs/performance.md).
const BytesType = "tether.introspect.v1/bytes"

// Profile kinds.
const (
	ProfileHeap = "heap"
	ProfileCPU  = "cpu"
)

// Bounds of a CPU profile's duration.
const (
	DefaultCPUSeconds = 5
	MaxCPUSeconds     = 60
)

// ProfileRequest asks for a profile: Kind ProfileHeap or ProfileCPU, the
// latter over Seconds (DefaultCPUSeconds if 0, at most MaxCPUSeconds).
type ProfileRequest struct {
	Kind    string `json:"kind"`
	Seconds int    `json:"seconds,omitempty"`
}

// maxReply is ttrpc's limit on a message, less room for its framing.
const maxReply = 4<<20 - 4<<10

// Source is the shim's containers, as the task service knows them.
type Source interface {
	// Containers returns a snapshot of every container, in id order,
	// with runtime and processes filled in (Counters are added by the
	// service). It never waits on a runtime command.
	Containers() []Container
}

// Config is what a Service reports from.
type Config struct {
	// Shim is the static part of Shim: everything but UptimeSeconds,
	// Goroutines and the memory figures, which the Service fills in.
	Shim Shim
	// Source gives the containers.
	Source Source
	// Counters, if set, gives each container's Counters.
	Counters *CountingSink
	// Events, if set, reports the event queue and its counters.
	Events func() Events
	// Connections, if set, reports the socket's connections.
	Connections func() Connections
	// RPC, if set, gives the RPC counts and latencies.
	RPC *RPCStats
}

// Service serves ServiceName. Create it with NewService.
type Service struct {
	cfg Config
	// cpu serialises CPU profiles: the runtime runs one at a time.
	cpu sync.Mutex
}

// NewService returns a Service reporting from cfg; cfg.Source must not be
// nil.
func NewService(cfg Config) *Service {
	if cfg.Source == nil {
		panic("introspect: NewService with a nil Source")
	}
	return &Service{cfg: cfg}
}

// Register serves s under ServiceName on srv.
func (s *Service) Register(srv *ttrpc.Server) {
	srv.RegisterService(ServiceName, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		MethodSnapshot: bytesMethod(func(ctx context.Context, _ []byte) ([]byte, error) {
			return json.Marshal(s.Snapshot())
		}),
		MethodStacks: bytesMethod(func(ctx context.Context, _ []byte) ([]byte, error) {
			return s.Stacks()
		}),
		MethodProfile: bytesMethod(func(ctx context.Context, req []byte) ([]byte, error) {
			var r ProfileRequest
			if err := json.Unmarshal(req, &r); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "profile request: %v", err)
			}
			return s.Profile(ctx, r)
		}),
	}})
}

// bytesMethod adapts a handler of JSON or raw bytes to ttrpc. A request
// must be of BytesType, or empty (the empty message of a request without
// bytes reads the same in every encoding); a reply larger than ttrpc can
// carry is ResourceExhausted.
func bytesMethod(h func(context.Context, []byte) ([]byte, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		var req anypb.Any
		if err := unmarshal(&req); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "decode request: %v", err)
		}
		if t := req.GetTypeUrl(); t != BytesType && (t != "" || len(req.GetValue()) != 0) {
			return nil, status.Errorf(codes.InvalidArgument, "request of type %q, want %q (a tether tool of another version?)", t, BytesType)
		}
		out, err := h(ctx, req.GetValue())
		if err != nil {
			if _, ok := status.FromError(err); ok {
				return nil, err
			}
			return nil, status.Error(codes.Internal, err.Error())
		}
		if len(out) > maxReply {
			return nil, status.Errorf(codes.ResourceExhausted, "reply of %d bytes is larger than ttrpc carries", len(out))
		}
		return &anypb.Any{TypeUrl: BytesType, Value: out}, nil
	}
}

// Snapshot returns the shim's state now.
func (s *Service) Snapshot() *Snapshot {
	snap := &Snapshot{Schema: SchemaVersion, Shim: s.cfg.Shim}
	snap.Shim.Pid = os.Getpid()
	if !snap.Shim.StartedAt.IsZero() {
		snap.Shim.UptimeSeconds = time.Since(snap.Shim.StartedAt).Seconds()
	}
	snap.Shim.Goroutines = runtime.NumGoroutine()
	snap.Shim.HeapBytes, snap.Shim.GoRuntimeBytes = goMemory()
	snap.Containers = s.cfg.Source.Containers()
	slices.SortFunc(snap.Containers, func(a, b Container) int { return strings.Compare(a.ID, b.ID) })
	if s.cfg.Counters != nil {
		for i := range snap.Containers {
			snap.Containers[i].Counters = s.cfg.Counters.Counters(snap.Containers[i].ID)
		}
	}
	if s.cfg.Events != nil {
		snap.Events = s.cfg.Events()
	}
	if len(snap.Events.Pending) > MaxPending {
		snap.Events.Pending = snap.Events.Pending[:MaxPending]
	}
	if s.cfg.Connections != nil {
		snap.Connections = s.cfg.Connections()
	}
	if s.cfg.RPC != nil {
		snap.RPC = s.cfg.RPC.Snapshot()
	}
	// Empty lists are [] in the JSON, never null.
	if snap.Containers == nil {
		snap.Containers = []Container{}
	}
	if snap.RPC == nil {
		snap.RPC = []RPCMethod{}
	}
	if snap.Events.Pending == nil {
		snap.Events.Pending = []string{}
	}
	if snap.Connections.Peers == nil {
		snap.Connections.Peers = []Peer{}
	}
	return snap
}

// goMemory reads the Go runtime's heap objects and total mapped memory
// (MemStats.HeapAlloc and Sys, the same figures as runtime/metrics'
// /memory/classes/heap/objects:bytes and /memory/classes/total:bytes).
// ReadMemStats stops the world for a few microseconds, once per snapshot
// an operator asks for; runtime/metrics would not, but linking it costs
// every shim about 15 kB of heap for good (its init builds the table of
// metric descriptions), which an idle shim must not pay
// (docs/performance.md).
func goMemory() (heap, total uint64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.Sys
}

// Stacks returns the stacks of every goroutine, in the format of an
// unrecovered panic's dump.
func (s *Service) Stacks() ([]byte, error) {
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 2); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Profile returns a heap profile, or a CPU profile over r.Seconds, in
// pprof's (gzipped protobuf) format. A shim started without -debug does
// not sample the heap (runtime.MemProfileRate is 0, see docs/design.md):
// its heap profile has no samples.
func (s *Service) Profile(ctx context.Context, r ProfileRequest) ([]byte, error) {
	var b bytes.Buffer
	switch r.Kind {
	case ProfileHeap:
		if err := pprof.Lookup("heap").WriteTo(&b, 0); err != nil {
			return nil, err
		}
		return b.Bytes(), nil
	case ProfileCPU:
		secs := r.Seconds
		if secs == 0 {
			secs = DefaultCPUSeconds
		}
		if secs < 0 || secs > MaxCPUSeconds {
			return nil, status.Errorf(codes.InvalidArgument, "cpu profile of %d s (1 to %d)", secs, MaxCPUSeconds)
		}
		if !s.cpu.TryLock() {
			return nil, status.Error(codes.FailedPrecondition, "a CPU profile is already being taken")
		}
		defer s.cpu.Unlock()
		if err := pprof.StartCPUProfile(&b); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "start CPU profile: %v", err)
		}
		t := time.NewTimer(time.Duration(secs) * time.Second)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		pprof.StopCPUProfile()
		if err := ctx.Err(); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		return b.Bytes(), nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "profile kind %q (want %s or %s)", r.Kind, ProfileHeap, ProfileCPU)
}
