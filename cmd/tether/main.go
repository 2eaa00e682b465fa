// Command tether is the operator's tool for Tether shims. Its subcommand
// upgrade re-executes running shim servers into the binary now installed
// (docs/design.md, "Live upgrade").
package main

import (
	"context"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tether upgrade [--expect VERSION] (--all | PID...)")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "upgrade":
		err = runUpgrade(context.Background(), os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "tether: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "tether: %v\n", err)
		os.Exit(1)
	}
}
