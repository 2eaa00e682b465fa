package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/tether-shim/tether/internal/testutil"
)

// waitLimit bounds every wait in these tests. It is generous: hitting it
// means the test is broken, not slow.
const waitLimit = 30 * time.Second

// testNamespace is the namespace every test Publisher publishes for.
const testNamespace = "tether-test"

// fastConfig is the default delivery policy with short backoffs, so that
// tests with many failures stay quick. The policy itself is the same.
func fastConfig() config {
	cfg := defaultConfig()
	cfg.backoffMin = time.Millisecond
	cfg.backoffMax = 20 * time.Millisecond
	return cfg
}

// ---------------------------------------------------------------------------
// Fake containerd: a real ttrpc server implementing the Events service.

// fakeContainerd serves containerd.services.events.ttrpc.v1.Events on a unix
// socket and records the envelopes it accepts, with the namespace found in
// the ttrpc metadata. It can be killed (listener and every connection closed
// at once, as when containerd dies) and started again on the same path.
//
// Every incarnation has a generation number; a handler records only while its
// own generation is serving, so nothing from a killed incarnation can be
// recorded after the kill (no late, reordered records).
type fakeContainerd struct {
	t    *testing.T
	path string
	// before, if set, runs first in every Forward; an error refuses the
	// event (not recorded, returned to the client). after, if set, runs
	// once the event is recorded, before the reply. Set them before start;
	// read-only afterwards.
	before func(ctx context.Context, call int, env *types.Envelope) error
	after  func(call int, env *types.Envelope)

	// mu guards everything below.
	mu        sync.Mutex
	gen       int
	serving   bool
	server    *ttrpc.Server
	conns     []net.Conn    // raw connections of the current generation
	serveDone chan struct{} // closed when the current Serve returned
	calls     int           // Forward calls, all generations
	accepted  int           // connections accepted, all generations
	envs      []*types.Envelope
	nss       []string
	changed   chan struct{} // closed by the next record; nil when nobody waits
}

// newFakeContainerd returns a stopped fake with a socket path in a temp dir.
// A cleanup stops it.
func newFakeContainerd(t *testing.T) *fakeContainerd {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ttrpc.sock")
	if len(path) > 100 {
		t.Fatalf("socket path too long for a unix socket: %s", path)
	}
	f := &fakeContainerd{t: t, path: path}
	t.Cleanup(f.stop)
	return f
}

// start listens on f.path and serves a new generation.
func (f *fakeContainerd) start() {
	f.t.Helper()
	if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		f.t.Fatalf("remove stale socket: %v", err)
	}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		f.t.Fatalf("listen: %v", err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		f.t.Fatalf("ttrpc server: %v", err)
	}
	done := make(chan struct{})

	f.mu.Lock()
	f.gen++
	gen := f.gen
	f.serving = true
	f.server = srv
	f.serveDone = done
	f.mu.Unlock()

	eventsapi.RegisterTTRPCEventsService(srv, &fakeService{f: f, gen: gen})
	go func() {
		defer close(done)
		// The server's own complaints about killed connections are noise.
		ctx := log.WithLogger(context.Background(), slog.New(slog.DiscardHandler))
		_ = srv.Serve(ctx, &trackingListener{Listener: ln, f: f, gen: gen})
	}()
}

// kill closes the listener and every connection of the current generation
// without waiting. Safe to call from a handler and when not serving.
func (f *fakeContainerd) kill() {
	f.mu.Lock()
	if !f.serving {
		f.mu.Unlock()
		return
	}
	f.serving = false
	srv, conns := f.server, f.conns
	f.conns = nil
	f.mu.Unlock()

	_ = srv.Close() // closes the listener, which unlinks the socket
	for _, c := range conns {
		_ = c.Close()
	}
}

// stop kills the current generation and waits for its Serve to return.
func (f *fakeContainerd) stop() {
	f.kill()
	f.mu.Lock()
	done := f.serveDone
	f.serveDone = nil
	f.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(waitLimit):
		f.t.Errorf("fake containerd: Serve did not return within %v", waitLimit)
	}
}

// restart stops the current generation and starts a new one on the same path.
func (f *fakeContainerd) restart() {
	f.stop()
	f.start()
}

func (f *fakeContainerd) record(gen int, env *types.Envelope, ns string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.serving || gen != f.gen {
		return false
	}
	f.envs = append(f.envs, env)
	f.nss = append(f.nss, ns)
	if f.changed != nil {
		close(f.changed)
		f.changed = nil
	}
	return true
}

// recorded returns the envelopes accepted so far and their namespaces.
func (f *fakeContainerd) recorded() ([]*types.Envelope, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*types.Envelope(nil), f.envs...), append([]string(nil), f.nss...)
}

func (f *fakeContainerd) counts() (calls, accepted int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, f.accepted
}

// waitRecorded waits (bounded) until at least n envelopes were recorded and
// returns them all.
func (f *fakeContainerd) waitRecorded(n int) []*types.Envelope {
	f.t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		if len(f.envs) >= n {
			envs := append([]*types.Envelope(nil), f.envs...)
			f.mu.Unlock()
			return envs
		}
		if f.changed == nil {
			f.changed = make(chan struct{})
		}
		changed := f.changed
		have := len(f.envs)
		f.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			f.t.Fatalf("fake containerd: %d of %d events recorded within %v", have, n, waitLimit)
		}
	}
}

// fakeService is the Events service of one generation of a fakeContainerd.
type fakeService struct {
	f   *fakeContainerd
	gen int
}

func (s *fakeService) Forward(ctx context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	f := s.f
	f.mu.Lock()
	f.calls++
	call := f.calls
	f.mu.Unlock()
	if f.before != nil {
		if err := f.before(ctx, call, req.GetEnvelope()); err != nil {
			return nil, err
		}
	}
	ns, _ := ttrpc.GetMetadataValue(ctx, namespaceMetadataKey)
	if !f.record(s.gen, req.GetEnvelope(), ns) {
		return nil, status.Error(codes.Unavailable, "fake containerd: shutting down")
	}
	if f.after != nil {
		f.after(call, req.GetEnvelope())
	}
	return &emptypb.Empty{}, nil
}

// trackingListener remembers the raw connections it accepts, so that kill
// can close them all at once.
type trackingListener struct {
	net.Listener
	f   *fakeContainerd
	gen int
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.f.mu.Lock()
	defer l.f.mu.Unlock()
	if !l.f.serving || l.f.gen != l.gen {
		_ = c.Close()
		return nil, fmt.Errorf("fake containerd: accept after kill: %w", net.ErrClosed)
	}
	l.f.conns = append(l.f.conns, c)
	l.f.accepted++
	return c, nil
}

// ---------------------------------------------------------------------------
// Publishers and events

// startPublisher returns a Publisher with cfg logging into a new capture; a
// cleanup closes it (bounded).
func startPublisher(t *testing.T, address string, cfg config) (*Publisher, *testutil.Log) {
	t.Helper()
	logs, logger := testutil.NewLog(t)
	p := newPublisher(address, testNamespace, logger, cfg)
	t.Cleanup(func() { closePublisher(t, p) })
	return p, logs
}

// closePublisher closes p with a bounded context and fails on error.
func closePublisher(t *testing.T, p *Publisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// exitEvent is the TaskExit used as a numbered test event: Pid carries seq.
func exitEvent(seq int) *apievents.TaskExit {
	return &apievents.TaskExit{ContainerID: "c1", ID: "c1", Pid: uint32(seq), ExitStatus: 137}
}

// seqOf decodes the TaskExit in env and returns its Pid.
func seqOf(t *testing.T, env *types.Envelope) int {
	t.Helper()
	v, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		t.Fatalf("unmarshal event: %v", err)
	}
	ev, ok := v.(*apievents.TaskExit)
	if !ok {
		t.Fatalf("event is %T, want *events.TaskExit", v)
	}
	return int(ev.GetPid())
}

// seqOrNeg is seqOf for server goroutines, which must not call t.Fatal: it
// returns -1 if env does not hold a TaskExit.
func seqOrNeg(env *types.Envelope) int {
	v, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		return -1
	}
	ev, ok := v.(*apievents.TaskExit)
	if !ok {
		return -1
	}
	return int(ev.GetPid())
}

// seqs decodes the sequence numbers of envs.
func seqs(t *testing.T, envs []*types.Envelope) []int {
	t.Helper()
	out := make([]int, len(envs))
	for i, e := range envs {
		out[i] = seqOf(t, e)
	}
	return out
}

// checkExactly fails unless got is 0, 1, …, n-1.
func checkExactly(t *testing.T, got []int, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("got %d events, want %d", len(got), n)
	}
	for i, s := range got {
		if s != i {
			t.Fatalf("event %d has seq %d, want %d (lost or reordered)", i, s, i)
		}
	}
}

// checkInOrderAllowingRepeats fails unless got, with adjacent repeats
// collapsed, is 0, 1, …, n-1: no event lost, none reordered, duplicates only
// right after themselves (at-least-once delivery). It returns the number of
// duplicates.
func checkInOrderAllowingRepeats(t *testing.T, got []int, n int) int {
	t.Helper()
	next, dups := 0, 0
	for i, s := range got {
		switch {
		case s == next:
			next++
		case next > 0 && s == next-1:
			dups++
		default:
			t.Fatalf("position %d: seq %d, want %d or a repeat of %d (lost or reordered)", i, s, next, next-1)
		}
	}
	if next != n {
		t.Fatalf("got events up to %d, want %d", next, n)
	}
	return dups
}

// testLogger is a logger that records into a testutil.Log, printed if the
// test fails.
func testLogger(t testing.TB) *slog.Logger {
	_, l := testutil.NewLog(t)
	return l
}
