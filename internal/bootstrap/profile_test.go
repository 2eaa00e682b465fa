package bootstrap

import (
	"os"
	"strings"
	"testing"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/testutil"
	"github.com/tether-shim/tether/internal/trim"
)

// TestMetricsShowTrimmerState: tether-metrics.txt (SIGUSR1) carries the
// trimmer's state as the operator reads it: trims, requests_inflight (all
// work under way, not only requests) and gc_paused.
func TestMetricsShowTrimmerState(t *testing.T) {
	_, logger := testutil.NewLog(t)
	dir := t.TempDir()
	tr := trim.New()
	end := tr.Begin()
	end2 := tr.Begin()
	p := &profiler{bundle: bundle.New(dir), logger: logger, trim: tr.Stats}
	p.writeMetrics()
	end()
	end2()
	data, err := os.ReadFile(bundle.New(dir).Metrics())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for line := range strings.Lines(string(data)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			got[k] = v
		}
	}
	for k, want := range map[string]string{"trims": "0", "requests_inflight": "2", "gc_paused": "0"} {
		if got[k] != want {
			t.Errorf("metrics %s = %q, want %q\n%s", k, got[k], want, data)
		}
	}
	if got["goroutines"] == "" || got["heap_alloc"] == "" {
		t.Errorf("metrics lack the runtime's figures:\n%s", data)
	}
}
