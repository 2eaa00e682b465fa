// Command containerd-shim-tether-v2 is the Tether containerd shim, runtime
// io.containerd.tether.v2. It only parses flags and hands over to package
// bootstrap; see docs/design.md.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/tether-shim/tether/internal/bootstrap"
	"github.com/tether-shim/tether/internal/runtime"
	"github.com/tether-shim/tether/internal/upgrade"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	os.Exit(run())
}

func run() int {
	// The dry run of live upgrade: can this binary take over a running
	// shim's state? See docs/design.md, "Live upgrade".
	if len(os.Args) > 1 && os.Args[1] == upgrade.CheckFlag {
		return upgrade.RunCheck(os.Args[2:], version, os.Stdout)
	}
	if len(os.Args) > 1 && os.Args[1] == upgrade.CheckStateFlag {
		return upgrade.RunCheckState(os.Stdin, version, bootstrap.CheckShimState, os.Stdout)
	}
	f, err := bootstrap.ParseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		return 2
	}
	if f.Version {
		fmt.Printf("containerd-shim-tether-v2 %s\n", version)
		return 0
	}
	// Before any runtime command: a hung runtime's helpers die with it.
	runtime.UseGroupMonitor()
	ctx := context.Background()
	if f.Info {
		return report(bootstrap.Info(ctx, version, os.Stdin, os.Stdout, os.Stderr))
	}
	switch f.Action {
	case bootstrap.ActionStart:
		self, err := os.Executable()
		if err == nil {
			err = bootstrap.Start(ctx, f, self, os.Stdin, os.Stdout)
		}
		return report(err)
	case bootstrap.ActionDelete:
		return report(bootstrap.Delete(ctx, f, os.Stdout, os.Stderr))
	case bootstrap.ActionServe:
		return report(bootstrap.Serve(ctx, f, version))
	}
	fmt.Fprintf(os.Stderr, "containerd-shim-tether-v2: unknown action %q (want start, delete or serve)\n", f.Action)
	return 2
}

func report(err error) int {
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-shim-tether-v2: %v\n", err)
		return 1
	}
	return 0
}
