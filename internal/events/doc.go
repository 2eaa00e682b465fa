// Package events delivers the shim's task events to containerd.
//
// The shim forwards every event to containerd by calling
// containerd.services.events.ttrpc.v1.Events/Forward on containerd's ttrpc
// socket (the TTRPC_ADDRESS the shim was started with). The envelope carries
// the namespace, the topic, the time the event was published and the event
// itself, a github.com/containerd/containerd/api/events message encoded with
// typeurl (type URL "containerd.events.TaskExit" and so on). The namespace is
// also sent as ttrpc metadata under "containerd-namespace-ttrpc", as
// containerd's own shims do.
//
// # Invariants
//
// Publisher, the Sink that talks to containerd, guarantees:
//
//   - Publish never blocks on containerd and never drops an event while the
//     Publisher is open. Events wait in an unbounded in-memory FIFO.
//   - Events are delivered in the order Publish was called (across goroutines:
//     in the order the calls took the Publisher's lock). One sender goroutine
//     forwards them one at a time; event n+1 is not sent before containerd
//     acknowledged event n or event n was given up on (see below).
//   - Delivery is at least once. A transport failure (containerd's socket gone
//     or refusing, the connection closed or reset, a call deadline) is retried
//     without limit, with a fresh connection, backing off from 10 ms to 2 s.
//     If containerd received an event but the acknowledgement was lost, the
//     event is sent again: containerd can see the same event twice in a row,
//     never out of order. A Forward that containerd answers with an
//     application error (for example InvalidArgument) is retried at most 10
//     times, then that one event is dropped and logged at Error.
//   - Close delivers what is queued until its context is done, then gives up,
//     logs the events left undelivered at Error and returns an error saying how
//     many. Events published after Close are logged at Warn and dropped.
//
// Outbox, one per process, orders that process's events on top of a Sink: the
// start event always precedes the exit event, even when the reaper observes
// the exit before the Start handler publishes the start.
//
// # Live upgrade
//
// Both cross a live upgrade's execve (docs/design.md, "Live upgrade").
// Publisher.Pause parks the sender between deliveries; HandOver then returns
// the queue, in order, each event as the ForwardRequest the old image would
// have sent (HandedEvent), and the new image's Publisher.Adopt queues them
// before anything is published: no event is lost, reordered or re-stamped,
// and only the event in flight at the pause can reach containerd twice (if
// its acknowledgement was lost), as after any lost acknowledgement.
// Outbox.HandOver carries an Outbox's flags (OutboxHanded) so that the
// adopted Outbox keeps the one-exit rule and the start before the exit; it
// refuses while a start is pending. HandOver changes nothing: after a failed
// hand-over, Unpause resumes as before. A paused Publisher delivers nothing,
// not even in Close.
//
// # Concurrency
//
// Each Publisher owns exactly one goroutine, the sender; Close stops it and
// waits for it. The lock order is Outbox.mu → Publisher.mu: an Outbox calls
// Sink.Publish while holding its own mutex (that is what keeps a start and a
// concurrent exit in order), which is allowed because Publish only appends to
// the queue under the Publisher's mutex and never calls back. No lock is ever
// held across a network call.
package events

// Topics of the task events the shim publishes. They are the topics
// containerd's own runtime v2 shims use; containerd routes and validates
// events by topic.
const (
	// TopicCreate goes with events.TaskCreate.
	TopicCreate = "/tasks/create"
	// TopicStart goes with events.TaskStart.
	TopicStart = "/tasks/start"
	// TopicExit goes with events.TaskExit.
	TopicExit = "/tasks/exit"
	// TopicOOM goes with events.TaskOOM.
	TopicOOM = "/tasks/oom"
	// TopicExecAdded goes with events.TaskExecAdded.
	TopicExecAdded = "/tasks/exec-added"
	// TopicExecStarted goes with events.TaskExecStarted.
	TopicExecStarted = "/tasks/exec-started"
	// TopicPaused goes with events.TaskPaused.
	TopicPaused = "/tasks/paused"
	// TopicResumed goes with events.TaskResumed.
	TopicResumed = "/tasks/resumed"
	// TopicDelete goes with events.TaskDelete.
	TopicDelete = "/tasks/delete"
	// TopicCheckpointed goes with events.TaskCheckpointed.
	TopicCheckpointed = "/tasks/checkpointed"
)
