package exits

import (
	"context"
	"errors"

	"github.com/tether-shim/tether/internal/handover"
)

// Handed describes the Reaper across a live upgrade: the watched pids and
// the numbers of their pidfds in the hand-over's handover.Files. JSON.
type Handed struct{}

// Pause stops collecting exits: no watcher reaps and the sweep is held, so
// a child that exits from now on stays a zombie for the new image. It waits,
// bounded by ctx, for every onExit under way to return. Unpause undoes it.
func (r *Reaper) Pause(ctx context.Context) error { return errors.New("exits: hand-over not built") }

// Unpause resumes collecting exits after a failed hand-over.
func (r *Reaper) Unpause() {}

// HandOver, on a paused Reaper, duplicates the pidfds of the watched pids
// into files and returns the description.
func (r *Reaper) HandOver(files *handover.Files) (Handed, error) {
	return Handed{}, errors.New("exits: hand-over not built")
}

// Adopt, in the image a live upgrade started and before any Watch, takes
// the handed-over pidfds: a later Watch of one of those pids uses it.
func (r *Reaper) Adopt(h Handed) error { return errors.New("exits: hand-over not built") }

// ForgetAdopted closes the adopted pidfds no Watch claimed.
func (r *Reaper) ForgetAdopted() {}
