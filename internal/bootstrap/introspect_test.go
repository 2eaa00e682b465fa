package bootstrap

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/taskservice"
	"github.com/tether-shim/tether/internal/testutil"
	"github.com/tether-shim/tether/internal/trim"
)

// TestIntrospectionOnTheShimSocket: the server's socket serves
// tether.introspect.v1 beside the task API, as Serve sets it up: the
// snapshot tells the flags, the open connections with their peers (this
// process) and the requests counted by the interceptor.
func TestIntrospectionOnTheShimSocket(t *testing.T) {
	_, logger := testutil.NewLog(t)
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	rpc := &introspect.RPCStats{}
	server, err := newTTRPCServer(logger, trim.New(), false, ttrpc.WithChainUnaryServerInterceptor(rpc.Interceptor()))
	if err != nil {
		t.Fatal(err)
	}
	svc := taskservice.New(taskservice.Config{Namespace: "ns", Logger: logger})
	svc.Register(server)
	publisher := events.NewPublisher("", "ns", logger) // discards; no goroutine
	gl := newGuardedListener(ln, logger, func() {})
	registerIntrospection(server, introspectionOf{
		flags: Flags{Namespace: "ns", ID: "group", Address: "/run/c.sock"}, version: "v-test",
		bundle: "/b", socket: path, started: time.Now(),
		svc: svc, counting: introspect.NewCountingSink(publisher), publisher: publisher, listener: gl, rpc: rpc,
	})
	served := make(chan error, 1)
	go func() { served <- serveTTRPC(context.Background(), server, gl, logger) }()
	defer func() {
		server.Close()
		<-served
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first, err := introspect.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	first.Close()
	c, err := introspect.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The first connection's end reaches the server asynchronously.
	var snap *introspect.Snapshot
	for {
		if snap, err = c.Snapshot(ctx); err != nil {
			t.Fatal(err)
		}
		if snap.Connections.Open == 1 || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if snap.Shim.Namespace != "ns" || snap.Shim.Group != "group" || snap.Shim.Version != "v-test" || snap.Shim.Socket != path || snap.Shim.Pid != os.Getpid() {
		t.Errorf("shim %+v", snap.Shim)
	}
	if got := snap.Connections; got.Open != 1 || got.Accepted != 2 || got.Refused != 0 || len(got.Peers) != 1 || got.Peers[0].Pid != os.Getpid() {
		t.Errorf("connections %+v, want this one open (of 2 accepted), its peer this process", got)
	}
	// A request is counted once answered: a snapshot counts those
	// before it, here at least the first connection's.
	if len(snap.RPC) != 1 || snap.RPC[0].Method != "/"+introspect.ServiceName+"/"+introspect.MethodSnapshot || snap.RPC[0].Count < 1 {
		t.Errorf("rpc %+v, want the earlier Snapshots counted", snap.RPC)
	}
	if len(snap.Containers) != 0 {
		t.Errorf("containers %+v, want none", snap.Containers)
	}
}
