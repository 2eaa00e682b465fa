package upgrade

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tether-shim/tether/internal/testutil"
)

// gatedListener and gatedConn quiesce an in-process ttrpc server the way
// bootstrap's guardedListener and frameConn quiesce the shim's.
type gatedListener struct {
	*net.UnixListener
	q    *Quiescer
	gate *ListenerGate
}

func (l *gatedListener) Accept() (net.Conn, error) {
	c, err := l.gate.Accept(l.AcceptUnix)
	if err != nil {
		return nil, err
	}
	return &gatedConn{UnixConn: c, g: l.q.Add(c, 0)}, nil
}

type gatedConn struct {
	*net.UnixConn
	g       *Gate
	pending []byte
}

func (c *gatedConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		first, err := c.g.ReadFirst(c.UnixConn)
		if err != nil {
			return 0, err
		}
		frame := make([]byte, frameHeader)
		frame[0] = first
		if _, err := io.ReadFull(c.UnixConn, frame[1:]); err != nil {
			return 0, io.ErrUnexpectedEOF
		}
		frame = append(frame, make([]byte, binary.BigEndian.Uint32(frame[:4]))...)
		if _, err := io.ReadFull(c.UnixConn, frame[frameHeader:]); err != nil {
			return 0, io.ErrUnexpectedEOF
		}
		c.g.Received(frame)
		c.pending = frame
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *gatedConn) Write(p []byte) (int, error) {
	n, err := c.UnixConn.Write(p)
	c.g.Sent(p[:n])
	return n, err
}

func (c *gatedConn) Close() error {
	c.g.Closed()
	return c.UnixConn.Close()
}

// gatedServer serves, on a quiesced listener, the upgrade service of an
// Upgrader whose binary is this test binary (TestMain answers its dry run)
// and which never execs, plus a method that blocks until released.
type gatedServer struct {
	up      *Upgrader
	q       *Quiescer
	sock    string
	busy    error // what Busy returns; guarded by mu
	mu      sync.Mutex
	release chan struct{}
	entered chan struct{}
}

func startGatedServer(t *testing.T) *gatedServer {
	t.Helper()
	testutil.CheckLeaks(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &gatedServer{q: NewQuiescer(), sock: filepath.Join(t.TempDir(), "s"), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	_, logger := testutil.NewLog(t)
	s.up = New(Config{
		Logger: logger, Version: "test", Exe: self, Argv: []string{self}, Env: os.Environ,
		Listener: ln, Quiescer: s.q,
		Busy: func() error {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.busy
		},
		BeforeExec: func() error { return errors.New("this test never execs") },
	})
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	Register(srv, s.up)
	srv.RegisterService("test.Block", &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Block": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var in wrapperspb.StringValue
			if err := unmarshal(&in); err != nil {
				return nil, err
			}
			s.entered <- struct{}{}
			<-s.release
			return &in, nil
		},
	}})
	served := make(chan error, 1)
	go func() {
		served <- srv.Serve(context.Background(), &gatedListener{UnixListener: ln, q: s.q, gate: s.q.Listener(ln)})
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})
	return s
}

func gatedClient(t *testing.T, sock string) (*ttrpc.Client, *Client) {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c, NewClient(c)
}

func TestUpgradeRefusedWhileBusyChangesNothing(t *testing.T) {
	s := startGatedServer(t)
	_, up := gatedClient(t, s.sock)
	s.mu.Lock()
	s.busy = errors.New("the shim holds 1 containers")
	s.mu.Unlock()
	_, err := up.Upgrade(context.Background(), Request{})
	if err == nil || !strings.Contains(err.Error(), "upgrade refused: the shim holds 1 containers") {
		t.Fatalf("Upgrade while busy = %v", err)
	}
	select {
	case <-s.up.Pending():
		t.Fatal("a refused upgrade was queued")
	default:
	}
	// Not paused: the next request is served.
	st, err := up.Status(context.Background())
	if err != nil || st.Generation != 0 || st.LastError != "" {
		t.Fatalf("Status after the refusal = %+v, %v", st, err)
	}
}

// A request that is not answered keeps the server from being quiescent: the
// hand-over fails within its bound, and the server serves on, the request
// sent after the accepting answer included.
func TestHandOverFailsWhileARequestHangs(t *testing.T) {
	s := startGatedServer(t)
	blockClient, _ := gatedClient(t, s.sock)
	blocked := make(chan error, 1)
	go func() {
		var out wrapperspb.StringValue
		blocked <- blockClient.Call(context.Background(), "test.Block", "Block", wrapperspb.String("held"), &out)
	}()
	<-s.entered

	_, up := gatedClient(t, s.sock)
	acc, err := up.Upgrade(context.Background(), Request{})
	if err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	if acc.To != "helper" || acc.From != "test" {
		t.Fatalf("accepted %+v", acc)
	}
	// Sent after the accepting answer: read only once the server resumes.
	after := make(chan Status, 1)
	go func() {
		st, err := up.Status(context.Background())
		if err != nil {
			t.Errorf("Status after the failed hand-over: %v", err)
		}
		after <- st
	}()
	// A client that connects during the pause is answered once the server
	// resumes (or, had it handed over, by the new image).
	_, late := gatedClient(t, s.sock)
	lateStatus := make(chan error, 1)
	go func() {
		_, err := late.Status(context.Background())
		lateStatus <- err
	}()
	bin := <-s.up.Pending()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = s.up.HandOver(ctx, bin)
	if err == nil || !strings.Contains(err.Error(), "1 requests unanswered") {
		t.Fatalf("HandOver = %v, want the quiesce to fail on the hung request", err)
	}
	st := <-after
	if st.Generation != 0 || !strings.Contains(st.LastError, "1 requests unanswered") {
		t.Fatalf("Status after the failed hand-over: %+v", st)
	}
	if err := <-lateStatus; err != nil {
		t.Fatalf("Status of a client that connected during the pause: %v", err)
	}
	close(s.release)
	if err := <-blocked; err != nil {
		t.Fatalf("the held request: %v", err)
	}
	// Another upgrade may be asked for.
	if _, err := up.Upgrade(context.Background(), Request{}); err != nil {
		t.Fatalf("Upgrade after a failed one: %v", err)
	}
	bin = <-s.up.Pending()
	err = s.up.HandOver(context.Background(), bin)
	if err == nil || !strings.Contains(err.Error(), "this test never execs") {
		t.Fatalf("HandOver of a quiescent server = %v, want it to reach BeforeExec", err)
	}
	if _, err := up.Status(context.Background()); err != nil {
		t.Fatalf("Status after the second failed hand-over: %v", err)
	}
}

// TestRegressionUpgradeAfterCancelLeftServerPaused: an upgrade whose checks
// ended after the server had begun to stop (Cancel ran, nobody would call
// HandOver) paused the server and queued itself, so the server never
// stopped. It is refused now, and the server is not paused.
func TestRegressionUpgradeAfterCancelLeftServerPaused(t *testing.T) {
	s := startGatedServer(t)
	_, up := gatedClient(t, s.sock)
	s.up.Cancel()
	_, err := up.Upgrade(context.Background(), Request{})
	if err == nil || !strings.Contains(err.Error(), "the shim is stopping") {
		t.Fatalf("Upgrade after Cancel = %v, want refused", err)
	}
	select {
	case <-s.up.Pending():
		t.Fatal("an upgrade was queued after Cancel")
	default:
	}
	if st, err := up.Status(context.Background()); err != nil || st.Generation != 0 {
		t.Fatalf("Status after the refusal = %+v, %v (paused?)", st, err)
	}
}

// TestGateStateChangesAllocateNothing: while nobody waits for quiescence,
// a connection's state changes (several per request) allocate nothing;
// once Wait waits, a change wakes it.
func TestGateStateChangesAllocateNothing(t *testing.T) {
	q := NewQuiescer()
	g := q.Add(nil, 0)
	if n := testing.AllocsPerRun(100, func() {
		q.mu.Lock()
		g.setLocked(stateWaiting)
		g.setLocked(stateBusy)
		q.mu.Unlock()
	}); n != 0 {
		t.Errorf("a request's state changes allocate %v times, want 0", n)
	}

	q.Pause()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := q.Wait(ctx, nil)
		done <- err
	}()
	// Park the busy gate once Wait waits (has made its channel): only
	// that change can wake it.
	for parked := false; !parked; {
		select {
		case err := <-done:
			t.Fatalf("Wait returned before the gate parked: %v", err)
		case <-time.After(time.Millisecond):
		}
		q.mu.Lock()
		if q.changed != nil {
			g.setLocked(stateParked)
			parked = true
		}
		q.mu.Unlock()
	}
	if err := <-done; err != nil {
		t.Fatalf("Wait after the gate parked: %v", err)
	}
}

// A request that is not answered but that replayable lets be does not keep
// the server from being quiescent: Wait hands its frame over, to be read
// first by the new image; one it does not let be still holds Wait.
func TestWaitHandsOverReplayableRequests(t *testing.T) {
	s := startGatedServer(t)
	blockClient, _ := gatedClient(t, s.sock)
	blocked := make(chan error, 1)
	go func() {
		var out wrapperspb.StringValue
		blocked <- blockClient.Call(context.Background(), "test.Block", "Block", wrapperspb.String("held"), &out)
	}()
	<-s.entered
	isBlock := func(frame []byte) bool {
		var req ttrpc.Request
		return len(frame) > frameHeader && proto.Unmarshal(frame[frameHeader:], &req) == nil && req.Service == "test.Block"
	}
	s.q.Pause()
	defer s.q.Resume()
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := s.q.Wait(short, func([]byte) bool { return false }); err == nil || !strings.Contains(err.Error(), "1 requests unanswered") {
		t.Fatalf("Wait with the request not replayable = %v, want it to wait for the answer", err)
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	conns, err := s.q.Wait(ctx, isBlock)
	if err != nil {
		t.Fatalf("Wait with the request replayable: %v", err)
	}
	var replay [][]byte
	for _, c := range conns {
		replay = append(replay, c.Replay...)
	}
	if len(replay) != 1 {
		t.Fatalf("requests to replay: %d, want the held one", len(replay))
	}
	id, err := checkRequestFrame(replay[0])
	if err != nil || !isBlock(replay[0]) {
		t.Fatalf("the frame to replay (stream %d): %v, %q", id, err, replay[0])
	}
	s.q.Resume()
	close(s.release)
	if err := <-blocked; err != nil {
		t.Fatalf("the held request, answered by the old image after all: %v", err)
	}
}
