package stdio

// Stats are what an IO's output copies moved, for `tether inspect` and
// `tether metrics`.
type Stats struct {
	// OutBytes counts the bytes of stdout and stderr (or the terminal)
	// written to the client, the file or the logging binary; Drops the
	// bytes read from the process that could not be written there.
	OutBytes, Drops uint64
}

// Stats returns the IO's counters; nil has none.
func (p *IO) Stats() Stats {
	if p == nil {
		return Stats{}
	}
	return Stats{OutBytes: uint64(max(p.progress.Load(), 0)), Drops: uint64(max(p.dropped.Load(), 0))}
}
