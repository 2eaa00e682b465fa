package stdio

import (
	"context"
	"errors"

	"github.com/tether-shim/tether/internal/handover"
)

// Handed describes one IO across a live upgrade (docs/design.md, "Live
// upgrade"): its configuration, the numbers of its descriptors in the
// hand-over's handover.Files, its counters, and where its copies stood.
// It is JSON.
type Handed struct {
	Config Config `json:"config"`
}

// Pause parks every copy of the IO at a buffer boundary: whatever a copy
// read it has written, and nothing more is read; bytes not yet read stay in
// the kernel's pipe and fifo buffers. It waits for that, bounded by ctx; a
// copy stuck writing to a client that does not read makes it fail, and the
// copies resume. Unpause undoes it.
func (p *IO) Pause(ctx context.Context) error { return errors.New("stdio: hand-over not built") }

// Unpause resumes the copies after a failed hand-over.
func (p *IO) Unpause() {}

// HandOver, on a paused IO, duplicates every descriptor of the IO into files
// and returns its description.
func (p *IO) HandOver(files *handover.Files) (Handed, error) {
	return Handed{}, errors.New("stdio: hand-over not built")
}

// Adopt rebuilds, in the image a live upgrade started, the IO that h
// describes, and resumes its copies.
func Adopt(ctx context.Context, h Handed, opts Options) (*IO, error) {
	return nil, errors.New("stdio: hand-over not built")
}
