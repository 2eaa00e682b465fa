package stdio

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tether-shim/tether/internal/testutil"
)

// TestFile: file:// appends stdout and stderr to one file, creating it and
// its directory if needed and keeping what is already there.
func TestFile(t *testing.T) {
	tests := []struct {
		name     string
		existing string // content before Open; "" creates nothing
		sub      string // path of the file below the test directory
	}{
		{name: "creates the directory", sub: "logs/a/b/c.log"},
		{name: "appends", existing: "old line\n", sub: "c.log"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			log := filepath.Join(t.TempDir(), tt.sub)
			if tt.existing != "" {
				if err := os.WriteFile(log, []byte(tt.existing), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			p := openIO(t, Config{Stdout: "file://" + log, Stderr: "file://" + log}, Options{})
			c := startContainer(t, p, nil, sh("echo out1; echo err1 >&2; echo out2; echo err2 >&2"))
			if status := c.wait(t); status != 0 {
				t.Errorf("container exit status %d", status)
			}
			drainIO(t, p, drainAll)
			if err := closeIO(p); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := strings.CutPrefix(string(b), tt.existing)
			if !ok {
				t.Fatalf("file %q does not start with its previous content %q", b, tt.existing)
			}
			lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
			// The two streams are copied independently: only the order
			// within each stream is defined.
			var outs, errs []string
			for _, l := range lines {
				switch {
				case strings.HasPrefix(l, "out"):
					outs = append(outs, l)
				case strings.HasPrefix(l, "err"):
					errs = append(errs, l)
				default:
					t.Errorf("unexpected line %q", l)
				}
			}
			if !slices.Equal(outs, []string{"out1", "out2"}) || !slices.Equal(errs, []string{"err1", "err2"}) {
				t.Errorf("file got %q, want out1, out2 and err1, err2 in their order", got)
			}
		})
	}
}

// TestFileStdoutOnly: with only stdout in a file, stderr is not captured.
func TestFileStdoutOnly(t *testing.T) {
	testutil.CheckLeaks(t)
	log := filepath.Join(t.TempDir(), "c.log")
	p := openIO(t, Config{Stdout: "file://" + log}, Options{})
	if p.Stderr() != nil {
		t.Error("Stderr() != nil without stderr")
	}
	c := startContainer(t, p, nil, sh("echo out; echo err >&2"))
	if status := c.wait(t); status != 0 {
		t.Errorf("container exit status %d", status)
	}
	drainIO(t, p, drainAll)
	if err := closeIO(p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "out\n" {
		t.Errorf("file got %q, want %q", b, "out\n")
	}
}
