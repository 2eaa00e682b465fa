package bootstrap

import (
	"bufio"
	"context"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
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

// trimmer gives memory back to the kernel once the server goes idle after a
// burst of requests: freed heap pages (trimMemory), and the page table
// entries of the binary's read-only file mappings (text and rodata), which
// the startup and the request path touched. Those pages stay in the page
// cache, shared with every other shim; a later request faults back in only
// what it uses. Writable mappings are never touched: MADV_DONTNEED would
// discard their contents.
//
// An idle Go program still runs a garbage collection every two minutes, and
// the collector reads much of the runtime's code and of the binary's
// function tables (the kernel maps them back 64 KiB at a time). So while
// idle, the trimmer also drops the read-only mappings again after each
// collection (dropExecutablePages; at most once per retrimEvery), which
// keeps an idle shim's resident set where the first trim left it. It learns
// of collections through a cleanup on an unreachable sentinel, re-armed
// after each one.
//
// The trimmer's goroutine is owned by Serve, which stops it by cancelling
// ctx and waits for done.
type trimmer struct {
	poke chan struct{} // buffered 1; a request arrived
	gc   chan struct{} // buffered 1; a garbage collection finished
	done chan struct{} // closed when the goroutine returns
	// stopped ends the re-arming of the collection notice.
	stopped atomic.Bool

	// trim and retrim are trimMemory and dropExecutablePages; tests
	// count them. idle, delay and every are trimIdle, retrimDelay and
	// retrimEvery.
	trim, retrim       func()
	idle, delay, every time.Duration
}

func newTrimmer() *trimmer {
	return &trimmer{
		poke:   make(chan struct{}, 1),
		gc:     make(chan struct{}, 1),
		done:   make(chan struct{}),
		trim:   trimMemory,
		retrim: dropExecutablePages,
		idle:   trimIdle,
		delay:  retrimDelay,
		every:  retrimEvery,
	}
}

// Poke notes activity; it never blocks.
func (t *trimmer) Poke() {
	select {
	case t.poke <- struct{}{}:
	default:
	}
}

// gcSentinel is allocated only to become garbage: its cleanup tells the
// trimmer that a collection ran. It holds a pointer so that it is never
// batched with other tiny objects.
type gcSentinel struct{ _ *byte }

// armGCNotice makes the next garbage collection call gcFinished.
func (t *trimmer) armGCNotice() {
	runtime.AddCleanup(new(gcSentinel), (*trimmer).gcFinished, t)
}

// gcFinished runs on the runtime's cleanup goroutine after a collection: it
// tells run, without blocking, and re-arms until the trimmer stops.
func (t *trimmer) gcFinished() {
	if t.stopped.Load() {
		return
	}
	select {
	case t.gc <- struct{}{}:
	default:
	}
	t.armGCNotice()
}

// run trims once after startup and after every burst of pokes, and while
// idle retrims after collections, until ctx is done.
func (t *trimmer) run(ctx context.Context) {
	defer close(t.done)
	defer t.stopped.Store(true)
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
			trimmed = false
			retrim.Stop()
			idle.Reset(t.idle)
		case <-idle.C:
			t.trim()
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

// trimMemory returns free heap to the kernel and drops the resident pages
// of the executable's read-only file mappings from this process.
func trimMemory() {
	// One collection only: each one makes the runtime touch more of its
	// span-set metadata (a second one here cost 200 kB per shim). The copy
	// buffers the stdio pools hold go to their victim caches now and are
	// freed by the next collection.
	debug.FreeOSMemory()
	dropExecutablePages()
}

// dropExecutablePages drops this process's page table entries of the
// executable's read-only, file-backed mappings (MADV_DONTNEED). The pages
// stay in the page cache.
func dropExecutablePages() {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil || !fixedAddressExecutable(exe) {
		return
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || strings.ContainsAny(fields[1], "w") || !strings.HasPrefix(fields[1], "r") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		// The raw syscall: the region is not Go memory, so it is named by
		// address, never turned into a Go pointer.
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED)
	}
}

// fixedAddressExecutable reports whether exe is an ELF executable of type
// ET_EXEC. Only such a binary's read-only mappings are the file's pages as
// is: in a position-independent one (ET_DYN, -buildmode=pie) the loader
// relocates read-only data into private copies, and dropping those would
// bring back unrelocated pages.
func fixedAddressExecutable(exe string) bool {
	f, err := os.Open(exe)
	if err != nil {
		return false
	}
	defer f.Close()
	var hdr [18]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return false
	}
	return string(hdr[:4]) == "\x7fELF" && binary.LittleEndian.Uint16(hdr[16:]) == uint16(elf.ET_EXEC)
}
