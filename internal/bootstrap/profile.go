package bootstrap

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/trim"
)

// profiler serves profiles of a shim started with -debug, without a
// listening port: SIGUSR1 writes <bundle>/tether-heap.pprof (after a GC) and
// <bundle>/tether-goroutines.txt and <bundle>/tether-metrics.txt (MemStats and
// the trimmer's state); SIGUSR2 starts a CPU profile into
// <bundle>/tether-cpu.pprof, and the next SIGUSR2 stops it. Its goroutine is
// owned by Serve, which cancels ctx and waits for done.
type profiler struct {
	bundle bundle.Bundle
	logger *slog.Logger
	trim   func() trim.Stats // the trimmer's state, for the metrics
	done   chan struct{}
}

func startProfiler(ctx context.Context, b bundle.Bundle, logger *slog.Logger, stats func() trim.Stats) *profiler {
	p := &profiler{bundle: b, logger: logger, trim: stats, done: make(chan struct{})}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		defer close(p.done)
		defer signal.Stop(sigs)
		var cpu *os.File
		defer func() {
			if cpu != nil {
				pprof.StopCPUProfile()
				cpu.Close()
			}
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case sig := <-sigs:
				if sig == syscall.SIGUSR1 {
					p.writeHeap()
					continue
				}
				if cpu != nil {
					pprof.StopCPUProfile()
					cpu.Close()
					cpu = nil
					p.logger.Debug("cpu profile written", "file", p.bundle.CPUProfile())
					continue
				}
				f, err := os.Create(p.bundle.CPUProfile())
				if err != nil {
					p.logger.Warn("cpu profile", "error", err)
					continue
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					p.logger.Warn("cpu profile", "error", err)
					f.Close()
					continue
				}
				cpu = f
			}
		}
	}()
	return p
}

func (p *profiler) writeHeap() {
	// The metrics first, so that they show the shim as it was, not the
	// memory that writing the profiles takes.
	p.writeMetrics()
	runtime.GC()
	for name, file := range map[string]string{"heap": p.bundle.HeapProfile(), "goroutine": p.bundle.Goroutines()} {
		f, err := os.Create(file)
		if err != nil {
			p.logger.Warn("profile", "profile", name, "error", err)
			continue
		}
		debug := 0
		if name == "goroutine" {
			debug = 2
		}
		if err := pprof.Lookup(name).WriteTo(f, debug); err != nil {
			p.logger.Warn("profile", "profile", name, "error", err)
		}
		f.Close()
	}
	p.logger.Debug("heap profile written", "dir", p.bundle.Dir(), "goroutines", runtime.NumGoroutine())
}

// writeMetrics writes where the runtime's memory goes (runtime.MemStats:
// heap, stacks, spans, GC metadata, other) into <bundle>/tether-metrics.txt,
// one "name value" per line. MemStats rather than runtime/metrics, whose
// package init would cost every shim process.
func (p *profiler) writeMetrics() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	ts := p.trim()
	paused := uint64(0)
	if ts.Paused {
		paused = 1
	}
	var b strings.Builder
	for _, kv := range []struct {
		name  string
		value uint64
	}{
		{"sys", ms.Sys},
		{"heap_sys", ms.HeapSys},
		{"heap_inuse", ms.HeapInuse},
		{"heap_alloc", ms.HeapAlloc},
		{"heap_released", ms.HeapReleased},
		{"heap_objects", ms.HeapObjects},
		{"total_alloc", ms.TotalAlloc},
		{"stack_inuse", ms.StackInuse},
		{"mspan_inuse", ms.MSpanInuse},
		{"mcache_inuse", ms.MCacheInuse},
		{"buckhash_sys", ms.BuckHashSys},
		{"gc_sys", ms.GCSys},
		{"other_sys", ms.OtherSys},
		{"num_gc", uint64(ms.NumGC)},
		{"goroutines", uint64(runtime.NumGoroutine())},
		{"trims", ts.Trims},
		{"requests_inflight", uint64(max(ts.Inflight, 0))},
		{"gc_paused", paused},
	} {
		fmt.Fprintf(&b, "%s %d\n", kv.name, kv.value)
	}
	if err := os.WriteFile(p.bundle.Metrics(), []byte(b.String()), 0o600); err != nil {
		p.logger.Warn("profile", "profile", "metrics", "error", err)
	}
}
