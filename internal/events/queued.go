package events

// Queued returns the number of events not yet delivered. Live upgrade's
// state version 1 refused while it was not zero, as it carried no events;
// version 2 hands them over (Pause, HandOver, Adopt; docs/design.md, "Live
// upgrade").
func (p *Publisher) Queued() int { return p.queued() }
