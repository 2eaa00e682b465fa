package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/internal/testutil"
)

// The type URLs containerd decodes events by. typeurl v2 falls back to the
// proto full name for messages nobody registered, which is what containerd
// expects.
func TestTypeURLs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ev   proto.Message
		want string
	}{
		{&apievents.TaskCreate{}, "containerd.events.TaskCreate"},
		{&apievents.TaskStart{}, "containerd.events.TaskStart"},
		{&apievents.TaskExit{}, "containerd.events.TaskExit"},
		{&apievents.TaskDelete{}, "containerd.events.TaskDelete"},
		{&apievents.TaskOOM{}, "containerd.events.TaskOOM"},
		{&apievents.TaskExecAdded{}, "containerd.events.TaskExecAdded"},
		{&apievents.TaskExecStarted{}, "containerd.events.TaskExecStarted"},
		{&apievents.TaskPaused{}, "containerd.events.TaskPaused"},
		{&apievents.TaskResumed{}, "containerd.events.TaskResumed"},
		{&apievents.TaskCheckpointed{}, "containerd.events.TaskCheckpointed"},
	} {
		a, err := typeurl.MarshalAnyToProto(tc.ev)
		if err != nil {
			t.Fatalf("%T: %v", tc.ev, err)
		}
		if a.GetTypeUrl() != tc.want {
			t.Errorf("%T: type URL %q, want %q", tc.ev, a.GetTypeUrl(), tc.want)
		}
	}
}

func TestSocketPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "unix:///run/containerd/containerd.sock.ttrpc", want: "/run/containerd/containerd.sock.ttrpc"},
		{in: "unix:/run/containerd/containerd.sock.ttrpc", want: "/run/containerd/containerd.sock.ttrpc"},
		{in: "/run/containerd/containerd.sock.ttrpc", want: "/run/containerd/containerd.sock.ttrpc"},
		{in: "", bad: true},
		{in: "unix://", bad: true},
		{in: "unix:", bad: true},
		{in: "tcp://127.0.0.1:1234", bad: true},
	} {
		got, err := socketPath(tc.in)
		switch {
		case tc.bad && err == nil:
			t.Errorf("socketPath(%q) = %q, want an error", tc.in, got)
		case !tc.bad && (err != nil || got != tc.want):
			t.Errorf("socketPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestIsApplicationError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"ttrpc closed", ttrpc.ErrClosed, false},
		{"wrapped ttrpc closed", fmt.Errorf("forward: %w", ttrpc.ErrClosed), false},
		{"client deadline", fmt.Errorf("forward: %w", context.DeadlineExceeded), false},
		{"cancelled", context.Canceled, false},
		{"dial refused", &net.OpError{Op: "dial", Net: "unix", Err: syscall.ECONNREFUSED}, false},
		{"dial missing socket", &net.OpError{Op: "dial", Net: "unix", Err: syscall.ENOENT}, false},
		{"reset", &net.OpError{Op: "read", Net: "unix", Err: syscall.ECONNRESET}, false},
		{"eof", io.EOF, false},
		{"status unavailable", status.Error(codes.Unavailable, "restarting"), false},
		{"status deadline", status.Error(codes.DeadlineExceeded, "slow"), false},
		{"status canceled", status.Error(codes.Canceled, "shutting down"), false},
		{"status invalid argument", status.Error(codes.InvalidArgument, "bad topic"), true},
		{"wrapped status invalid argument", fmt.Errorf("forward: %w", status.Error(codes.InvalidArgument, "bad")), true},
		{"status unknown", status.Error(codes.Unknown, "handler failed"), true},
		{"status unimplemented", status.Error(codes.Unimplemented, "no such service"), true},
		{"oversized message", ttrpc.OversizedMessageError(1 << 30), true},
	} {
		if got := isApplicationError(tc.err); got != tc.want {
			t.Errorf("%s: isApplicationError(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestDefaultPolicy(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	if cfg.callTimeout != 5*time.Second || cfg.backoffMin != 10*time.Millisecond ||
		cfg.backoffMax != 2*time.Second || cfg.maxAppAttempts != 10 {
		t.Errorf("default policy changed: %+v", cfg)
	}
}

func TestBackoffDoublesToCap(t *testing.T) {
	t.Parallel()
	s := &sender{p: &Publisher{cfg: defaultConfig()}}
	want := []time.Duration{10, 20, 40, 80, 160, 320, 640, 1280, 2000, 2000, 2000}
	for i, w := range want {
		if got := s.nextWait(); got != w*time.Millisecond {
			t.Fatalf("wait %d = %v, want %v", i, got, w*time.Millisecond)
		}
	}
	s.backoff = 0 // what a success does
	if got := s.nextWait(); got != 10*time.Millisecond {
		t.Fatalf("wait after reset = %v, want 10ms", got)
	}
}

func TestTopicCounts(t *testing.T) {
	t.Parallel()
	got := topicCounts([]string{TopicExit, TopicStart, TopicExit, TopicDelete})
	if want := "/tasks/delete=1 /tasks/exit=2 /tasks/start=1"; got != want {
		t.Errorf("topicCounts = %q, want %q", got, want)
	}
}

// The envelope carries namespace, topic, publish time and the event as an Any
// with containerd's type URL; the namespace is also in the ttrpc metadata.
func TestPublisherEnvelope(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	logs, logger := testutil.NewLog(t)
	p := NewPublisher("unix://"+f.path, testNamespace, logger)
	t.Cleanup(func() { closePublisher(t, p) })

	exitedAt := timestamppb.New(time.Date(2024, 5, 6, 7, 8, 9, 10, time.UTC))
	sent := &apievents.TaskExit{ContainerID: "ctr", ID: "exec1", Pid: 4242, ExitStatus: 3, ExitedAt: exitedAt}
	before := time.Now()
	p.Publish(TopicExit, sent)
	after := time.Now()
	sent.Pid = 1 // Publish encoded the event: later changes must not show

	envs := f.waitRecorded(1)
	_, nss := f.recorded()
	env := envs[0]
	if env.GetNamespace() != testNamespace {
		t.Errorf("namespace %q, want %q", env.GetNamespace(), testNamespace)
	}
	if nss[0] != testNamespace {
		t.Errorf("metadata %s = %q, want %q", namespaceMetadataKey, nss[0], testNamespace)
	}
	if env.GetTopic() != TopicExit {
		t.Errorf("topic %q, want %q", env.GetTopic(), TopicExit)
	}
	if env.GetTimestamp() == nil {
		t.Fatal("no timestamp")
	}
	if ts := env.GetTimestamp().AsTime(); ts.Before(before) || ts.After(after) {
		t.Errorf("timestamp %v not within the Publish call [%v, %v]", ts, before, after)
	}
	if got := env.GetEvent().GetTypeUrl(); got != "containerd.events.TaskExit" {
		t.Errorf("type URL %q, want containerd.events.TaskExit", got)
	}
	v, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	want := &apievents.TaskExit{ContainerID: "ctr", ID: "exec1", Pid: 4242, ExitStatus: 3, ExitedAt: exitedAt}
	if !proto.Equal(v.(proto.Message), want) {
		t.Errorf("payload %v, want %v", v, want)
	}
	for _, r := range logs.Records() {
		if r.Level >= slog.LevelWarn {
			t.Errorf("unexpected log: %v", r)
		}
	}
}

// Every accepted address form reaches the socket.
func TestPublisherAddressForms(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	for i, addr := range []string{"unix://" + f.path, "unix:" + f.path, f.path} {
		p, _ := startPublisher(t, addr, defaultConfig())
		p.Publish(TopicExit, exitEvent(i))
		f.waitRecorded(i + 1)
		closePublisher(t, p)
	}
	envs, _ := f.recorded()
	checkExactly(t, seqs(t, envs), 3)
}

func TestPublisherKeepsOrder(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	logs, logger := testutil.NewLog(t)
	p := NewPublisher(f.path, testNamespace, logger)
	t.Cleanup(func() { closePublisher(t, p) })

	const n = 1000
	for i := range n {
		p.Publish(TopicExit, exitEvent(i))
	}
	envs := f.waitRecorded(n)
	checkExactly(t, seqs(t, envs), n)
	for i := 1; i < n; i++ {
		if envs[i].GetTimestamp().AsTime().Before(envs[i-1].GetTimestamp().AsTime()) {
			t.Fatalf("timestamp of event %d is before that of event %d", i, i-1)
		}
	}
	if warn := logs.Matching(slog.LevelWarn, "events: cannot forward event to containerd, will retry"); len(warn) > 0 {
		t.Errorf("unexpected retries: %v", warn)
	}
}

// Events published concurrently keep the order of each publishing goroutine.
func TestPublisherConcurrentPublishers(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())

	const writers, each = 8, 250
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				p.Publish(TopicExit, exitEvent(w*each+i))
			}
		})
	}
	wg.Wait()
	envs := f.waitRecorded(writers * each)
	last := make([]int, writers)
	for i := range last {
		last[i] = -1
	}
	for _, s := range seqs(t, envs) {
		w, i := s/each, s%each
		if i != last[w]+1 {
			t.Fatalf("writer %d: event %d after %d", w, i, last[w])
		}
		last[w] = i
	}
	for w, l := range last {
		if l != each-1 {
			t.Errorf("writer %d: last event %d, want %d", w, l, each-1)
		}
	}
}

// containerd is not there when the events are published; it comes up later.
// Everything arrives, in order, stamped with the time of Publish.
func TestPublisherServerDownThenUp(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	p, logs := startPublisher(t, f.path, defaultConfig())

	const n = 200
	for i := range n {
		p.Publish(TopicExit, exitEvent(i))
	}
	// Let the sender fail a few times (dial: no such socket) first.
	logs.WaitFor(t, waitLimit, "of a third failed attempt", func(r testutil.LogRecord) bool {
		a, _ := r.Values["attempt"].(int64)
		return r.Msg == "events: cannot forward event to containerd, will retry" && a >= 3
	})
	up := time.Now()
	f.start()

	envs := f.waitRecorded(n)
	checkExactly(t, seqs(t, envs), n)
	for i, e := range envs {
		if e.GetTimestamp().AsTime().After(up) {
			t.Fatalf("event %d stamped %v, after containerd came up at %v: not stamped at Publish", i, e.GetTimestamp().AsTime(), up)
		}
	}
	if len(logs.Matching(slog.LevelWarn, "events: cannot forward event to containerd, will retry")) == 0 {
		t.Error("the first failure was not logged at Warn")
	}
	if len(logs.Matching(slog.LevelInfo, "events: event delivered after retries")) != 1 {
		t.Error("recovery not logged once")
	}
}

// containerd dies in the middle of the stream (listener and connections
// closed) and comes back on the same path, three times. The kill happens
// inside a Forward, before the event is recorded, so every event recorded
// before it was acknowledged: the stream must arrive exactly, without loss,
// reordering or duplicates.
func TestPublisherServerRestartMidStream(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	killed := make(chan int, 3)
	f.before = func(_ context.Context, call int, _ *types.Envelope) error {
		switch call {
		case 100, 400, 700:
			f.kill()
			killed <- call
		}
		return nil
	}
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())

	const batch = 500
	seq := 0
	publish := func(k int) {
		for range k {
			p.Publish(TopicExit, exitEvent(seq))
			seq++
		}
	}
	publish(batch)
	for range 3 {
		select {
		case <-killed:
		case <-time.After(waitLimit):
			t.Fatalf("no kill within %v", waitLimit)
		}
		f.stop()
		publish(batch) // while containerd is down
		f.start()
	}
	envs := f.waitRecorded(seq)
	checkExactly(t, seqs(t, envs), seq)
	if _, accepted := f.counts(); accepted < 4 {
		t.Errorf("%d connections accepted, want at least 4 (one per incarnation)", accepted)
	}
}

// containerd is killed from outside at arbitrary points of the stream, while
// events keep being published. No event is lost or reordered. A kill can hit
// after containerd recorded an event but before the client read the reply;
// that event is then sent again: duplicates are allowed, and only right after
// the original.
func TestPublisherServerRestartExternal(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())

	const n, restarts = 3000, 5
	publisherDone := make(chan struct{})
	go func() {
		defer close(publisherDone)
		for i := range n {
			p.Publish(TopicExit, exitEvent(i))
			if i%100 == 99 {
				time.Sleep(time.Millisecond) // spread the stream over the restarts
			}
		}
	}()
	for r := range restarts {
		f.waitRecorded((r + 1) * n / (restarts + 2))
		f.restart()
	}
	select {
	case <-publisherDone:
	case <-time.After(waitLimit):
		t.Fatalf("publishing did not finish within %v", waitLimit)
	}
	f.waitRecorded(n)
	// Let a possible last duplicate land before looking.
	closePublisher(t, p)
	envs, _ := f.recorded()
	dups := checkInOrderAllowingRepeats(t, seqs(t, envs), n)
	t.Logf("%d events, %d restarts, %d duplicates", n, restarts, dups)
}

// If containerd recorded an event but the reply was lost (the connection died
// in between), the event is delivered again, right after itself: delivery is
// at least once. This is the only way a duplicate arises.
func TestPublisherDuplicateWhenAckLost(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	killed := make(chan struct{})
	f.after = func(call int, _ *types.Envelope) {
		if call == 5 {
			f.kill() // the reply to the 5th event cannot be sent
			close(killed)
		}
	}
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())
	for i := range 10 {
		p.Publish(TopicExit, exitEvent(i))
	}
	select {
	case <-killed:
	case <-time.After(waitLimit):
		t.Fatalf("no kill within %v", waitLimit)
	}
	f.stop()
	f.start()
	envs := f.waitRecorded(11)
	closePublisher(t, p)
	got := seqs(t, envs)
	want := []int{0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// An event containerd keeps rejecting with an application error is tried a
// bounded number of times, dropped with an Error log, and the queue moves on.
func TestPublisherApplicationErrorDropsEvent(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	var mu sync.Mutex
	tries := 0
	f.before = func(_ context.Context, _ int, env *types.Envelope) error {
		if seqOrNeg(env) == 3 {
			mu.Lock()
			tries++
			mu.Unlock()
			return status.Error(codes.InvalidArgument, "bad event")
		}
		return nil
	}
	f.start()
	p, logs := startPublisher(t, f.path, fastConfig())
	for i := range 7 {
		p.Publish(TopicExit, exitEvent(i))
	}
	envs := f.waitRecorded(6)
	closePublisher(t, p)
	if got := fmt.Sprint(seqs(t, envs)); got != "[0 1 2 4 5 6]" {
		t.Errorf("delivered %s, want [0 1 2 4 5 6]", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if tries != defaultMaxAppAttempts {
		t.Errorf("rejected event tried %d times, want %d", tries, defaultMaxAppAttempts)
	}
	drops := logs.Matching(slog.LevelError, "events: containerd rejected event, dropping it")
	if len(drops) != 1 || drops[0].Values["topic"] != TopicExit {
		t.Errorf("drop logs %v, want one Error with the topic", drops)
	}
	if _, accepted := f.counts(); accepted != 1 {
		t.Errorf("%d connections, want 1: an application error must not cost the connection", accepted)
	}
}

// Unavailable is containerd saying "not now": it is retried without limit,
// well past the application-error bound.
func TestPublisherUnavailableRetriedWithoutLimit(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	const refusals = 3 * defaultMaxAppAttempts
	var mu sync.Mutex
	tries := 0
	f.before = func(_ context.Context, _ int, env *types.Envelope) error {
		if seqOrNeg(env) != 1 {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		tries++
		if tries <= refusals {
			return status.Error(codes.Unavailable, "starting up")
		}
		return nil
	}
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())
	for i := range 3 {
		p.Publish(TopicExit, exitEvent(i))
	}
	envs := f.waitRecorded(3)
	closePublisher(t, p)
	checkExactly(t, seqs(t, envs), 3)
	mu.Lock()
	defer mu.Unlock()
	if tries != refusals+1 {
		t.Errorf("event tried %d times, want %d", tries, refusals+1)
	}
}

// containerd accepts the connection but does not answer: the call times out,
// the sender reconnects and delivers on the new connection.
func TestPublisherWedgedCallTimesOutAndReconnects(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	release := make(chan struct{})
	f.before = func(_ context.Context, call int, _ *types.Envelope) error {
		if call != 1 {
			return nil
		}
		select { // wedged; ignores its context like a stuck containerd
		case <-release:
		case <-time.After(waitLimit):
		}
		return errors.New("released")
	}
	f.start()
	t.Cleanup(func() { close(release) }) // before f.stop (cleanups run LIFO)
	cfg := fastConfig()
	cfg.callTimeout = 200 * time.Millisecond
	p, logs := startPublisher(t, f.path, cfg)
	for i := range 5 {
		p.Publish(TopicExit, exitEvent(i))
	}
	envs := f.waitRecorded(5)
	checkExactly(t, seqs(t, envs), 5)
	if _, accepted := f.counts(); accepted < 2 {
		t.Errorf("%d connections, want a reconnect after the timeout", accepted)
	}
	r := logs.WaitFor(t, waitLimit, "of the timed-out call", func(r testutil.LogRecord) bool {
		return r.Msg == "events: cannot forward event to containerd, will retry"
	})
	if err, _ := r.Values["error"].(error); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("failure logged with %v, want a deadline", r.Values["error"])
	}
}

// Publish returns at once however stuck containerd is.
func TestPublishDoesNotBlock(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	release := make(chan struct{})
	f.before = func(context.Context, int, *types.Envelope) error {
		select {
		case <-release:
		case <-time.After(waitLimit):
		}
		return nil
	}
	f.start()
	cfg := fastConfig()
	cfg.callTimeout = 2 * waitLimit
	p, _ := startPublisher(t, f.path, cfg)

	const n = 10000
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := range n {
			p.Publish(TopicExit, exitEvent(i))
		}
	}()
	select {
	case <-published:
	case <-time.After(waitLimit):
		close(release)
		t.Fatalf("Publish blocked behind a stuck containerd")
	}
	close(release)
	envs := f.waitRecorded(n)
	checkExactly(t, seqs(t, envs), n)
}

// Close keeps delivering the queue until its context is done; here containerd
// comes up while Close waits, and everything arrives.
func TestPublisherCloseDeliversQueue(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	p, logs := startPublisher(t, f.path, fastConfig())
	const n = 300
	for i := range n {
		p.Publish(TopicExit, exitEvent(i))
	}
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		closed <- p.Close(ctx)
	}()
	logs.WaitFor(t, waitLimit, "of a failure", func(r testutil.LogRecord) bool {
		return r.Msg == "events: cannot forward event to containerd, will retry"
	})
	f.start()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(2 * waitLimit):
		t.Fatal("Close did not return")
	}
	envs, _ := f.recorded()
	checkExactly(t, seqs(t, envs), n)
	p.Publish(TopicDelete, &apievents.TaskDelete{}) // dropped, logged
	if w := logs.Matching(slog.LevelWarn, "events: publisher closed, event dropped"); len(w) != 1 || w[0].Values["topic"] != TopicDelete {
		t.Errorf("drop after Close logged as %v", w)
	}
}

// With containerd gone for good, Close gives up when its context is done,
// reports the undelivered events, and stays closed.
func TestPublisherCloseWithDeadServer(t *testing.T) {
	testutil.CheckLeaks(t)
	path := filepath.Join(t.TempDir(), "nobody-listens.sock")
	logs, logger := testutil.NewLog(t)
	p := newPublisher(path, testNamespace, logger, defaultConfig())
	p.Publish(TopicExit, exitEvent(1))
	p.Publish(TopicStart, &apievents.TaskStart{ContainerID: "c", Pid: 2})
	p.Publish(TopicExit, exitEvent(2))

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := p.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "3 event(s) undelivered") {
		t.Errorf("Close = %v, want 3 undelivered and a deadline", err)
	}
	reports := logs.Matching(slog.LevelError, "events: publisher stopped with undelivered events")
	if len(reports) != 1 {
		t.Fatalf("undelivered reported %d times, want once", len(reports))
	}
	if c, _ := reports[0].Values["count"].(int64); c != 3 {
		t.Errorf("reported count %v, want 3", reports[0].Values["count"])
	}
	if got := reports[0].Values["topics"]; got != "/tasks/exit=2 /tasks/start=1" {
		t.Errorf("reported topics %v", got)
	}

	// Publish after Close: no panic, logged, dropped.
	p.Publish(TopicDelete, &apievents.TaskDelete{ContainerID: "c"})
	if w := logs.Matching(slog.LevelWarn, "events: publisher closed, event dropped"); len(w) != 1 {
		t.Errorf("drop after Close logged %d times, want once", len(w))
	}
	// Close again: same outcome, no second report, no wait.
	err2 := p.Close(context.Background())
	if err2 == nil || !strings.Contains(err2.Error(), "3 event(s) undelivered") {
		t.Errorf("second Close = %v, want the same 3 undelivered", err2)
	}
	if n := len(logs.Matching(slog.LevelError, "events: publisher stopped with undelivered events")); n != 1 {
		t.Errorf("undelivered reported %d times, want once", n)
	}
}

// Publish racing Close never panics and never loses an event silently: every
// event is either delivered or logged as dropped.
func TestPublisherPublishRacingClose(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	p, logs := startPublisher(t, f.path, fastConfig())

	const writers, each = 4, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				p.Publish(TopicExit, exitEvent(w*each+i))
			}
		})
	}
	var closers sync.WaitGroup
	for range 3 {
		closers.Go(func() { closePublisher(t, p) })
	}
	wg.Wait()
	closers.Wait()
	envs, _ := f.recorded()
	dropped := logs.Matching(slog.LevelWarn, "events: publisher closed, event dropped")
	if len(envs)+len(dropped) != writers*each {
		t.Errorf("%d delivered + %d dropped != %d published", len(envs), len(dropped), writers*each)
	}
}

// Without an address (no containerd to talk to) the Publisher says so once and
// discards; it starts no goroutine and nothing crashes.
func TestPublisherEmptyAddress(t *testing.T) {
	testutil.CheckLeaks(t)
	p, logs := startPublisher(t, "", defaultConfig())
	p.Publish(TopicExit, exitEvent(1))
	p.Publish(TopicExit, exitEvent(2))
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("Close = %v", err)
	}
	p.Publish(TopicExit, exitEvent(3))
	if w := logs.Matching(slog.LevelWarn, "events: no containerd ttrpc address, events will be discarded"); len(w) != 1 {
		t.Errorf("warned %d times, want once", len(w))
	}
}

// An address that is not a unix socket is reported at Error once; the
// Publisher then behaves as without an address.
func TestPublisherUnusableAddress(t *testing.T) {
	testutil.CheckLeaks(t)
	p, logs := startPublisher(t, "tcp://127.0.0.1:1", defaultConfig())
	p.Publish(TopicExit, exitEvent(1))
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("Close = %v", err)
	}
	if e := logs.Matching(slog.LevelError, "events: unusable containerd ttrpc address, events will be discarded"); len(e) != 1 {
		t.Errorf("reported %d times, want once", len(e))
	}
}

// A nil event is a caller bug: logged at Error, dropped, and the stream goes on.
func TestPublisherNilEvent(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	p, logs := startPublisher(t, f.path, fastConfig())
	p.Publish(TopicExit, exitEvent(0))
	p.Publish(TopicExit, nil)
	p.Publish(TopicExit, exitEvent(1))
	envs := f.waitRecorded(2)
	closePublisher(t, p)
	checkExactly(t, seqs(t, envs), 2)
	if e := logs.Matching(slog.LevelError, "events: nil event dropped"); len(e) != 1 {
		t.Errorf("nil event logged %d times, want once", len(e))
	}
}
