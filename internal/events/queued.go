package events

// Queued returns the number of events not yet delivered. Live upgrade
// refuses while it is not zero: its state version 1 does not carry events
// (docs/design.md, "Live upgrade").
func (p *Publisher) Queued() int { return p.queued() }
