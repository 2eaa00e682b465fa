// Command tether is the operator's tool for the Tether shims of a node:
// `tether ps`, `inspect`, `stacks`, `pprof`, `metrics`, `doctor` and
// `upgrade` (see docs/operators.md, and docs/design.md "Live upgrade").
// It finds shims from /proc and their sockets, never from containerd, and
// asks each over its own socket
// (tether.introspect.v1, package introspect); it must run as the shims'
// uid, which is root on a node.
//
// Each subcommand is one entry of the table commands returns; adding one
// is adding a line there.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// command is one subcommand: a summary for the usage, and run, which gets
// the arguments after the subcommand's name.
type command struct {
	usage string
	run   func(ctx context.Context, e *env, args []string) error
}

// commands is the table of subcommands.
func commands() map[string]command {
	return map[string]command{
		"ps":      {"ps [-o json]: list the Tether shims of this node", runPs},
		"inspect": {"inspect [-o json] SHIM|CONTAINER: a shim's state", runInspect},
		"stacks":  {"stacks SHIM: the stacks of all of a shim's goroutines", runStacks},
		"pprof":   {"pprof SHIM heap|cpu [-seconds N] [-out FILE]: a profile of a shim", runPprof},
		"metrics": {"metrics [--listen ADDR]: every shim's figures in the Prometheus text format", runMetrics},
		"doctor":  {"doctor [--fix]: what this node leaks, and why; --fix removes what is provably dead", runDoctor},
		"upgrade": {"upgrade [--expect VERSION] (--all | PID...): re-execute shims into the binary now installed", runUpgrade},
	}
}

// env is what a subcommand writes to and where it looks.
type env struct {
	stdout, stderr io.Writer
	// paths are the node's directories (defaults, or the global flags).
	paths paths
}

// exitUsage is the exit status of a command line that cannot be run.
const exitUsage = 2

// errUsage marks an error of the command line: exit status 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, paths: defaultPaths()}
	fs := flag.NewFlagSet("tether", flag.ContinueOnError)
	fs.SetOutput(stderr)
	showVersion := fs.Bool("v", false, "print the version and exit")
	e.paths.register(fs)
	cmds := commands()
	fs.Usage = func() { usage(stderr, fs, cmds) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	if *showVersion {
		fmt.Fprintf(stdout, "tether %s\n", version)
		return 0
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	name := fs.Arg(0)
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(stderr, "tether: unknown command %q\n", name)
		fs.Usage()
		return exitUsage
	}
	if err := cmd.run(ctx, e, fs.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "tether %s: %v\n", name, err)
		if errors.Is(err, errUsage) {
			fmt.Fprintf(stderr, "usage: tether %s\n", cmd.usage)
			return exitUsage
		}
		return 1
	}
	return 0
}

// usage prints the global usage.
func usage(w io.Writer, fs *flag.FlagSet, cmds map[string]command) {
	fmt.Fprintln(w, "usage: tether [global flags] COMMAND [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %s\n", cmds[n].usage)
	}
	fmt.Fprintln(w, "\nglobal flags:")
	fs.PrintDefaults()
	fmt.Fprintln(w, "\nSHIM is a shim's pid or socket path; CONTAINER a container id, or NAMESPACE/ID. See docs/operators.md.")
}

// newFlagSet returns the flag set of a subcommand: errors return, usage
// goes to e.stderr.
func (e *env) newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("tether "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

// usageError returns an error of the command line.
func usageError(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), errUsage)
}

// outputFlag adds -o (text or json) to fs.
func outputFlag(fs *flag.FlagSet) *string {
	return fs.String("o", "text", "output format: text or json")
}

// checkOutput validates the value of -o.
func checkOutput(o string) error {
	switch o {
	case "text", "json":
		return nil
	}
	return usageError("-o %q: want text or json", o)
}

// parse parses a subcommand's flags, which may come before, between or
// after its arguments, and returns the arguments. "--" ends the flags.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// fs.Parse stopped at a non-flag, or after "--".
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
