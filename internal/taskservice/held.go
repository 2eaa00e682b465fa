package taskservice

import (
	"context"
	"errors"
	"fmt"

	"github.com/tether-shim/tether/internal/container"
	"github.com/tether-shim/tether/internal/handover"
	"github.com/tether-shim/tether/internal/upgrade"
)

// Held returns how many containers the service holds, those whose Create is
// in flight included.
func (s *Service) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.containers) + len(s.creating)
}

// Busy returns why the service cannot be handed over to a live upgrade
// now (a Create in flight), or nil.
func (s *Service) Busy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.creating); n > 0 {
		return fmt.Errorf("%d containers are being created: %w", n, upgrade.ErrNotHandedOver)
	}
	return nil
}

// list returns the containers, in no order.
func (s *Service) list() []*container.Container {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*container.Container, 0, len(s.containers))
	for _, c := range s.containers {
		out = append(out, c)
	}
	return out
}

// Quiesce parks every container's OOM watch and stdio copies (see
// container.Container.Quiesce), bounded by ctx. On error the containers
// already parked are resumed.
func (s *Service) Quiesce(ctx context.Context) error {
	var done []*container.Container
	for _, c := range s.list() {
		if err := c.Quiesce(ctx); err != nil {
			for _, d := range done {
				d.Unquiesce()
			}
			return err
		}
		done = append(done, c)
	}
	return nil
}

// Unquiesce resumes every container after a failed hand-over.
func (s *Service) Unquiesce() {
	for _, c := range s.list() {
		c.Unquiesce()
	}
}

// HandOver describes every container of a quiesced service, duplicating
// their descriptors into files.
func (s *Service) HandOver(files *handover.Files) ([]container.Handed, error) {
	if err := s.Busy(); err != nil {
		return nil, err
	}
	var out []container.Handed
	for _, c := range s.list() {
		h, err := c.HandOver(files)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, nil
}

// Adopt takes over, in the image a live upgrade started, the containers hs
// describe, before the service serves any request. Each is adopted on its
// own: one that cannot be is left out (its error joined to the result) and
// the others are kept, since the old image is gone and nothing can go back.
func (s *Service) Adopt(ctx context.Context, hs []container.Handed) error {
	var errs []error
	for _, h := range hs {
		s.mu.Lock()
		_, dup := s.containers[h.ID]
		s.mu.Unlock()
		if dup {
			errs = append(errs, fmt.Errorf("adopt: container %q handed over twice", h.ID))
			continue
		}
		c, err := container.AdoptContainer(ctx, h, s.cfg.BundleParent, s.cfg.Deps)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.mu.Lock()
		s.containers[h.ID] = c
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// WaitBlocks reports whether a Wait for process execID of container id
// would block now: the process exists and its exit is not yet handed on. A
// live upgrade leaves such a Wait, read and unanswered, to the new image,
// which replays it (docs/design.md, "Live upgrade").
func (s *Service) WaitBlocks(id, execID string) bool {
	_, p, err := s.process(id, execID)
	return err == nil && !p.Exited()
}
