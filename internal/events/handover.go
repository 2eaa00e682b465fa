package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// OutboxHanded describes one Outbox across a live upgrade. JSON.
type OutboxHanded struct{}

// HandOver returns the Outbox's description; it fails if a start is
// pending (an RPC under way, which the quiesce rules out).
func (o *Outbox) HandOver() (OutboxHanded, error) {
	return OutboxHanded{}, errors.New("events: hand-over not built")
}

// AdoptOutbox rebuilds, in the image a live upgrade started, the Outbox h
// describes.
func AdoptOutbox(sink Sink, logger *slog.Logger, h OutboxHanded) (*Outbox, error) {
	return nil, errors.New("events: hand-over not built")
}

// HandedEvent is one event not yet delivered, as it crosses a live upgrade.
type HandedEvent struct{}

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
	topic := p.queue[0].topic
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
// order.
func (p *Publisher) HandOver() ([]HandedEvent, error) {
	return nil, errors.New("events: hand-over not built")
}

// Adopt, in the image a live upgrade started and before anything is
// published, queues the handed-over events first, in their order.
func (p *Publisher) Adopt(evs []HandedEvent) error { return errors.New("events: hand-over not built") }
