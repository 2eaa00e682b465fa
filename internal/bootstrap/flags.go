// Package bootstrap is how the shim binary comes to life and goes away:
// `start` (answer containerd in its dialect, sharing one server per group),
// the server itself (`serve`), `delete` after a dead server, and -v.
//
// Invariants:
//   - During `start` nothing but the answer reaches stdout or stderr:
//     containerd reads their combined output.
//   - The server never inherits the start process's pipes, runs in its own
//     process group and is reparented away from containerd when `start`
//     exits.
//   - Sockets are filesystem sockets (never abstract) with mode 0600 in a
//     0700 directory, and only peers of the same uid are served.
//   - One server serves a group; `start` takes a lock on the socket
//     directory while it looks for a group's server and starts one.
package bootstrap

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tether-shim/tether/internal/paths"
)

// Actions of the shim binary.
const (
	ActionStart  = "start"
	ActionDelete = "delete"
	ActionServe  = "serve"
)

// Flags are the command line containerd (or `start`, for `serve`) gives the
// shim binary.
type Flags struct {
	Namespace     string
	ID            string
	Address       string
	PublishBinary string
	Bundle        string
	Debug         bool
	Version       bool
	Info          bool
	// Action is the first non-flag argument: start, delete or serve.
	Action string
}

// ParseFlags parses args (without the program name). Unknown flags are an
// error; usage goes to errOut.
func ParseFlags(args []string, errOut io.Writer) (Flags, error) {
	var f Flags
	fs := flag.NewFlagSet("containerd-shim-tether-v2", flag.ContinueOnError)
	fs.SetOutput(errOut)
	fs.StringVar(&f.Namespace, "namespace", "", "containerd namespace")
	fs.StringVar(&f.ID, "id", "", "id of the task")
	fs.StringVar(&f.Address, "address", "", "containerd's grpc address")
	fs.StringVar(&f.PublishBinary, "publish-binary", "", "containerd binary (used to tell its version)")
	fs.StringVar(&f.Bundle, "bundle", "", "bundle path (default: the working directory)")
	fs.BoolVar(&f.Debug, "debug", false, "log at debug level")
	fs.BoolVar(&f.Version, "v", false, "print the version and exit")
	fs.BoolVar(&f.Info, "info", false, "print runtime info as protobuf and exit")
	if err := fs.Parse(args); err != nil {
		return Flags{}, err
	}
	f.Action = fs.Arg(0)
	return f, nil
}

// bundleDir returns the bundle: the -bundle flag, else the working directory
// (containerd runs the shim in the bundle).
func (f Flags) bundleDir() (string, error) {
	if f.Bundle != "" {
		if err := paths.Check("-bundle", f.Bundle); err != nil {
			return "", err
		}
		return f.Bundle, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("bundle: %w", err)
	}
	return wd, nil
}

// validate checks what every action needs.
func (f Flags) validate() error {
	if f.Namespace == "" {
		return fmt.Errorf("-namespace is required")
	}
	if f.ID == "" {
		return fmt.Errorf("-id is required")
	}
	return nil
}
