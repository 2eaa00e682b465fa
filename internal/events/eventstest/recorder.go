// Package eventstest provides an in-memory events.Sink for the unit tests of
// packages that publish events.
package eventstest

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/protobuf/proto"
)

// Recorded is one event a Recorder received.
type Recorded struct {
	Topic string
	// Event is a copy of the published message, taken at Publish time.
	Event proto.Message
}

// Recorder is a concurrency-safe events.Sink that records every published
// event, in Publish order. Like the real Publisher it copies the event at
// Publish time, never blocks and never drops. The zero value is ready to use.
type Recorder struct {
	// mu guards events and changed.
	mu     sync.Mutex
	events []Recorded
	// changed is closed (and forgotten) by the next Publish; WaitFor waits
	// on it. nil when nobody waits.
	changed chan struct{}
}

// Publish records (topic, a copy of event).
func (r *Recorder) Publish(topic string, event proto.Message) {
	var ev proto.Message
	if event != nil {
		ev = proto.Clone(event)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, Recorded{Topic: topic, Event: ev})
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// Events returns a copy of the events recorded so far, in Publish order.
func (r *Recorder) Events() []Recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Recorded(nil), r.events...)
}

// Topics returns the topics of the events recorded so far, in Publish order.
func (r *Recorder) Topics() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	topics := make([]string, len(r.events))
	for i, e := range r.events {
		topics[i] = e.Topic
	}
	return topics
}

// WaitFor waits until at least n events were recorded and returns them all.
// If ctx is done first it returns the events recorded so far and an error
// wrapping ctx.Err().
func (r *Recorder) WaitFor(ctx context.Context, n int) ([]Recorded, error) {
	for {
		r.mu.Lock()
		if len(r.events) >= n {
			evs := append([]Recorded(nil), r.events...)
			r.mu.Unlock()
			return evs, nil
		}
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		changed := r.changed
		r.mu.Unlock()

		select {
		case <-changed:
		case <-ctx.Done():
			evs := r.Events()
			return evs, fmt.Errorf("eventstest: waiting for %d events, got %d: %w", n, len(evs), ctx.Err())
		}
	}
}
