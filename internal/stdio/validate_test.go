package stdio

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidate(t *testing.T) {
	const (
		stdin  = "/run/containerd/fifo/1/c-stdin"
		stdout = "/run/containerd/fifo/1/c-stdout"
		stderr = "/run/containerd/fifo/1/c-stderr"
		file   = "file:///x/y.log"
		bin    = "binary:///bin/logger?a=b"
	)
	tests := []struct {
		name    string
		c       Config
		invalid bool
	}{
		// Valid. Validate does not touch the filesystem: none of these exist.
		{"empty", Config{}, false},
		{"fifo paths", Config{Stdin: stdin, Stdout: stdout, Stderr: stderr}, false},
		{"stdin only", Config{Stdin: stdin}, false},
		{"stderr only", Config{Stderr: stderr}, false},
		{"fifo scheme", Config{Stdout: "fifo://" + stdout, Stderr: "fifo://" + stderr}, false},
		{"bare and fifo scheme", Config{Stdout: stdout, Stderr: "fifo://" + stderr}, false},
		{"terminal with fifos", Config{Stdin: stdin, Stdout: stdout, Terminal: true}, false},
		{"terminal without stdio", Config{Terminal: true}, false},
		{"file", Config{Stdin: stdin, Stdout: file, Stderr: file}, false},
		{"file stdout only", Config{Stdout: file}, false},
		{"file stderr only", Config{Stderr: file}, false},
		{"binary", Config{Stdout: bin, Stderr: bin}, false},
		{"binary without query", Config{Stdout: "binary:///bin/logger"}, false},
		{"binary stderr only", Config{Stderr: bin}, false},

		// Paths must be absolute and clean.
		{"relative stdin", Config{Stdin: "run/c-stdin"}, true},
		{"relative stdout", Config{Stdout: "c-stdout"}, true},
		{"dot-relative stderr", Config{Stderr: "./c-stderr"}, true},
		{"unclean stdin", Config{Stdin: "/run/x/../c-stdin"}, true},
		{"unclean stdout", Config{Stdout: "/run//c-stdout"}, true},
		{"trailing slash stderr", Config{Stderr: "/run/c-stderr/"}, true},
		{"unclean fifo scheme", Config{Stdout: "fifo:///run/./c-stdout"}, true},
		{"relative fifo scheme", Config{Stdout: "fifo://c-stdout"}, true},
		{"unclean file", Config{Stdout: "file:///x/../y.log"}, true},
		{"file without path", Config{Stdout: "file://"}, true},
		{"unclean binary", Config{Stdout: "binary:///bin/./logger"}, true},
		{"binary without path", Config{Stdout: "binary://"}, true},
		// A URI names a path on this host, never a host.
		{"file with a host", Config{Stdout: "file://var/log/x.log"}, true},
		{"binary with a host", Config{Stdout: "binary://host/bin/logger"}, true},
		{"fifo with a user", Config{Stdout: "fifo://u@/run/c-stdout"}, true},
		// Stdin is a path, not a URI.
		{"stdin URI", Config{Stdin: "fifo://" + stdin}, true},

		// Schemes.
		{"tcp stdout", Config{Stdout: "tcp://127.0.0.1:9000"}, true},
		{"http stderr", Config{Stderr: "http://example.com/log"}, true},
		{"unparsable", Config{Stdout: "://x"}, true},

		// Mixed kinds.
		{"binary stdout file stderr", Config{Stdout: bin, Stderr: file}, true},
		{"file stdout binary stderr", Config{Stdout: file, Stderr: bin}, true},
		{"fifo stdout file stderr", Config{Stdout: stdout, Stderr: file}, true},
		{"binary stdout fifo stderr", Config{Stdout: bin, Stderr: stderr}, true},

		// A terminal needs fifos.
		{"terminal with file", Config{Stdin: stdin, Stdout: file, Terminal: true}, true},
		{"terminal with binary", Config{Stdout: bin, Terminal: true}, true},
		{"terminal with file on both", Config{Stdout: file, Stderr: file, Terminal: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if !tt.invalid {
				if err != nil {
					t.Fatalf("Validate(%+v) = %v, want nil", tt.c, err)
				}
				return
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Validate(%+v) = %v, want InvalidArgument", tt.c, err)
			}
		})
	}
}

// TestParseOutputBinaryQuery checks that a binary:// query becomes the
// logging binary's arguments, key then value.
func TestParseOutputBinaryQuery(t *testing.T) {
	tests := []struct {
		uri  string
		path string
		args []string
	}{
		{"binary:///bin/logger", "/bin/logger", nil},
		{"binary:///bin/logger?a=b", "/bin/logger", []string{"a", "b"}},
		{"binary:///bin/logger?level=debug", "/bin/logger", []string{"level", "debug"}},
		{"binary:///bin/logger?flag", "/bin/logger", []string{"flag"}},
		{"binary:///bin/logger?k=v%20w", "/bin/logger", []string{"k", "v w"}},
	}
	for _, tt := range tests {
		o, err := parseOutput(tt.uri)
		if err != nil {
			t.Errorf("parseOutput(%q): %v", tt.uri, err)
			continue
		}
		if o.kind != kindBinary || o.path != tt.path || !equalStrings(o.args, tt.args) {
			t.Errorf("parseOutput(%q) = kind %d path %q args %q, want binary %q %q", tt.uri, o.kind, o.path, o.args, tt.path, tt.args)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestIsNull(t *testing.T) {
	tests := []struct {
		c    Config
		null bool
	}{
		{Config{}, true},
		{Config{Terminal: true}, false},
		{Config{Stdin: "/in"}, false},
		{Config{Stdout: "/out"}, false},
		{Config{Stderr: "/err"}, false},
		{Config{Stdout: "file:///x.log", Stderr: "file:///x.log"}, false},
	}
	for _, tt := range tests {
		if got := tt.c.IsNull(); got != tt.null {
			t.Errorf("%+v.IsNull() = %v, want %v", tt.c, got, tt.null)
		}
	}
}

// TestRegressionValidateTerminalWithNonFifoStderr: Validate documents "no
// file:// or binary:// with a terminal". It used to look at stdout only: with
// stdout empty, a file:// or binary:// stderr passed, and Open then ignored
// it silently (a terminal copies only the pty to stdout).
func TestRegressionValidateTerminalWithNonFifoStderr(t *testing.T) {
	for _, stderr := range []string{"file:///x/y.log", "binary:///bin/logger?a=b"} {
		c := Config{Stdin: "/run/c-stdin", Stderr: stderr, Terminal: true}
		if err := c.Validate(); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Validate(%+v) = %v, want InvalidArgument", c, err)
		}
	}
}

// TestBinaryArgsInKeyOrder: the logging binary gets its URI's query as
// arguments in key order, whatever order the map gives.
func TestBinaryArgsInKeyOrder(t *testing.T) {
	for range 20 {
		o, err := parseOutput("binary:///bin/logger?zeta=1&alpha=2&mid=&beta=3")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := strings.Join(o.args, " "), "alpha 2 beta 3 mid zeta 1"; got != want {
			t.Fatalf("args = %q, want %q", got, want)
		}
	}
}
