package events

import (
	"log/slog"
	"sync"

	"google.golang.org/protobuf/proto"
)

// heldEvent is an event an Outbox holds back until a pending start resolves.
type heldEvent struct {
	topic string
	event proto.Message
}

// Outbox orders the events of one process (the init process of a task, or one
// exec) on top of a Sink. Its zero value is not usable; use NewOutbox.
//
// The events reach the Sink in the order of the Outbox calls, with one
// exception that guarantees a process's start event (TaskCreate for an init
// being created, TaskStart or TaskExecStarted when it starts) precedes its
// exit event:
// between ExpectStart and the matching Started or AbortStart, an Exit is held
// back, and so is every event sent after it. Started publishes the start event
// and then everything held, in order; AbortStart (the start failed) publishes
// everything held, without a start event. The reaper may thus call Exit as soon
// as it sees the process die, even before the Start handler got to Started.
//
// Abandon drops everything, held and later: for a process whose creation
// failed after it could already exit, which containerd never heard of.
//
// Exactly one exit per Outbox: a second Exit is dropped with a Warn. After the
// exit, Send still publishes (the TaskDelete follows the exit), but a start
// event can no longer precede the exit: Started is then dropped with a Warn,
// and ExpectStart ignored with a Warn. These are caller bugs that the Outbox
// contains rather than forwards to containerd.
//
// All methods are safe for concurrent use. Lock order: Outbox.mu →
// Publisher.mu. The Outbox calls Sink.Publish while holding its mutex; that is
// what keeps a Started and a concurrent Exit in order, and it is allowed
// because Publish never blocks and never calls back into the Outbox. Warnings
// go to the logger given to NewOutbox. A held event is kept by reference until it is
// published: do not modify an event after passing it to the Outbox.
type Outbox struct {
	sink   Sink
	logger *slog.Logger

	// mu guards startPending, exitSeen, exitPublished, held and
	// abandoned, and serialises the calls into sink.
	mu sync.Mutex
	// startPending: ExpectStart was called and neither Started nor
	// AbortStart yet.
	startPending bool
	// exitSeen: Exit was called once (the exit is published or held).
	exitSeen bool
	// exitPublished: the exit event went to the sink.
	exitPublished bool
	// held is the exit and the events sent after it, while a start is
	// pending; empty otherwise.
	held []heldEvent
	// abandoned: Abandon was called; every event is dropped.
	abandoned bool
}

// NewOutbox returns an Outbox that publishes to sink and logs its warnings
// to logger. It panics if logger is nil: a component never logs to
// slog.Default, which goes nowhere in the server.
func NewOutbox(sink Sink, logger *slog.Logger) *Outbox {
	if logger == nil {
		panic("events: NewOutbox with a nil logger")
	}
	return &Outbox{sink: sink, logger: logger}
}

// Send publishes event now, unless an exit is being held for a pending start:
// then event is held behind the exit and published right after it. Send is
// allowed after the exit (for the TaskDelete).
func (o *Outbox) Send(topic string, event proto.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.abandoned {
		o.logger.Debug("events: event of an abandoned process dropped", "topic", topic)
		return
	}
	if len(o.held) > 0 {
		o.held = append(o.held, heldEvent{topic, event})
		return
	}
	o.sink.Publish(topic, event)
}

// ExpectStart marks a start as pending: until Started or AbortStart, Exit is
// held back. Call it before the process can possibly exit, i.e. before asking
// the runtime to create or start it. It is a no-op if a start is already
// pending or the Outbox is abandoned, and is ignored with a Warn if the exit
// was already seen.
func (o *Outbox) ExpectStart() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.startPending || o.abandoned {
		return
	}
	if o.exitSeen {
		o.logger.Warn("events: ExpectStart after the exit ignored")
		return
	}
	o.startPending = true
}

// Started publishes the start event, then the held exit and the events held
// behind it, if any, and ends the pending start. Without a pending start it
// publishes the start event unless the exit was already published, in which
// case the start event is dropped with a Warn.
func (o *Outbox) Started(topic string, event proto.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.abandoned {
		o.logger.Debug("events: start event of an abandoned process dropped", "topic", topic)
		return
	}
	if !o.startPending && o.exitPublished {
		o.logger.Warn("events: start event after the exit dropped", "topic", topic)
		return
	}
	o.sink.Publish(topic, event)
	o.releaseLocked()
}

// AbortStart ends a pending start without a start event (the start failed)
// and publishes the held exit and the events behind it, if any. It is a no-op
// without a pending start.
func (o *Outbox) AbortStart() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.startPending {
		return
	}
	o.releaseLocked()
}

// Exit publishes the exit event, or holds it while a start is pending. Only
// the first Exit counts; a second one is dropped with a Warn.
func (o *Outbox) Exit(topic string, event proto.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.exitSeen {
		o.logger.Warn("events: second exit event dropped", "topic", topic)
		return
	}
	o.exitSeen = true
	if o.abandoned {
		o.logger.Debug("events: exit of an abandoned process dropped", "topic", topic)
		return
	}
	if o.startPending {
		o.held = append(o.held, heldEvent{topic, event})
		return
	}
	o.sink.Publish(topic, event)
	o.exitPublished = true
}

// Abandon drops what is held and every event sent later: the process was
// never announced to containerd, because the request that made it failed
// (a Create whose runtime call or console failed after the process was
// already watched), and its exit must not be published for a task
// containerd never knew. Abandon is final.
func (o *Outbox) Abandon() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.held) > 0 {
		o.logger.Debug("events: held events of an abandoned process dropped", "count", len(o.held))
	}
	o.abandoned = true
	o.startPending = false
	o.held = nil
}

// releaseLocked ends the pending start and publishes what was held.
func (o *Outbox) releaseLocked() {
	o.startPending = false
	for i, h := range o.held {
		o.sink.Publish(h.topic, h.event)
		o.held[i] = heldEvent{}
	}
	o.held = nil
	if o.exitSeen {
		o.exitPublished = true
	}
}
