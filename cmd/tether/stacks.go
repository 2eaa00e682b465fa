package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/tether-shim/tether/internal/introspect"
)

func runStacks(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("stacks")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError("stacks takes one SHIM")
	}
	return withShim(ctx, rest[0], callTimeout, func(ctx context.Context, s shim, _ *introspect.Snapshot, c *introspect.Client) error {
		out, err := c.Stacks(ctx)
		if err != nil {
			return explain(s, err)
		}
		_, err = e.stdout.Write(out)
		return err
	})
}

// withShim resolves the SHIM argument arg, connects to it and calls f with
// its snapshot and a context bounded by timeout.
func withShim(ctx context.Context, arg string, timeout time.Duration, f func(context.Context, shim, *introspect.Snapshot, *introspect.Client) error) error {
	s, err := resolveShim(arg)
	if err != nil {
		return err
	}
	c, snap, err := dial(ctx, s)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return f(ctx, s, snap, c)
}

func runPprof(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("pprof")
	seconds := fs.Int("seconds", introspect.DefaultCPUSeconds, fmt.Sprintf("length of a cpu profile (1 to %d)", introspect.MaxCPUSeconds))
	outFile := fs.String("out", "", "write the profile to this file (default: standard output)")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) != 2 {
		return usageError("pprof takes a SHIM and heap or cpu")
	}
	req := introspect.ProfileRequest{Kind: rest[1]}
	switch req.Kind {
	case introspect.ProfileHeap:
	case introspect.ProfileCPU:
		if *seconds < 1 || *seconds > introspect.MaxCPUSeconds {
			return usageError("-seconds %d: want 1 to %d", *seconds, introspect.MaxCPUSeconds)
		}
		req.Seconds = *seconds
	default:
		return usageError("profile %q: want heap or cpu", rest[1])
	}
	return withShim(ctx, rest[0], callTimeout+time.Duration(req.Seconds)*time.Second, func(ctx context.Context, s shim, snap *introspect.Snapshot, c *introspect.Client) error {
		if req.Kind == introspect.ProfileHeap {
			if !snap.Shim.Debug {
				fmt.Fprintf(e.stderr, "tether pprof: shim %d was started without -debug and does not sample its heap (docs/design.md): the profile has no allocation sites\n", s.Pid)
			}
		}
		prof, err := c.Profile(ctx, req)
		if err != nil {
			return explain(s, err)
		}
		if *outFile == "" {
			_, err = e.stdout.Write(prof)
			return err
		}
		return os.WriteFile(*outFile, prof, 0o600)
	})
}
