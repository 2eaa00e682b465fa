package introspect

import (
	"bytes"
	"context"
	"errors"
	eventsapi "github.com/containerd/containerd/api/events"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/testutil"
)

// fakeSource is a Source with fixed containers.
type fakeSource []Container

func (f fakeSource) Containers() []Container { return append([]Container(nil), f...) }

// serve serves srv on a socket in a temp dir until the test ends and
// returns the socket's path.
func serve(t *testing.T, srv *ttrpc.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	})
	return path
}

func newServer(t *testing.T, opts ...ttrpc.ServerOpt) *ttrpc.Server {
	t.Helper()
	srv, err := ttrpc.NewServer(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func dialT(t *testing.T, path string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestServiceRoundTrip: a Client gets the Source's containers (in id
// order, with the counting sink's counters), the events and connections
// the Config reports, the RPC counts of the interceptor (its own Snapshot
// call included), the goroutine dump and profiles.
func TestServiceRoundTrip(t *testing.T) {
	rpc := &RPCStats{}
	counting := NewCountingSink(discard{})
	counting.Publish("/tasks/create", &eventsapi.TaskCreate{ContainerID: "b"})
	counting.Publish("/tasks/exit", exitEvent("b"))
	started := time.Now().Add(-time.Minute)
	svc := NewService(Config{
		Shim:     Shim{Version: "v-test", Namespace: "ns", Group: "g", StartedAt: started},
		Source:   fakeSource{{ID: "b", Processes: []Process{{ID: "b"}}}, {ID: "a", Processes: []Process{{ID: "a"}}}},
		Counters: counting,
		Events: func() Events {
			return Events{Queued: 2, Pending: []string{"/tasks/exit", "/tasks/delete"}, Published: 7}
		},
		Connections: func() Connections { return Connections{Open: 1, Peers: []Peer{{Pid: 42}}, Accepted: 3} },
		RPC:         rpc,
	})
	srv := newServer(t, ttrpc.WithUnaryServerInterceptor(rpc.Interceptor()))
	svc.Register(srv)
	c := dialT(t, serve(t, srv))
	if c.Pid != os.Getpid() {
		t.Errorf("Client.Pid = %d, want this process %d", c.Pid, os.Getpid())
	}
	ctx := ctxT(t)

	if _, err := c.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	snap, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Schema != SchemaVersion || snap.Shim.Version != "v-test" || snap.Shim.Pid != os.Getpid() || snap.Shim.Goroutines == 0 {
		t.Errorf("shim = %+v", snap.Shim)
	}
	if snap.Shim.HeapBytes == 0 || snap.Shim.GoRuntimeBytes < snap.Shim.HeapBytes {
		t.Errorf("Go heap %d bytes, Go runtime %d bytes: want a heap, within the runtime's memory", snap.Shim.HeapBytes, snap.Shim.GoRuntimeBytes)
	}
	if snap.Shim.UptimeSeconds < 60 {
		t.Errorf("uptime %v s, want at least the minute since StartedAt", snap.Shim.UptimeSeconds)
	}
	if len(snap.Containers) != 2 || snap.Containers[0].ID != "a" || snap.Containers[1].ID != "b" {
		t.Fatalf("containers = %+v, want a then b", snap.Containers)
	}
	if got := snap.Containers[1].Counters; got.Exits != 1 {
		t.Errorf("b's counters = %+v, want 1 exit", got)
	}
	if snap.Events.Queued != 2 || len(snap.Events.Pending) != 2 || snap.Events.Published != 7 {
		t.Errorf("events = %+v", snap.Events)
	}
	if snap.Connections.Open != 1 || snap.Connections.Peers[0].Pid != 42 {
		t.Errorf("connections = %+v", snap.Connections)
	}
	if len(snap.RPC) != 1 || snap.RPC[0].Method != "/"+ServiceName+"/"+MethodSnapshot || snap.RPC[0].Count != 1 {
		t.Errorf("rpc = %+v, want the first Snapshot counted", snap.RPC)
	}

	stacks, err := c.Stacks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(stacks, []byte("goroutine ")) || !bytes.Contains(stacks, []byte("TestServiceRoundTrip")) {
		t.Errorf("stacks do not show this test's goroutine:\n%.2000s", stacks)
	}
	for _, r := range []ProfileRequest{{Kind: ProfileHeap}, {Kind: ProfileCPU, Seconds: 1}} {
		prof, err := c.Profile(ctx, r)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		// pprof's format is gzipped.
		if len(prof) < 2 || prof[0] != 0x1f || prof[1] != 0x8b {
			t.Errorf("%+v: %d bytes, not gzip", r, len(prof))
		}
	}
	for _, r := range []ProfileRequest{{Kind: "goroutine"}, {Kind: ProfileCPU, Seconds: MaxCPUSeconds + 1}, {Kind: ProfileCPU, Seconds: -1}} {
		_, err := c.Profile(ctx, r)
		if s, _ := status.FromError(errors.Unwrap(err)); s.Code() != codes.InvalidArgument {
			t.Errorf("%+v: %v, want InvalidArgument", r, err)
		}
	}
}

// TestClientOlderShim: a server without the service (a shim before it)
// is ErrNotServed, which says so.
func TestClientOlderShim(t *testing.T) {
	srv := newServer(t)
	srv.RegisterService("containerd.task.v2.Task", &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{}})
	c := dialT(t, serve(t, srv))
	_, err := c.Snapshot(ctxT(t))
	if !errors.Is(err, ErrNotServed) {
		t.Fatalf("Snapshot from an older shim: %v, want ErrNotServed", err)
	}
	if !strings.Contains(err.Error(), "older version") {
		t.Errorf("error %q does not say the shim is older", err)
	}
}

// TestWireTypeChecked: the service refuses a request carried in an Any of
// another type than BytesType (a tool of another version), and the client
// refuses a reply of another type (a shim of another version) rather than
// decoding bytes it does not know. An empty request is any version's.
func TestWireTypeChecked(t *testing.T) {
	svc := NewService(Config{Source: fakeSource{}})
	srv := newServer(t)
	svc.Register(srv)
	path := serve(t, srv)
	c := dialT(t, path)
	ctx := ctxT(t)
	for _, req := range []*anypb.Any{
		{TypeUrl: "google.protobuf.BytesValue", Value: []byte(`{"kind":"heap"}`)},
		{TypeUrl: "tether.introspect.v0/bytes"},
	} {
		var resp anypb.Any
		err := c.c.Call(ctx, ServiceName, MethodProfile, req, &resp)
		if s, _ := status.FromError(err); s.Code() != codes.InvalidArgument || !strings.Contains(s.Message(), BytesType) {
			t.Errorf("request %v: %v, want InvalidArgument naming %q", req, err, BytesType)
		}
	}
	var resp anypb.Any
	if err := c.c.Call(ctx, ServiceName, MethodSnapshot, &anypb.Any{}, &resp); err != nil || resp.GetTypeUrl() != BytesType {
		t.Errorf("empty request: %v, reply of type %q, want %q", err, resp.GetTypeUrl(), BytesType)
	}

	other := newServer(t)
	other.RegisterService(ServiceName, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		MethodSnapshot: func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var req anypb.Any
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return &anypb.Any{TypeUrl: "tether.introspect.v9/bytes", Value: []byte("{}")}, nil
		},
	}})
	oc := dialT(t, serve(t, other))
	if _, err := oc.Snapshot(ctx); err == nil || !strings.Contains(err.Error(), "another version") {
		t.Errorf("reply of another type: %v, want an error saying the shim speaks another version", err)
	}
}

// TestDialErrors: a socket of another uid, a socket nobody listens on, a
// path that is not a socket and one that does not exist each get their
// own error.
func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)

	other := filepath.Join(dir, "other")
	testutil.ForeignSocket(t, other)
	if _, err := Dial(ctx, other); !errors.Is(err, ErrOtherUID) {
		t.Errorf("socket of uid 65534: %v, want ErrOtherUID", err)
	}

	dead := filepath.Join(dir, "dead")
	testutil.DeadSocket(t, dead)
	if _, err := Dial(ctx, dead); !errors.Is(err, ErrNoServer) {
		t.Errorf("socket without a server: %v, want ErrNoServer", err)
	}

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(ctx, file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v, want 'not a socket'", err)
	}
	if _, err := Dial(ctx, filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing socket: %v, want ErrNotExist", err)
	}
}
