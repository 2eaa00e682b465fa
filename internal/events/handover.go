package events

import (
	"context"
	"errors"
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
func (p *Publisher) Pause(ctx context.Context) error {
	return errors.New("events: hand-over not built")
}

// Unpause resumes the sender after a failed hand-over.
func (p *Publisher) Unpause() {}

// HandOver, on a paused Publisher, returns the events not yet delivered, in
// order.
func (p *Publisher) HandOver() ([]HandedEvent, error) {
	return nil, errors.New("events: hand-over not built")
}

// Adopt, in the image a live upgrade started and before anything is
// published, queues the handed-over events first, in their order.
func (p *Publisher) Adopt(evs []HandedEvent) error { return errors.New("events: hand-over not built") }
