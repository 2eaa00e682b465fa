package stdio

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tether-shim/tether/internal/testutil"
)

// TestStatsCountsOutput: the bytes a process wrote to a file:// log are
// counted, none dropped; a nil IO has no counts.
func TestStatsCountsOutput(t *testing.T) {
	testutil.CheckLeaks(t)
	if got := (*IO)(nil).Stats(); got != (Stats{}) {
		t.Errorf("nil IO: %+v", got)
	}
	log := filepath.Join(t.TempDir(), "c.log")
	p := openIO(t, Config{Stdout: "file://" + log, Stderr: "file://" + log}, Options{})
	c := startContainer(t, p, nil, sh("echo out1; echo err1 >&2"))
	if status := c.wait(t); status != 0 {
		t.Errorf("container exit status %d", status)
	}
	drainIO(t, p, drainAll)
	if err := closeIO(p); err != nil {
		t.Fatal(err)
	}
	if got := p.Stats(); got != (Stats{OutBytes: 10}) {
		t.Errorf("stats %+v, want 10 bytes out, none dropped", got)
	}
}

// shortWriter writes at most n bytes, then fails.
type shortWriter struct{ n int }

func (w *shortWriter) Write(b []byte) (int, error) {
	if len(b) <= w.n {
		w.n -= len(b)
		return len(b), nil
	}
	n := w.n
	w.n = 0
	return n, errors.New("client gone")
}

// TestStatsCountsDrops: what an output copy read and could not write is
// counted as dropped.
func TestStatsCountsDrops(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.WriteString("hello"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	rc, err := r.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var p IO
	p.pump(rc, &shortWriter{n: 2}, true, true)
	if got := p.Stats(); got != (Stats{OutBytes: 2, Drops: 3}) {
		t.Errorf("stats %+v, want 2 out and 3 dropped", got)
	}
}
