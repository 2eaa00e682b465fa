// Package trim gives an idle shim's memory back to the kernel. It changes
// process-wide state behind the rest of the code's back: it pauses the
// garbage collector under a memory limit, drops the page table entries of
// the binary's read-only mappings, and ends parked OS threads. That is safe
// only under these invariants, each enforced where named:
//
//   - No code in the shim locks an OS thread (runtime.LockOSThread), except
//     shedThreads here, whose locked goroutine exits on purpose to end its
//     thread; and none starts a child with a parent-death signal
//     (SysProcAttr.Pdeathsig, go-runc's Runc.PdeathSignal), which Linux
//     sends when the thread that started the child exits. A thread the
//     shim depends on would be ended by the next trim. Enforced by
//     TestNoThreadLocksOrPdeathsig, which reads the source of every package
//     linked into the shim, with an explicit allow-list.
//   - The collector is paused only while the shim is idle: all work begins
//     with Begin (or Poke), which turns the collector back on before the
//     work runs, and no trim runs while work begun with Begin is under way.
//     The server's wiring (bootstrap.Serve) passes Begin to every source of
//     work: each request (the ttrpc interceptor), each connection (the
//     listener), each chunk of a stdio copy (stdio.Options.Busy) and each
//     exit's handling (exits.New). Each of those packages tests that it
//     calls what it is given.
//   - GOGC and GOMEMLIMIT are the operator's whenever the collector runs:
//     a pause restores them when it ends, and Run ends the pause when it
//     returns (TestTrimmerPausesCollectorWhileIdle,
//     TestPauseCollectorRestoresSettings).
//   - Only read-only, file-backed mappings of a fixed-address executable
//     are dropped: their pages are the file's, in the page cache
//     (fixedAddressExecutable, readOnlyMapping).
package trim

import (
	"context"
	"debug/elf"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Timing of the trimmer.
const (
	// trimIdle is how long the server must be quiet before it trims.
	trimIdle = time.Second
	// retrimDelay lets a collection's background sweeping and scavenging
	// finish before the pages they touched are dropped again.
	retrimDelay = 2 * time.Second
	// retrimEvery bounds how often collections lead to a retrim; the
	// runtime forces one every two minutes on an idle heap.
	retrimEvery = time.Minute
)

// Trimmer gives memory back to the kernel once the server goes idle after a
// burst of requests: freed heap pages (trimMemory), and the page table
// entries of the binary's read-only file mappings (text and rodata), which
// the startup and the request path touched. Those pages stay in the page
// cache, shared with every other shim; a later request faults back in only
// what it uses. Writable mappings are never touched: MADV_DONTNEED would
// discard their contents.
//
// While idle the garbage collector is paused (pauseCollector), so that the
// runtime's collection every two minutes neither grows its metadata nor
// pages code back in; the next request resumes it (Poke). Should a
// collection still run while idle (the memory limit of the pause), the
// collector reads much of the runtime's code and of the binary's function
// tables (the kernel maps them back 64 KiB at a time); so the trimmer also
// drops the read-only mappings again after each collection while idle
// (dropExecutablePages; at most once per retrimEvery). It learns of
// collections through a cleanup on an unreachable sentinel, re-armed after
// each one.
//
// A Trimmer is made by New. Its goroutine, Run, is owned by the caller,
// which stops it by cancelling Run's ctx and waits for Done. Poke, Begin and
// Stats are safe for concurrent use and never block.
type Trimmer struct {
	poke chan struct{} // buffered 1; a request began or ended
	// inflight counts the requests between Begin and their end; no trim
	// runs while one is in flight (a slow Create must not have its
	// threads shed or the collector paused under it).
	inflight atomic.Int32
	// endFn is end as a func value, made once: Begin runs for every chunk
	// of stdio, and must not allocate.
	endFn func()
	gc    chan struct{} // buffered 1; a garbage collection finished
	done  chan struct{} // closed when the goroutine returns
	// stopped ends the re-arming of the collection notice.
	stopped atomic.Bool
	// trims counts the trims, for the operator's metrics.
	trims atomic.Uint64
	// resumeGC is set from a trim until the next request: the garbage
	// collector is off then (pauseGC), and whichever of Poke and the run
	// loop swaps it out first calls it to turn the collector back on.
	resumeGC atomic.Pointer[func()]

	// trim is trimMemory; drop (at a trim) and retrim (after an idle
	// collection) are dropExecutablePages; pauseGC is pauseCollector.
	// Tests count them. idle, delay and every are trimIdle, retrimDelay
	// and retrimEvery.
	trim, drop, retrim func()
	pauseGC            func() (resume func())
	idle, delay, every time.Duration
}

// New returns a Trimmer with the shim's timings and actions.
func New() *Trimmer {
	t := &Trimmer{
		poke:    make(chan struct{}, 1),
		gc:      make(chan struct{}, 1),
		done:    make(chan struct{}),
		trim:    trimMemory,
		drop:    dropExecutablePages,
		retrim:  dropExecutablePages,
		pauseGC: pauseCollector,
		idle:    trimIdle,
		delay:   retrimDelay,
		every:   retrimEvery,
	}
	t.endFn = t.end
	return t
}

// Poke notes activity and turns the garbage collector back on if it was
// paused; it never blocks. The server's listener calls it for each
// connection.
func (t *Trimmer) Poke() {
	t.resume()
	t.nudge()
}

// Begin is Poke for work that runs until the returned end is called: no
// trim runs meanwhile, and the idle time counts from its end. end must be
// called exactly once. The server calls it around each request, each chunk
// a stdio copy moves, and the handling of each exit.
func (t *Trimmer) Begin() (end func()) {
	t.inflight.Add(1)
	t.Poke()
	return t.endFn
}

// end is the end of a Begin.
func (t *Trimmer) end() {
	t.inflight.Add(-1)
	t.nudge()
}

// nudge restarts the idle time; it never blocks.
func (t *Trimmer) nudge() {
	select {
	case t.poke <- struct{}{}:
	default:
	}
}

// resume turns the collector back on if a trim paused it.
func (t *Trimmer) resume() {
	if f := t.resumeGC.Swap(nil); f != nil {
		(*f)()
	}
}

// Stats is what the trimmer tells the operator's metrics (the server's
// tether-metrics.txt).
type Stats struct {
	// Trims counts the trims so far.
	Trims uint64
	// Inflight is the work begun with Begin and not yet ended (the
	// metrics' requests_inflight).
	Inflight int32
	// Paused is true while a trim has the collector paused.
	Paused bool
}

// Stats returns the trimmer's state now; any goroutine may call it.
func (t *Trimmer) Stats() Stats {
	return Stats{Trims: t.trims.Load(), Inflight: t.inflight.Load(), Paused: t.resumeGC.Load() != nil}
}

// Done is closed when Run has returned.
func (t *Trimmer) Done() <-chan struct{} { return t.done }

// gcSentinel is allocated only to become garbage: its cleanup tells the
// trimmer that a collection ran. It holds a pointer so that it is never
// batched with other tiny objects.
type gcSentinel struct{ _ *byte }

// armGCNotice makes the next garbage collection call gcFinished.
func (t *Trimmer) armGCNotice() {
	runtime.AddCleanup(new(gcSentinel), (*Trimmer).gcFinished, t)
}

// gcFinished runs on the runtime's cleanup goroutine after a collection: it
// tells Run, without blocking, and re-arms until the trimmer stops.
func (t *Trimmer) gcFinished() {
	if t.stopped.Load() {
		return
	}
	select {
	case t.gc <- struct{}{}:
	default:
	}
	t.armGCNotice()
}

// Run trims once after startup and after every burst of pokes, and while
// idle retrims after collections, until ctx is done; then it resumes the
// collector if it was paused, and closes Done. Call it once, in a goroutine
// the caller owns.
func (t *Trimmer) Run(ctx context.Context) {
	defer close(t.done)
	defer t.stopped.Store(true)
	defer t.resume()
	t.armGCNotice()
	idle := time.NewTimer(t.idle)
	defer idle.Stop()
	retrim := time.NewTimer(time.Hour)
	retrim.Stop()
	defer retrim.Stop()
	trimmed := false // true from a trim until the next poke
	var lastRetrim time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.poke:
			// A Poke between pauseGC and resumeGC.Store finds nothing
			// to resume; its token resumes here.
			t.resume()
			trimmed = false
			retrim.Stop()
			idle.Reset(t.idle)
		case <-idle.C:
			if t.inflight.Load() > 0 {
				break // the request's end restarts the idle time
			}
			// The order matters, each measured: pausing before the
			// collection left 0.5 MB more anonymous memory, and
			// pausing after the pages were dropped paged 0.7 MB of
			// code back in.
			t.trim()
			t.trims.Add(1)
			resume := t.pauseGC()
			t.resumeGC.Store(&resume)
			t.drop()
			trimmed = true
			// The trim's own collections must not be followed by a
			// retrim of their own.
			lastRetrim = time.Now()
		case <-t.gc:
			if trimmed && time.Since(lastRetrim) >= t.every {
				retrim.Reset(t.delay)
			}
		case <-retrim.C:
			if trimmed {
				t.retrim()
				lastRetrim = time.Now()
			}
		}
	}
}

// lingerHeap is the live heap above which a trim collects a second time:
// an idle shim's heap is about 400 kB, and more after the first collection
// is pooled buffers sitting in their pools' victim caches.
const lingerHeap = 1 << 20

// trimMemory ends idle OS threads, collects garbage and returns free heap
// to the kernel.
func trimMemory() {
	shedThreads(maxShed)
	// One collection, as a rule: each one makes the runtime touch more of
	// its span-set metadata (a second one here cost 200 kB per shim). The
	// buffers that pools hold (the stdio copy buffers, ttrpc's message
	// buffers) go to their victim caches now and are freed by the next
	// collection, after the next request. But ttrpc pools a buffer as
	// large as the largest message it received (up to 4 MiB), and the
	// collector stays paused while idle: when more than lingerHeap
	// survives, a second collection frees it now
	// (TestRegressionPooledBufferHeldWhileIdle).
	debug.FreeOSMemory()
	if liveHeap() > lingerHeap {
		debug.FreeOSMemory()
	}
}

// liveHeap is the bytes of heap objects allocated and not yet freed; right
// after a collection, the live heap.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// Thread shedding.
const (
	// maxShed bounds the threads one trim ends.
	maxShed = 16
	// shedWait is how long shedThreads waits for one thread to exit.
	shedWait = 20 * time.Millisecond
)

// shedThreads ends up to limit of the OS threads the Go runtime keeps parked
// after a burst; it never retires them itself. Runtime commands block a
// thread each in wait4 (go-runc waits for its children that way) and the
// scheduler starts another for the P meanwhile, so a shim whose container
// started while the node was busy keeps a thread or two it no longer needs,
// each with 48 KiB of stacks. It runs before the trim's collection, which
// then returns the ended threads' signal stacks.
//
// A goroutine that locks its thread and exits without unlocking it takes
// the thread with it (runtime.LockOSThread); the main thread is parked
// instead. shedThreads ends one thread at a time and stops when two
// attempts in a row leave the count where it was: the first may have hit
// the main thread, the second means that no thread was idle and the
// scheduler started a new one for the P the ended one held. Nothing in the
// shim depends on the identity of a thread: it locks none otherwise, and it
// starts no child with a parent-death signal, which Linux ties to the
// thread that started the child (the package's first invariant, enforced
// by TestNoThreadLocksOrPdeathsig).
func shedThreads(limit int) {
	misses := 0
	for range limit {
		before := threadCount()
		if before <= 0 {
			return
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread()
		}()
		<-done
		if waitThreadsBelow(before) {
			misses = 0
			continue
		}
		if misses++; misses == 2 {
			return
		}
	}
}

// waitThreadsBelow waits up to shedWait for the thread count to fall
// below n.
func waitThreadsBelow(n int) bool {
	deadline := time.Now().Add(shedWait)
	for threadCount() >= n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// threadCount returns this process's number of threads, or 0 if
// /proc/self/stat cannot be read.
func threadCount() int {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	return parseThreadCount(string(b))
}

// parseThreadCount reads num_threads (field 20) from a /proc/<pid>/stat
// line, or returns 0. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from its last closing parenthesis.
func parseThreadCount(stat string) int {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 18 {
		return 0
	}
	n, err := strconv.Atoi(f[17])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// pauseHeadroom is how far the Go runtime's memory may grow while the
// collector is paused before it collects anyway: about what the default
// heap goal (4 MiB at least) allows a small heap.
const pauseHeadroom = 4 << 20

// pauseCollector turns the garbage collector off, with a memory limit
// pauseHeadroom above what the runtime holds now as the backstop, and
// returns the func that restores the settings it found (GOGC and
// GOMEMLIMIT as the operator gave them, or the defaults). An idle
// Go program still collects every two minutes, and each collection makes
// the runtime touch span-set metadata it never returns: ten idle shims
// went from 2.23 to 2.67 MB anonymous between 3 s and 135 s, and stay at
// 2.22 MB with the collector paused (docs/performance.md, "The collector
// while idle"). Without a collection nothing runs while the shim is idle.
func pauseCollector() (resume func()) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	limit := int64(ms.Sys-ms.HeapReleased) + pauseHeadroom
	prevLimit := debug.SetMemoryLimit(-1)
	if prevLimit < limit {
		limit = prevLimit
	}
	debug.SetMemoryLimit(limit)
	prevGC := debug.SetGCPercent(-1)
	return func() {
		debug.SetGCPercent(prevGC)
		debug.SetMemoryLimit(prevLimit)
	}
}

// dropExecutablePages drops this process's page table entries of the
// executable's read-only, file-backed mappings (MADV_DONTNEED). The pages
// stay in the page cache.
//
// Whatever runs after a mapping is dropped faults its pages back in, 64 KiB
// around each fault. So the mappings are all read and the file closed
// first, the drops are raw system calls one after the other (no scheduler
// hand-off, no wrapper in another part of the binary), and the text goes
// last: that kept about 0.3 MB of code and read-only data out of an idle
// shim (docs/performance.md, "Idle trimming").
func dropExecutablePages() {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil || !fixedAddressExecutable(exe) {
		return
	}
	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	var text, other []mapRange
	for line := range strings.Lines(string(data)) {
		r, exec, ok := readOnlyMapping(line, exe)
		switch {
		case !ok:
		case exec:
			text = append(text, r)
		default:
			other = append(other, r)
		}
	}
	for _, r := range append(other, text...) {
		// The region is not Go memory, so it is named by address, never
		// turned into a Go pointer.
		_, _, _ = syscall.RawSyscall(syscall.SYS_MADVISE, r.start, r.end-r.start, syscall.MADV_DONTNEED)
	}
}

// mapRange is an address range of a mapping.
type mapRange struct{ start, end uintptr }

// readOnlyMapping parses one line of /proc/self/maps and reports whether it
// is a readable, non-writable mapping of the file exe, and whether it is
// executable.
func readOnlyMapping(line, exe string) (r mapRange, exec, ok bool) {
	// address perms offset dev inode path
	fields := strings.Fields(line)
	if len(fields) < 6 || fields[5] != exe || len(fields[1]) < 3 || fields[1][0] != 'r' || fields[1][1] == 'w' {
		return mapRange{}, false, false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	if !found {
		return mapRange{}, false, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapRange{}, false, false
	}
	return mapRange{uintptr(start), uintptr(end)}, fields[1][2] == 'x', true
}

// fixedAddressExecutable reports whether exe is an ELF executable of type
// ET_EXEC without a PT_GNU_RELRO segment. Only such a binary's read-only
// mappings are the file's pages as is: in a position-independent one (ET_DYN,
// -buildmode=pie) the loader relocates read-only data into private copies,
// and in an externally linked one (cgo, -linkmode=external) it fills in the
// RELRO pages and then write-protects them; dropping either would bring back
// unrelocated pages. make build links neither.
func fixedAddressExecutable(exe string) bool {
	f, err := elf.Open(exe)
	if err != nil {
		return false
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_GNU_RELRO {
			return false
		}
	}
	return true
}
