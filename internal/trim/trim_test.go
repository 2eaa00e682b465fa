package trim

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/testutil"
)

// countingTrimmer is a trimmer with short timings whose trim and retrim only
// count.
func countingTrimmer() (*Trimmer, *atomic.Int32, *atomic.Int32) {
	var trims, retrims atomic.Int32
	t := New()
	t.trim = func() { trims.Add(1) }
	t.retrim = func() { retrims.Add(1) }
	t.drop = func() {}
	t.pauseGC = func() func() { return func() {} }
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
	go tr.Run(ctx)
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

// TestTrimmerWaitsForRequestsInFlight: no trim while a request runs, however
// long; the idle time counts from its end.
func TestTrimmerWaitsForRequestsInFlight(t *testing.T) {
	testutil.CheckLeaks(t)
	tr, trims, _ := countingTrimmer()
	ctx, cancel := context.WithCancel(context.Background())
	go tr.Run(ctx)
	defer func() {
		cancel()
		<-tr.done
	}()
	waitCount(t, "trims", trims, 1)
	end := tr.Begin()
	time.Sleep(5 * tr.idle)
	if got := trims.Load(); got != 1 {
		end()
		t.Fatalf("trims while a request was in flight for 5 idle periods: %d, want still 1", got)
	}
	end()
	waitCount(t, "trims after the request ended", trims, 2)
}

// TestTrimmerPausesCollectorWhileIdle: every trim pauses the collector,
// the next request resumes it before it is handled, and a trimmer that
// stops while paused resumes it too.
func TestTrimmerPausesCollectorWhileIdle(t *testing.T) {
	testutil.CheckLeaks(t)
	tr, trims, _ := countingTrimmer()
	var pauses, resumes atomic.Int32
	tr.pauseGC = func() func() {
		pauses.Add(1)
		return func() { resumes.Add(1) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	go tr.Run(ctx)
	waitCount(t, "trims", trims, 1)
	waitCount(t, "pauses", &pauses, 1)
	// Paused once the resume is stored, right after pauseGC returned.
	for deadline := time.Now().Add(5 * time.Second); tr.resumeGC.Load() == nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the trimmer never stored its resume")
		}
	}
	tr.Poke()
	if got := resumes.Load(); got != 1 {
		t.Fatalf("resumes after the first request = %d, want 1 (before the request is handled)", got)
	}
	tr.Poke()
	if got := resumes.Load(); got != 1 {
		t.Fatalf("resumes after a second request = %d, want still 1", got)
	}
	waitCount(t, "pauses after the next idle period", &pauses, 2)
	cancel()
	<-tr.done
	if got := resumes.Load(); got != 2 {
		t.Fatalf("resumes after the trimmer stopped while paused = %d, want 2", got)
	}
}

// TestPauseCollectorRestoresSettings: pausing turns the collector off under
// a memory limit no higher than the operator's, and resuming gives back
// GOGC and GOMEMLIMIT as they were.
func TestPauseCollectorRestoresSettings(t *testing.T) {
	oldGC := debug.SetGCPercent(50)
	oldLimit := debug.SetMemoryLimit(1 << 40)
	defer func() {
		debug.SetGCPercent(oldGC)
		debug.SetMemoryLimit(oldLimit)
	}()
	resume := pauseCollector()
	if gc := debug.SetGCPercent(-1); gc != -1 {
		t.Errorf("GOGC while paused = %d, want -1 (off)", gc)
	}
	if limit := debug.SetMemoryLimit(-1); limit <= 0 || limit > 1<<40 {
		t.Errorf("memory limit while paused = %d, want positive and at most the operator's %d", limit, int64(1<<40))
	}
	resume()
	if gc := debug.SetGCPercent(-1); gc != 50 {
		t.Errorf("GOGC after resume = %d, want 50", gc)
	}
	debug.SetGCPercent(50)
	if limit := debug.SetMemoryLimit(-1); limit != 1<<40 {
		t.Errorf("memory limit after resume = %d, want %d", limit, int64(1<<40))
	}

	// An operator's limit below what the pause would set stays.
	debug.SetMemoryLimit(1 << 20)
	resume = pauseCollector()
	if limit := debug.SetMemoryLimit(-1); limit != 1<<20 {
		t.Errorf("memory limit while paused under a 1 MiB GOMEMLIMIT = %d, want %d", limit, 1<<20)
	}
	resume()
}

// TestNewIsComplete: every hook of a server's trimmer is set (a nil
// one crashed the server at its first trim, which the counting trimmers of
// the other tests cannot show).
func TestNewIsComplete(t *testing.T) {
	tr := New()
	for name, f := range map[string]bool{
		"trim": tr.trim != nil, "drop": tr.drop != nil, "retrim": tr.retrim != nil, "pauseGC": tr.pauseGC != nil,
	} {
		if !f {
			t.Errorf("New().%s is nil", name)
		}
	}
	if tr.idle <= 0 || tr.delay <= 0 || tr.every <= 0 {
		t.Errorf("New() timings %v, %v, %v: want all positive", tr.idle, tr.delay, tr.every)
	}
}

func TestParseThreadCount(t *testing.T) {
	tests := []struct {
		stat string
		want int
	}{
		{"4242 (containerd-shim) S 1 4242 4242 0 -1 4194560 960 0 0 0 2 1 0 0 20 0 7 0 123 1234 56 18446744073709551615", 7},
		{"4242 (a (b) c) S 1 4242 4242 0 -1 4194560 960 0 0 0 2 1 0 0 20 0 12 0 123", 12},
		{"4242 (x) S 1 2", 0},
		{"garbage", 0},
		{"4242 (x) S 1 4242 4242 0 -1 4194560 960 0 0 0 2 1 0 0 20 0 -3 0", 0},
	}
	for _, tt := range tests {
		if got := parseThreadCount(tt.stat); got != tt.want {
			t.Errorf("parseThreadCount(%q) = %d, want %d", tt.stat, got, tt.want)
		}
	}
}

// TestShedThreads: after a burst of blocking system calls has made the
// runtime start threads, shedThreads ends some of them.
func TestShedThreads(t *testing.T) {
	before := threadCount()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A blocking call: the scheduler hands the P to another thread.
			ts := syscall.Timespec{Nsec: int64(50 * time.Millisecond)}
			_ = syscall.Nanosleep(&ts, nil)
		}()
	}
	wg.Wait()
	burst := threadCount()
	if burst <= before {
		t.Fatalf("the burst started no thread (%d before, %d after): the test shows nothing", before, burst)
	}
	shedThreads(maxShed)
	if after := threadCount(); after >= burst {
		t.Fatalf("threads: %d before the burst, %d after it, %d after shedThreads; want fewer than %d", before, burst, after, burst)
	}
}

// TestTrimmerStops: the trimmer's goroutine ends with ctx, and the
// collection notice stops re-arming.
func TestTrimmerStops(t *testing.T) {
	testutil.CheckLeaks(t)
	tr, _, _ := countingTrimmer()
	ctx, cancel := context.WithCancel(context.Background())
	go tr.Run(ctx)
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
	// header builds a minimal 64-bit ELF file of type typ with one program
	// header of type prog (none if 0).
	header := func(typ elf.Type, prog elf.ProgType) []byte {
		h := make([]byte, 64, 64+56)
		copy(h, "\x7fELF")
		h[elf.EI_CLASS], h[elf.EI_DATA], h[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
		le := binary.LittleEndian
		le.PutUint16(h[16:], uint16(typ))
		le.PutUint16(h[18:], uint16(elf.EM_X86_64))
		le.PutUint32(h[20:], uint32(elf.EV_CURRENT))
		le.PutUint16(h[52:], 64) // e_ehsize
		if prog != 0 {
			le.PutUint64(h[32:], 64) // e_phoff
			le.PutUint16(h[54:], 56) // e_phentsize
			le.PutUint16(h[56:], 1)  // e_phnum
			ph := make([]byte, 56)
			le.PutUint32(ph, uint32(prog))
			h = append(h, ph...)
		}
		return h
	}
	dir := t.TempDir()
	tests := []struct {
		name    string
		content []byte // nil: no file
		want    bool
	}{
		{"ET_EXEC", header(elf.ET_EXEC, elf.PT_LOAD), true},
		{"ET_EXEC without program headers", header(elf.ET_EXEC, 0), true},
		{"ET_EXEC with RELRO (external linking)", header(elf.ET_EXEC, elf.PT_GNU_RELRO), false},
		{"ET_DYN (pie)", header(elf.ET_DYN, elf.PT_LOAD), false},
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

func TestReadOnlyMapping(t *testing.T) {
	const exe = "/usr/bin/containerd-shim-tether-v2"
	tests := []struct {
		line     string
		want     mapRange
		exec, ok bool
	}{
		{"00400000-0070e000 r-xp 00000000 fe:00 9978210                            " + exe + "\n", mapRange{0x400000, 0x70e000}, true, true},
		{"0070e000-00aa9000 r--p 0030e000 fe:00 9978210                            " + exe, mapRange{0x70e000, 0xaa9000}, false, true},
		{"00aa9000-00ade000 rw-p 006a9000 fe:00 9978210                            " + exe, mapRange{}, false, false},
		{"7f00-8f00 r--p 00000000 fe:00 1 /usr/lib/other.so", mapRange{}, false, false},
		{"7f00-8f00 ---p 00000000 fe:00 1 " + exe, mapRange{}, false, false},
		{"8f00-7f00 r--p 00000000 fe:00 1 " + exe, mapRange{}, false, false},
		{"zz-8f00 r--p 00000000 fe:00 1 " + exe, mapRange{}, false, false},
		{"7ffd1703c000-7ffd1705d000 rw-p 00000000 00:00 0                          [stack]", mapRange{}, false, false},
		{"", mapRange{}, false, false},
	}
	for _, tt := range tests {
		r, exec, ok := readOnlyMapping(tt.line, exe)
		if r != tt.want || exec != tt.exec || ok != tt.ok {
			t.Errorf("readOnlyMapping(%q) = %v, %v, %v; want %v, %v, %v", tt.line, r, exec, ok, tt.want, tt.exec, tt.ok)
		}
	}
}

// TestDropExecutablePages: the test binary's resident code shrinks (it is
// linked at a fixed address, as the shim is).
func TestDropExecutablePages(t *testing.T) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if !fixedAddressExecutable(exe) {
		t.Fatalf("%s is not a fixed-address executable: the test shows nothing", exe)
	}
	textRSS := func() int {
		data, err := os.ReadFile("/proc/self/smaps")
		if err != nil {
			t.Fatal(err)
		}
		total, in := 0, false
		for line := range strings.Lines(string(data)) {
			f := strings.Fields(line)
			if len(f) >= 6 && strings.Contains(f[0], "-") {
				in = f[5] == exe && strings.HasPrefix(f[1], "r-x")
			} else if in && len(f) >= 2 && f[0] == "Rss:" {
				n, _ := strconv.Atoi(f[1])
				total += n
			}
		}
		return total
	}
	before := textRSS()
	dropExecutablePages()
	after := textRSS()
	if after >= before {
		t.Fatalf("resident text %d kB before, %d kB after dropExecutablePages: want less", before, after)
	}
	t.Logf("resident text: %d kB before, %d kB after", before, after)
}

// TestRegressionPooledBufferHeldWhileIdle: a trim's one collection moves
// what pools hold to their victim caches, and the collector then stays
// paused while idle; ttrpc pools a buffer as large as the largest message
// it received, so a shim that was sent one large request held it (with the
// 40 connections of the abuse test, 1.4 MB) until its next request. A trim
// that finds more than lingerHeap live collects a second time.
func TestRegressionPooledBufferHeldWhileIdle(t *testing.T) {
	var pool sync.Pool
	freed := make(chan struct{})
	func() {
		b := make([]byte, 4*lingerHeap)
		runtime.AddCleanup(&b[0], func(ch chan struct{}) { close(ch) }, freed)
		pool.Put(&b)
	}()
	trimMemory()
	select {
	case <-freed:
	case <-time.After(5 * time.Second):
		t.Fatal("a pooled buffer of 4 MiB outlived the trim")
	}
	runtime.KeepAlive(&pool)
}

// TestBeginDoesNotAllocate: Begin and its end run for every chunk a stdio
// copy moves, so they allocate nothing.
func TestBeginDoesNotAllocate(t *testing.T) {
	tr := New()
	if n := testing.AllocsPerRun(100, func() { tr.Begin()() }); n != 0 {
		t.Fatalf("Begin and end allocate %v times per call, want 0", n)
	}
	if got := tr.Stats().Inflight; got != 0 {
		t.Fatalf("work under way after every end: %d, want 0", got)
	}
}
