package introspect

import (
	"sync"
	"sync/atomic"

	eventsapi "github.com/containerd/containerd/api/events"
	"google.golang.org/protobuf/proto"
)

// Sink is the events sink of the shim (events.Sink): Publish never blocks
// and never calls back.
type Sink interface {
	Publish(topic string, event proto.Message)
}

// counters are one container's; atomics, bumped by the event that counts.
type counters struct {
	exits, ooms, execs atomic.Uint64
}

// CountingSink counts, per container, the events that tell what happened
// to it (TaskExit, TaskOOM, TaskExecStarted) on their way to the shim's
// real sink, to which it hands every event unchanged. A container's
// counters come with its TaskCreate and go when its TaskDelete passes:
// what is counted is what happened while the shim served it.
//
// It adds no goroutine and never blocks: Publish takes mu only to find
// or drop a container's entry, then bumps an atomic, and calls the next
// sink outside mu. So it keeps Sink's contract, and the order of events
// (it forwards in call order, on the caller's goroutine).
type CountingSink struct {
	next Sink

	mu   sync.Mutex
	byID map[string]*counters // guarded by mu
}

// NewCountingSink returns a CountingSink in front of next.
func NewCountingSink(next Sink) *CountingSink {
	return &CountingSink{next: next, byID: make(map[string]*counters)}
}

// Publish counts event and hands it to the next sink.
func (s *CountingSink) Publish(topic string, event proto.Message) {
	switch e := event.(type) {
	case *eventsapi.TaskCreate:
		s.mu.Lock()
		s.byID[e.GetContainerID()] = &counters{}
		s.mu.Unlock()
	case *eventsapi.TaskExit:
		if c := s.get(e.GetContainerID()); c != nil {
			c.exits.Add(1)
		}
	case *eventsapi.TaskOOM:
		if c := s.get(e.GetContainerID()); c != nil {
			c.ooms.Add(1)
		}
	case *eventsapi.TaskExecStarted:
		if c := s.get(e.GetContainerID()); c != nil {
			c.execs.Add(1)
		}
	case *eventsapi.TaskDelete:
		if e.GetID() == "" || e.GetID() == e.GetContainerID() {
			s.mu.Lock()
			delete(s.byID, e.GetContainerID())
			s.mu.Unlock()
		}
	}
	s.next.Publish(topic, event)
}

// get returns the counters of container id, nil if it has none: only a
// TaskCreate makes an entry, so an event that comes after the container's
// TaskDelete (an exit collected after Delete stopped waiting for it) is
// not counted and cannot bring an entry back for the shim's lifetime.
func (s *CountingSink) get(id string) *counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

// Counters returns the counters of container id (zero if nothing was
// counted yet).
func (s *CountingSink) Counters(id string) ContainerCounters {
	s.mu.Lock()
	c, ok := s.byID[id]
	s.mu.Unlock()
	if !ok {
		return ContainerCounters{}
	}
	return ContainerCounters{Exits: c.exits.Load(), OOMs: c.ooms.Load(), Execs: c.execs.Load()}
}

// Adopt gives container id, handed over by a live upgrade, its entry
// again, with the counts the old image had: the container's TaskCreate was
// the old image's.
func (s *CountingSink) Adopt(id string, c ContainerCounters) {
	n := &counters{}
	n.exits.Store(c.Exits)
	n.ooms.Store(c.OOMs)
	n.execs.Store(c.Execs)
	s.mu.Lock()
	s.byID[id] = n
	s.mu.Unlock()
}
