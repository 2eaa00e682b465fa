package events

// Stats are a Publisher's queue and counters, for `tether inspect` and
// `tether metrics`.
type Stats struct {
	// Queued is the number of events not yet delivered; Pending the
	// topics of the oldest of them, in queue order.
	Queued  int
	Pending []string
	// Published counts the events queued, Delivered those containerd
	// acknowledged, Retried the failed attempts that were retried and
	// Dropped the events given up on (rejected too often, or published
	// after Close). All count from the Publisher's creation.
	Published, Delivered, Retried, Dropped uint64
}

// Stats returns the queue's length, the topics of its first maxPending
// events and the counters. It takes the Publisher's lock only to read the
// queue.
func (p *Publisher) Stats(maxPending int) Stats {
	p.mu.Lock()
	st := Stats{Queued: len(p.queue)}
	for i := 0; i < len(p.queue) && i < maxPending; i++ {
		st.Pending = append(st.Pending, p.queue[i].topic)
	}
	p.mu.Unlock()
	// Delivered and dropped before published: never more delivered than
	// published, even while events flow.
	st.Delivered = p.delivered.Load()
	st.Dropped = p.dropped.Load()
	st.Retried = p.retried.Load()
	st.Published = p.published.Load()
	return st
}
