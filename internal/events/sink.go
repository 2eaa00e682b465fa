package events

import "google.golang.org/protobuf/proto"

// Sink accepts events for delivery. Publish never blocks and never drops an
// event (except after Close, which it logs).
//
// Implementations must not call back into their caller from Publish and must
// not block in it: an Outbox calls Publish while holding its own mutex.
// Publish may be called from any goroutine; events published from one
// goroutine are delivered in call order.
type Sink interface {
	// Publish queues event for delivery under topic. The event is encoded
	// (and so copied) before Publish returns: the caller may reuse it.
	Publish(topic string, event proto.Message)
}
