package bootstrap

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/testutil"
)

// countingTrimmer is a trimmer with short timings whose trim and retrim only
// count.
func countingTrimmer() (*trimmer, *atomic.Int32, *atomic.Int32) {
	var trims, retrims atomic.Int32
	t := newTrimmer()
	t.trim = func() { trims.Add(1) }
	t.retrim = func() { retrims.Add(1) }
	t.idle, t.delay, t.every = 100*time.Millisecond, 50*time.Millisecond, 0
	return t, &trims, &retrims
}

// waitCount waits (bounded) until c reaches want.
func waitCount(t *testing.T, what string, c *atomic.Int32, want int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for c.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d", what, c.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTrimmerRetrimsAfterCollectionsWhileIdle: the trimmer trims once idle;
// while still idle, a garbage collection (the runtime forces one every two
// minutes) is followed by a retrim; after a request, collections lead to no
// retrim until the next trim.
func TestTrimmerRetrimsAfterCollectionsWhileIdle(t *testing.T) {
	testutil.CheckLeaks(t)
	tr, trims, retrims := countingTrimmer()
	ctx, cancel := context.WithCancel(context.Background())
	go tr.run(ctx)
	defer func() {
		cancel()
		<-tr.done
	}()
	waitCount(t, "trims", trims, 1)
	runtime.GC()
	waitCount(t, "retrims after an idle collection", retrims, 1)
	runtime.GC()
	waitCount(t, "retrims after a second idle collection", retrims, 2)

	// Busy: pokes faster than the idle time; collections bring no retrim.
	before := retrims.Load()
	for range 10 {
		tr.Poke()
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	tr.Poke()
	if got := retrims.Load(); got != before {
		t.Fatalf("retrims while busy: %d, want %d", got, before)
	}
	waitCount(t, "trims after the burst", trims, 2)
}

// TestTrimmerStops: the trimmer's goroutine ends with ctx, and the
// collection notice stops re-arming.
func TestTrimmerStops(t *testing.T) {
	testutil.CheckLeaks(t)
	tr, _, _ := countingTrimmer()
	ctx, cancel := context.WithCancel(context.Background())
	go tr.run(ctx)
	cancel()
	select {
	case <-tr.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the trimmer did not stop")
	}
	if !tr.stopped.Load() {
		t.Fatal("stopped is not set after run returned")
	}
	runtime.GC()
	runtime.GC()
}

// TestFixedAddressExecutable: the read-only pages are dropped only from an
// ET_EXEC binary; a position-independent one (ET_DYN) has relocated
// private copies there, and dropping them crashed a -buildmode=pie build.
func TestFixedAddressExecutable(t *testing.T) {
	header := func(typ elf.Type) []byte {
		h := make([]byte, 64)
		copy(h, "\x7fELF")
		binary.LittleEndian.PutUint16(h[16:], uint16(typ))
		return h
	}
	dir := t.TempDir()
	tests := []struct {
		name    string
		content []byte // nil: no file
		want    bool
	}{
		{"ET_EXEC", header(elf.ET_EXEC), true},
		{"ET_DYN (pie)", header(elf.ET_DYN), false},
		{"not ELF", []byte("#!/bin/sh\necho hello world\n"), false},
		{"too short", []byte("\x7fELF"), false},
		{"missing", nil, false},
	}
	for _, tt := range tests {
		path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
		if tt.content != nil {
			if err := os.WriteFile(path, tt.content, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if got := fixedAddressExecutable(path); got != tt.want {
			t.Errorf("%s: fixedAddressExecutable = %v, want %v", tt.name, got, tt.want)
		}
	}
	// make build links a fixed-address binary.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, want := fixedAddressExecutable(exe), f.Type == elf.ET_EXEC; got != want {
		t.Errorf("the test binary (%v): fixedAddressExecutable = %v", f.Type, got)
	}
}
