package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// namespaceMetadataKey is the ttrpc metadata key containerd reads the
// namespace of a request from (containerd's namespaces.TTRPCHeader).
const namespaceMetadataKey = "containerd-namespace-ttrpc"

// Defaults of the delivery policy; see config.
const (
	defaultCallTimeout     = 5 * time.Second
	defaultBackoffMin      = 10 * time.Millisecond
	defaultBackoffMax      = 2 * time.Second
	defaultMaxAppAttempts  = 10
	defaultWarnEvery       = 30
	defaultClientCloseWait = 2 * time.Second
)

// config is the delivery policy of a Publisher. NewPublisher uses
// defaultConfig; tests shorten it.
type config struct {
	// callTimeout bounds one dial and one Forward call.
	callTimeout time.Duration
	// backoffMin is the wait after the first failed attempt; each further
	// failure doubles it, up to backoffMax. A success resets it.
	backoffMin, backoffMax time.Duration
	// maxAppAttempts is how many times an event that containerd answers with
	// an application error is tried before it is dropped.
	maxAppAttempts int
	// warnEvery: of a run of transport failures, the first and every
	// warnEvery-th are logged at Warn, the others at Debug.
	warnEvery int
	// clientCloseWait bounds the wait for a closed ttrpc client's goroutine.
	clientCloseWait time.Duration
}

func defaultConfig() config {
	return config{
		callTimeout:     defaultCallTimeout,
		backoffMin:      defaultBackoffMin,
		backoffMax:      defaultBackoffMax,
		maxAppAttempts:  defaultMaxAppAttempts,
		warnEvery:       defaultWarnEvery,
		clientCloseWait: defaultClientCloseWait,
	}
}

// item is one queued event: its topic (for logs) and the request that
// forwards it. The request is built once, by Publish, and never modified.
type item struct {
	topic string
	req   *eventsapi.ForwardRequest
}

// Publisher is the Sink that forwards events to containerd over ttrpc.
//
// Invariants:
//   - Publish never blocks on the network and never drops an event while the
//     Publisher is open; the queue is unbounded.
//   - Events are forwarded one at a time, in queue order, by a single sender
//     goroutine. An event is removed from the queue only once containerd
//     acknowledged it, or once containerd rejected it maxAppAttempts times
//     with an application error (logged at Error).
//   - Transport failures are retried without limit, on a fresh connection,
//     with exponential backoff (10 ms doubling to 2 s). Delivery is therefore
//     at least once: an event whose acknowledgement was lost is sent again,
//     right after itself, never after a later event.
//   - After Close, Publish logs at Warn and drops the event.
//   - While paused (Pause, for a live upgrade) the sender takes no event off
//     the queue; Publish still appends. HandOver then returns the queue, and
//     Adopt in the new image puts it back, in order, before anything else.
//
// A Publisher created with an empty (or non-unix) address starts no
// goroutine and discards every event; it logs that once, at construction.
type Publisher struct {
	// path is the unix socket to dial; "" when the Publisher discards events.
	path      string
	namespace string
	// md is the ttrpc metadata sent with every Forward; read-only.
	md     ttrpc.MD
	cfg    config
	logger *slog.Logger
	// wake is 1-buffered: Publish and Close leave a token in it so that an
	// idle sender looks at the queue again. Never closed.
	wake chan struct{}
	// cancel stops the sender (Close calls it once its ctx is done); done is
	// closed by the sender goroutine when it has returned. Both are nil for
	// a discarding Publisher.
	cancel context.CancelFunc
	done   chan struct{}

	// published, delivered, retried and dropped count events for `tether
	// inspect` and `tether metrics` (see Stats): published by Publish,
	// the others by the sender; never reset.
	published, delivered, retried, dropped atomic.Uint64

	// mu guards queue, closing, undelivered, paused, delivering, parked
	// and quiet.
	mu sync.Mutex
	// queue is the FIFO of events not yet delivered; queue[0] is the event
	// the sender is working on. Publish appends, Adopt fills an empty
	// queue, only the sender pops.
	queue []item
	// closing is set by Close; from then Publish drops.
	closing bool
	// undelivered lists the topics of the events still queued when the
	// sender stopped; set once, by the sender, as it returns.
	undelivered []string
	// paused is set by Pause and cleared by Unpause (or by a Pause that
	// failed): while it is set the sender takes no event off the queue.
	paused bool
	// delivering: the sender took queue[0] and works on it (a Forward, or
	// the backoff after a failed one); queue[0] is then that event. Set by
	// the sender in next, cleared by it (betweenLocked) in next, in pop
	// and as it stops; false whenever the sender is between deliveries.
	delivering bool
	// parked is closed by the sender when, paused, it is back between
	// deliveries; a Pause that found the sender delivering waits on it.
	// nil when nobody waits.
	parked chan struct{}
	// quiet is set by abandon: the sender stops without reporting the
	// queue (it was handed over).
	quiet bool
}

// NewPublisher returns a Publisher that forwards events for namespace to the
// containerd ttrpc socket at address and starts its sender goroutine; Close
// stops it. address is "unix:///path", "unix:/path" or "/path". The first
// dial happens when the first event is due, so containerd need not be up yet.
// It panics if logger is nil.
func NewPublisher(address, namespace string, logger *slog.Logger) *Publisher {
	return newPublisher(address, namespace, logger, defaultConfig())
}

func newPublisher(address, namespace string, logger *slog.Logger, cfg config) *Publisher {
	if logger == nil {
		panic("events: NewPublisher with a nil logger")
	}
	p := &Publisher{
		namespace: namespace,
		md:        ttrpc.MD{namespaceMetadataKey: []string{namespace}},
		cfg:       cfg,
		logger:    logger,
		wake:      make(chan struct{}, 1),
	}
	path, err := socketPath(address)
	switch {
	case address == "":
		logger.Warn("events: no containerd ttrpc address, events will be discarded", "namespace", namespace)
		return p
	case err != nil:
		logger.Error("events: unusable containerd ttrpc address, events will be discarded", "address", address, "error", err)
		return p
	}
	p.path = path
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.done = make(chan struct{})
	go p.run(ctx)
	return p
}

// socketPath returns the unix socket path of a containerd ttrpc address:
// "unix:///path", "unix:/path" or a plain path.
func socketPath(address string) (string, error) {
	path := address
	switch {
	case strings.HasPrefix(address, "unix://"):
		path = strings.TrimPrefix(address, "unix://")
	case strings.HasPrefix(address, "unix:"):
		path = strings.TrimPrefix(address, "unix:")
	case strings.Contains(address, "://"):
		return "", fmt.Errorf("address %q: only unix sockets are supported", address)
	}
	if path == "" {
		return "", fmt.Errorf("address %q: empty socket path", address)
	}
	return path, nil
}

// Publish stamps the event with the current time, encodes it and queues it
// for delivery. It never blocks on the network and never calls back into its
// caller. After Close it logs at Warn and drops the event. A nil event, or one
// typeurl cannot encode, is a programming error: it is logged at Error and
// dropped.
func (p *Publisher) Publish(topic string, event proto.Message) {
	if p.path == "" {
		p.logger.Debug("events: event discarded, no containerd address", "topic", topic)
		return
	}
	if event == nil {
		p.logger.Error("events: nil event dropped", "topic", topic)
		return
	}
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		p.logger.Error("events: cannot encode event, dropped", "topic", topic, "error", err)
		return
	}
	it := item{topic: topic, req: &eventsapi.ForwardRequest{Envelope: &types.Envelope{
		Namespace: p.namespace,
		Topic:     topic,
		Event:     a,
	}}}

	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		p.dropped.Add(1)
		p.logger.Warn("events: publisher closed, event dropped", "topic", topic)
		return
	}
	// Stamped under the lock so that timestamps follow queue order.
	it.req.Envelope.Timestamp = timestamppb.Now()
	p.queue = append(p.queue, it)
	// Under mu, so that the sender's delivered never runs ahead of it.
	p.published.Add(1)
	p.mu.Unlock()
	p.nudge()
}

// Close stops accepting events, lets the sender deliver what is queued until
// ctx is done, then stops the sender, closes the connection and waits for the
// sender goroutine. If events were left undelivered it logs them at Error
// (count and topics) and returns an error saying how many. Close is
// idempotent and safe to call concurrently; every call reports the same
// outcome. The wait after ctx is done is bounded: every blocking step of the
// sender observes the cancellation. A paused Publisher delivers nothing:
// Close then waits for ctx and reports the queue undelivered, unless it was
// empty; Unpause first to flush it.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	if p.done == nil {
		return nil
	}
	p.nudge()
	select {
	case <-p.done:
	case <-ctx.Done():
		p.cancel()
		<-p.done
	}
	p.cancel()

	p.mu.Lock()
	n := len(p.undelivered)
	p.mu.Unlock()
	if n == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("events: close: %d event(s) undelivered: %w", n, err)
	}
	return fmt.Errorf("events: close: %d event(s) undelivered", n)
}

// nudge wakes the sender if it is waiting for work. It never blocks.
func (p *Publisher) nudge() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// run is the sender goroutine: it delivers the head of the queue until the
// queue is empty and Close was called, or until ctx is cancelled.
func (p *Publisher) run(ctx context.Context) {
	defer close(p.done)
	defer p.finish()
	s := &sender{p: p}
	defer s.disconnect()
	for {
		it, ok := p.next(ctx)
		if !ok {
			return
		}
		if !s.deliver(ctx, it) {
			return
		}
	}
}

// next returns the head of the queue, waiting for one if the queue is empty
// or the Publisher is paused. It reports false when the queue is empty and
// Close was called, or when ctx is done. Between its call and its return
// the sender is between deliveries: delivering is false, and a Pause
// waiting for that is released.
func (p *Publisher) next(ctx context.Context) (item, bool) {
	for {
		p.mu.Lock()
		p.betweenLocked()
		if !p.paused && len(p.queue) > 0 {
			it := p.queue[0]
			p.delivering = true
			p.mu.Unlock()
			return it, true
		}
		closing := p.closing && len(p.queue) == 0
		p.mu.Unlock()
		if closing {
			return item{}, false
		}
		select {
		case <-p.wake:
		case <-ctx.Done():
			return item{}, false
		}
	}
}

// betweenLocked records that the sender is between deliveries (it takes
// the next event only through next, which honours paused) and releases a
// Pause waiting for that. Only the sender calls it, with mu held.
func (p *Publisher) betweenLocked() {
	p.delivering = false
	if p.paused && p.parked != nil {
		close(p.parked)
		p.parked = nil
	}
}

// pop removes the head of the queue; the sender is then between
// deliveries. Only the sender calls it.
func (p *Publisher) pop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.betweenLocked()
	p.queue[0] = item{}
	p.queue = p.queue[1:]
	if len(p.queue) == 0 {
		p.queue = nil // let the backing array go
	}
}

// queued returns the number of events in the queue.
func (p *Publisher) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// finish records and reports the events left in the queue as the sender
// stops; after abandon it drops them silently (they were handed over).
func (p *Publisher) finish() {
	p.mu.Lock()
	p.betweenLocked()
	var topics []string
	if !p.quiet {
		topics = make([]string, len(p.queue))
		for i, it := range p.queue {
			topics[i] = it.topic
		}
	}
	p.queue = nil
	p.undelivered = topics
	p.mu.Unlock()
	if len(topics) > 0 {
		p.logger.Error("events: publisher stopped with undelivered events",
			"count", len(topics), "topics", topicCounts(topics), "namespace", p.namespace)
	}
}

// topicCounts summarises topics as "topic=count" pairs in topic order.
func topicCounts(topics []string) string {
	counts := make(map[string]int)
	for _, t := range topics {
		counts[t]++
	}
	var b strings.Builder
	for i, t := range slices.Sorted(maps.Keys(counts)) {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%d", t, counts[t])
	}
	return b.String()
}

// sender is the state of the sender goroutine. It is owned by that goroutine
// alone and needs no lock.
type sender struct {
	p *Publisher
	// client and svc are the current connection; nil when disconnected.
	client *ttrpc.Client
	svc    eventsapi.TTRPCEventsService
	// backoff is the wait after the next failure; 0 means cfg.backoffMin.
	backoff time.Duration
	// failures and appFailures count the failed attempts at the head of
	// the queue (all of them, and those containerd answered with an
	// application error); reset when the head is popped. They live here,
	// not in deliver, so that a Pause between two attempts does not reset
	// the application-error bound.
	failures, appFailures int
}

// deliver forwards it until containerd accepts it or it is given up on, then
// pops it from the queue and reports true. It also reports true, leaving it
// at the head of the queue, when the Publisher is paused after a failed
// attempt (next then parks the sender; it retries once unpaused). It reports
// false, leaving it queued, when ctx is done.
func (s *sender) deliver(ctx context.Context, it item) bool {
	cfg := s.p.cfg
	for {
		err := s.forward(ctx, it)
		if err == nil {
			if s.failures > 0 {
				s.p.logger.Info("events: event delivered after retries", "topic", it.topic, "attempts", s.failures+1)
			}
			s.p.pop()
			s.p.delivered.Add(1)
			s.reset()
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		s.failures++
		if isApplicationError(err) {
			s.appFailures++
			if s.appFailures >= cfg.maxAppAttempts {
				s.p.logger.Error("events: containerd rejected event, dropping it",
					"topic", it.topic, "attempts", s.appFailures, "error", err)
				s.p.pop()
				s.p.dropped.Add(1)
				s.reset()
				return true
			}
			s.p.logger.Warn("events: containerd rejected event, will retry",
				"topic", it.topic, "attempt", s.appFailures, "max_attempts", cfg.maxAppAttempts, "error", err)
		} else {
			s.disconnect()
			level := slog.LevelDebug
			if s.failures == 1 || s.failures%cfg.warnEvery == 0 {
				level = slog.LevelWarn
			}
			s.p.logger.Log(ctx, level, "events: cannot forward event to containerd, will retry",
				"topic", it.topic, "attempt", s.failures, "queued", s.p.queued(), "address", s.p.path, "error", err)
		}
		s.p.retried.Add(1)
		if s.p.isPaused() {
			return true
		}
		if !s.sleep(ctx) {
			return false
		}
		if s.p.isPaused() {
			return true
		}
	}
}

// reset forgets the failures of the event just popped.
func (s *sender) reset() {
	s.backoff = 0
	s.failures, s.appFailures = 0, 0
}

// nextWait returns the wait after the current failure and doubles the next
// one: backoffMin, 2×backoffMin, … up to backoffMax.
func (s *sender) nextWait() time.Duration {
	d := s.backoff
	if d == 0 {
		d = s.p.cfg.backoffMin
	}
	s.backoff = min(2*d, s.p.cfg.backoffMax)
	return d
}

// sleep waits out the current backoff. It reports false if ctx was done
// first. A Pause cuts it short (it reports true; the caller looks at
// paused): a wake-up for anything else (Publish, Close) does not, and its
// token is not needed afterwards, since next looks at the queue and at
// closing before it waits.
func (s *sender) sleep(ctx context.Context) bool {
	t := time.NewTimer(s.nextWait())
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		case <-s.p.wake:
			if s.p.isPaused() {
				return true
			}
		}
	}
}

// forward makes one Forward call, connecting first if needed. The call is
// bounded by cfg.callTimeout and by ctx.
func (s *sender) forward(ctx context.Context, it item) error {
	if s.client == nil {
		if err := s.connect(ctx); err != nil {
			return err
		}
	}
	callCtx, cancel := context.WithTimeout(ctx, s.p.cfg.callTimeout)
	defer cancel()
	// ttrpc writes the request to the socket without looking at the context;
	// closing the client when the call's context ends bounds that write too.
	client := s.client
	stop := context.AfterFunc(callCtx, func() { _ = client.Close() })
	_, err := s.svc.Forward(ttrpc.WithMetadata(callCtx, s.p.md), it.req)
	if !stop() {
		// The deadline (or Close) closed the connection under the call,
		// which may then report ttrpc.ErrClosed: say why.
		s.disconnect()
		if cause := callCtx.Err(); err != nil && !errors.Is(err, cause) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	if err != nil {
		return fmt.Errorf("forward %s: %w", it.topic, err)
	}
	return nil
}

// connect dials the socket afresh and makes a new ttrpc client on it.
func (s *sender) connect(ctx context.Context) error {
	dialCtx, cancel := context.WithTimeout(ctx, s.p.cfg.callTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dialCtx, "unix", s.p.path)
	if err != nil {
		return fmt.Errorf("dial containerd: %w", err)
	}
	s.client = ttrpc.NewClient(conn)
	s.svc = eventsapi.NewTTRPCEventsClient(s.client)
	s.p.logger.Debug("events: connected to containerd", "address", s.p.path)
	return nil
}

// disconnect closes the current client, if any, and waits (bounded) for its
// goroutine to end.
func (s *sender) disconnect() {
	c := s.client
	if c == nil {
		return
	}
	s.client, s.svc = nil, nil
	_ = c.Close() // always nil
	ctx, cancel := context.WithTimeout(context.Background(), s.p.cfg.clientCloseWait)
	defer cancel()
	if err := c.UserOnCloseWait(ctx); err != nil {
		s.p.logger.Warn("events: ttrpc client did not shut down in time", "error", err)
	}
}

// isApplicationError reports whether err is containerd's answer to a Forward
// (an RPC status) rather than a failure to get the request there and the
// answer back. Transport failures (dial errors, a closed or reset connection,
// ttrpc.ErrClosed, deadlines, and the Unavailable, DeadlineExceeded and
// Canceled statuses) are not application errors: they are retried without
// limit. Every other status, Unknown included, is, because it can repeat
// forever.
func isApplicationError(err error) bool {
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.OK, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return false
	}
	return true
}
