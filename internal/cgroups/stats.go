package cgroups

import (
	"context"
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the metrics Stats returns. containerd's typeurl names a
// protobuf message by its full name, without the type.googleapis.com/ prefix
// that anypb.New would add.
const (
	MetricsV1TypeURL = "io.containerd.cgroups.v1.Metrics"
	MetricsV2TypeURL = "io.containerd.cgroups.v2.Metrics"
)

// hugePagesDir lists the host's huge page sizes.
const hugePagesDir = "/sys/kernel/mm/hugepages"

// Stats returns the metrics as a protobuf Any: io.containerd.cgroups.v1.Metrics
// or v2.Metrics. Must be fast (no exec).
//
// The Any's TypeUrl is exactly MetricsV1TypeURL (Legacy and Hybrid hosts) or
// MetricsV2TypeURL (Unified), its value a
// github.com/containerd/cgroups/v3/cgroup1/stats.Metrics or
// .../cgroup2/stats.Metrics, filled as containerd's cgroup1 and cgroup2
// packages fill them. Stats only reads cgroup files. ctx is checked between
// controllers. Errors: errdefs.ErrNotFound if the cgroup was removed;
// errdefs.ErrInternal if a kernel file does not parse.
func (c *Cgroup) Stats(ctx context.Context) (*anypb.Any, error) {
	var m proto.Message
	var err error
	if c.mode == Unified {
		m, err = c.statsV2(ctx, c.v2)
	} else {
		m, err = c.statsV1(ctx)
	}
	if err != nil {
		return nil, err
	}
	// The cgroup may have gone while it was read: every file then read as
	// absent, which is not "all zero".
	if _, err := os.Stat(c.primary()); err != nil {
		return nil, wrap(err, "cgroups: stats of %s", c.path)
	}
	return marshalAny(m)
}

// marshalAny packs m under its full name, as containerd's typeurl does.
func marshalAny(m proto.Message) (*anypb.Any, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("cgroups: marshal %s: %w", proto.MessageName(m), err)
	}
	return &anypb.Any{TypeUrl: string(proto.MessageName(m)), Value: b}, nil
}

// ctxErr returns ctx's error, wrapped, if ctx is done.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("cgroups: stats: %w", err)
	}
	return nil
}
