package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	// The event types containerd defines register themselves in the global
	// protobuf registry, which HandedEvent.Validate resolves payloads in.
	_ "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// OutboxHanded describes one Outbox across a live upgrade. JSON.
//
// It carries the Outbox's flags but neither a pending start nor held
// events: HandOver refuses an Outbox with a start pending, and only then can
// events be held (an exit and what follows it wait for the start). A start
// is pending only inside a Create or Start request, between its ExpectStart
// and its Started or AbortStart, and the hand-over happens with no request
// in flight. Were a pending start carried, nothing in the new image would
// ever resolve it (the request that would is gone with the old image), so
// the held exit would never be published; refusing instead fails the
// upgrade before execve, and the old image, which still has the request,
// goes on.
type OutboxHanded struct {
	// ExitSeen: Exit was called once; a later Exit is dropped (one exit
	// per process).
	ExitSeen bool `json:"exit_seen"`
	// ExitPublished: the exit went to the Sink; a later start event is
	// dropped (no start after the exit). Implies ExitSeen.
	ExitPublished bool `json:"exit_published"`
	// Abandoned: every event is dropped (the process's creation failed).
	Abandoned bool `json:"abandoned"`
}

// Validate reports whether h describes an Outbox that HandOver could have
// written: an exit published was seen, and an exit seen was published
// unless the Outbox is abandoned (with no start pending, an exit is never
// held).
func (h OutboxHanded) Validate() error {
	if h.ExitPublished && !h.ExitSeen {
		return errors.New("events: handed outbox: exit published but not seen")
	}
	if h.ExitSeen && !h.ExitPublished && !h.Abandoned {
		return errors.New("events: handed outbox: exit seen but neither published nor abandoned (an exit held with no start pending)")
	}
	return nil
}

// HandOver returns the Outbox's description; it fails if a start is
// pending (an RPC under way, which the quiesce rules out). It does not
// change the Outbox. Call it once nothing calls the Outbox any more (the
// reaper, the OOM watch and the requests are paused); a call racing it
// might go unrecorded.
func (o *Outbox) HandOver() (OutboxHanded, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.startPending {
		return OutboxHanded{}, fmt.Errorf("events: outbox hand-over: a start is pending (%d event(s) held)", len(o.held))
	}
	return OutboxHanded{
		ExitSeen:      o.exitSeen,
		ExitPublished: o.exitPublished,
		Abandoned:     o.abandoned,
	}, nil
}

// AdoptOutbox rebuilds, in the image a live upgrade started, the Outbox h
// describes, publishing to sink and warning to logger. It refuses an h that
// Validate refuses, a nil sink and a nil logger.
func AdoptOutbox(sink Sink, logger *slog.Logger, h OutboxHanded) (*Outbox, error) {
	if sink == nil || logger == nil {
		return nil, errors.New("events: adopt outbox: nil sink or logger")
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	o := NewOutbox(sink, logger)
	o.exitSeen = h.ExitSeen
	o.exitPublished = h.ExitPublished
	o.abandoned = h.Abandoned
	return o, nil
}

// HandedEvent is one event not yet delivered, as it crosses a live upgrade.
// JSON.
type HandedEvent struct {
	// ForwardRequest is the containerd.services.events.ttrpc.v1
	// ForwardRequest the old image would have sent, in protobuf's binary
	// encoding (base64 in the JSON): the envelope with the namespace, the
	// topic, the time of the original Publish and the event as an Any.
	ForwardRequest []byte `json:"forward_request"`
}

// Validate decodes h and checks what a Publisher needs to forward it: the
// request decodes, its envelope has a topic, a valid timestamp and an event
// whose type the global protobuf registry knows and whose bytes decode as
// that type. It never panics, whatever the bytes.
func (h HandedEvent) Validate() error {
	_, err := h.decode()
	return err
}

// decode returns the request h carries, validated (see Validate).
func (h HandedEvent) decode() (*eventsapi.ForwardRequest, error) {
	if len(h.ForwardRequest) == 0 {
		return nil, errors.New("events: handed event: empty forward_request")
	}
	req := &eventsapi.ForwardRequest{}
	if err := proto.Unmarshal(h.ForwardRequest, req); err != nil {
		return nil, fmt.Errorf("events: handed event: forward_request: %w", err)
	}
	env := req.GetEnvelope()
	if env == nil {
		return nil, errors.New("events: handed event: no envelope")
	}
	if env.GetTopic() == "" {
		return nil, errors.New("events: handed event: empty topic")
	}
	if err := env.GetTimestamp().CheckValid(); err != nil {
		return nil, fmt.Errorf("events: handed event %s: timestamp: %w", env.GetTopic(), err)
	}
	if env.GetEvent() == nil {
		return nil, fmt.Errorf("events: handed event %s: no event", env.GetTopic())
	}
	if _, err := anypb.UnmarshalNew(env.GetEvent(), proto.UnmarshalOptions{}); err != nil {
		return nil, fmt.Errorf("events: handed event %s: payload %q: %w", env.GetTopic(), env.GetEvent().GetTypeUrl(), err)
	}
	return req, nil
}

// Pause parks the sender between deliveries, bounded by ctx. Unpause undoes
// it.
//
// A Forward in flight when Pause is called finishes or fails (bounded by the
// call timeout, 5 s); either way the sender then takes no further event,
// and an event not acknowledged stays at the head of the queue. A backoff
// between two attempts is cut short. Publish still works while paused: it
// only appends to the queue. Pause returns once the sender is parked, or
// when ctx is done: then it fails, and the Publisher is unpaused again (the
// caller need not call Unpause). Pausing a paused Publisher returns at
// once. A Publisher that discards events (no address) has no sender and
// pauses at once.
func (p *Publisher) Pause(ctx context.Context) error {
	p.mu.Lock()
	p.paused = true
	if !p.delivering {
		p.mu.Unlock()
		return nil
	}
	if p.parked == nil {
		p.parked = make(chan struct{})
	}
	parked := p.parked
	topic := p.queue[0].topic // delivering: the head is still queued
	p.mu.Unlock()
	p.nudge() // cut a backoff short
	select {
	case <-parked:
		return nil
	case <-ctx.Done():
	}
	select {
	case <-parked: // both at once: the sender is parked
		return nil
	default:
	}
	p.Unpause()
	return fmt.Errorf("events: pause: the delivery of %s still under way: %w", topic, ctx.Err())
}

// Unpause resumes the sender after a failed hand-over: it goes on with the
// head of the queue as if nothing happened (a backoff cut short by Pause is
// not waited out again). It is a no-op on a Publisher not paused.
func (p *Publisher) Unpause() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
	p.nudge()
}

// isPaused reports whether Pause was called and Unpause not yet.
func (p *Publisher) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// HandOver, on a paused Publisher, returns the events not yet delivered, in
// order: each is its ForwardRequest as the old image would have sent it
// (same namespace, topic, timestamp and payload). It fails unless Pause
// returned nil and Unpause was not called since. It does not change the
// Publisher: after a failed hand-over, Unpause delivers them all as before.
// Events published after HandOver are not in what it returned.
//
// The counters (Stats) are not handed over: the new image's count from the
// upgrade, and count the adopted events as published.
func (p *Publisher) HandOver() ([]HandedEvent, error) {
	p.mu.Lock()
	if !p.paused || p.delivering {
		p.mu.Unlock()
		return nil, errors.New("events: hand-over of a publisher not paused")
	}
	// The requests are never modified once queued: marshal them unlocked.
	queue := append([]item(nil), p.queue...)
	p.mu.Unlock()
	evs := make([]HandedEvent, len(queue))
	for i, it := range queue {
		b, err := proto.Marshal(it.req)
		if err != nil {
			return nil, fmt.Errorf("events: hand-over of event %d (%s): %w", i, it.topic, err)
		}
		evs[i] = HandedEvent{ForwardRequest: b}
	}
	return evs, nil
}

// Adopt, in the image a live upgrade started and before anything is
// published, queues the handed-over events first, in their order.
//
// Each is validated (HandedEvent.Validate) and must be of this Publisher's
// namespace; if one is not, Adopt queues none and returns an error naming
// it. Adopt fails once an event was published or adopted on this Publisher,
// and after Close: its events must come before any other. It then wakes
// the sender, which forwards them as they were, with their original
// timestamps. A Publisher that discards events (no address) validates and
// discards them, with a Warn.
func (p *Publisher) Adopt(evs []HandedEvent) error {
	items := make([]item, len(evs))
	for i, h := range evs {
		req, err := h.decode()
		if err != nil {
			return fmt.Errorf("events: adopt: event %d: %w", i, err)
		}
		env := req.GetEnvelope()
		if env.GetNamespace() != p.namespace {
			return fmt.Errorf("events: adopt: event %d (%s) of namespace %q, this publisher's is %q", i, env.GetTopic(), env.GetNamespace(), p.namespace)
		}
		items[i] = item{topic: env.GetTopic(), req: req}
	}
	if p.path == "" {
		if len(items) > 0 {
			p.logger.Warn("events: handed-over events discarded, no containerd address", "count", len(items))
		}
		return nil
	}
	p.mu.Lock()
	switch {
	case p.closing:
		p.mu.Unlock()
		return errors.New("events: adopt: publisher closed")
	case len(p.queue) > 0 || p.delivering || p.published.Load() > 0:
		p.mu.Unlock()
		return errors.New("events: adopt: events were already published or adopted")
	}
	p.queue = append(items, p.queue...)
	p.published.Add(uint64(len(items)))
	p.mu.Unlock()
	p.nudge()
	return nil
}

// abandon stops the sender without delivering, logging or reporting what is
// queued, and waits for it: for the old Publisher after a hand-over in a
// test, where in a real upgrade execve ends the sender. After it, Publish
// drops and Close returns nil.
func (p *Publisher) abandon() {
	p.mu.Lock()
	p.closing = true
	p.quiet = true
	p.mu.Unlock()
	if p.done == nil {
		return
	}
	p.cancel()
	<-p.done
}
