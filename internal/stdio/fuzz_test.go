package stdio

import (
	"slices"
	"strings"
	"testing"

	"github.com/tether-shim/tether/internal/paths"
)

// FuzzValidate: stdio endpoints that pass Validate name clean absolute
// paths, with no ".." and no host, in one of the supported kinds.
func FuzzValidate(f *testing.F) {
	f.Add("/run/c/stdin", "/run/c/stdout", "/run/c/stderr", false)
	f.Add("", "binary:///usr/bin/log?a=b&c", "binary:///usr/bin/log", false)
	f.Add("", "file:///var/log/c.log", "", false)
	f.Add("", "fifo:///run/c/out", "", true)
	f.Add("../x", "file://host/x", "binary:///../x", false)
	f.Fuzz(func(t *testing.T, stdin, stdout, stderr string, terminal bool) {
		c := Config{Stdin: stdin, Stdout: stdout, Stderr: stderr, Terminal: terminal}
		if c.Validate() != nil {
			return
		}
		for _, s := range []string{stdout, stderr} {
			o, err := parseOutput(s)
			if err != nil {
				t.Fatalf("Validate accepted %q, which parseOutput refuses: %v", s, err)
			}
			if s == "" {
				continue
			}
			if !paths.CleanAbs(o.path) || slices.Contains(strings.Split(o.path, "/"), "..") {
				t.Fatalf("%q accepted with path %q", s, o.path)
			}
			if terminal && o.kind != kindFifo {
				t.Fatalf("%q accepted with a terminal", s)
			}
		}
		if stdin != "" && !paths.CleanAbs(stdin) {
			t.Fatalf("stdin %q accepted", stdin)
		}
	})
}
