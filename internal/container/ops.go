package container

import (
	"context"
	"encoding/json"
	"fmt"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/runtime"
)

// Pause freezes the container's processes and publishes TaskPaused.
func (c *Container) Pause(ctx context.Context) error {
	if err := c.init.check(OpPause); err != nil {
		return fmt.Errorf("pause %s: %w", c.id, err)
	}
	if err := c.rt.Pause(ctx, c.id); err != nil {
		return fmt.Errorf("pause %s: %w", c.id, err)
	}
	c.init.settle(OpPause)
	c.init.outbox.Send(events.TopicPaused, &eventsapi.TaskPaused{ContainerID: c.id})
	return nil
}

// Resume thaws the container's processes and publishes TaskResumed.
func (c *Container) Resume(ctx context.Context) error {
	if err := c.init.check(OpResume); err != nil {
		return fmt.Errorf("resume %s: %w", c.id, err)
	}
	if err := c.rt.Resume(ctx, c.id); err != nil {
		return fmt.Errorf("resume %s: %w", c.id, err)
	}
	c.init.settle(OpResume)
	c.init.outbox.Send(events.TopicResumed, &eventsapi.TaskResumed{ContainerID: c.id})
	return nil
}

// Update applies new resources, a JSON runtime-spec LinuxResources.
func (c *Container) Update(ctx context.Context, resourcesJSON []byte) error {
	if err := c.init.transition(OpUpdate); err != nil {
		return fmt.Errorf("update %s: %w", c.id, err)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(resourcesJSON, &res); err != nil {
		return fmt.Errorf("update %s: resources: %v: %w", c.id, err, errdefs.ErrInvalidArgument)
	}
	if err := c.rt.Update(ctx, c.id, &res); err != nil {
		return fmt.Errorf("update %s: %w", c.id, err)
	}
	return nil
}

// Checkpoint checkpoints the container with CRIU into opts.ImagePath and
// publishes TaskCheckpointed. With opts.Exit the container stops
// afterwards; its exit arrives as for any other exit.
func (c *Container) Checkpoint(ctx context.Context, opts runtime.CheckpointOpts) error {
	if err := c.init.transition(OpCheckpoint); err != nil {
		return fmt.Errorf("checkpoint %s: %w", c.id, err)
	}
	if opts.ImagePath == "" {
		return fmt.Errorf("checkpoint %s: no image path: %w", c.id, errdefs.ErrInvalidArgument)
	}
	if err := c.rt.Checkpoint(ctx, c.id, opts); err != nil {
		return fmt.Errorf("checkpoint %s: %w", c.id, err)
	}
	c.init.outbox.Send(events.TopicCheckpointed, &eventsapi.TaskCheckpointed{ContainerID: c.id, Checkpoint: opts.ImagePath})
	return nil
}
