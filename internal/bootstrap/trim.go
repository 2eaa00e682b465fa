package bootstrap

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// trimIdle is how long the server must be quiet before it trims its memory.
const trimIdle = time.Second

// trimmer gives memory back to the kernel once the server goes idle after a
// burst of requests: freed heap pages (debug.FreeOSMemory), and the page
// table entries of the binary's read-only file mappings (text and rodata),
// which the startup and the request path touched. Those pages stay in the
// page cache, shared with every other shim; a later request faults back in
// only what it uses. Writable mappings are never touched: MADV_DONTNEED
// would discard their contents.
//
// The trimmer's goroutine is owned by Serve, which stops it by cancelling
// ctx and waits for it.
type trimmer struct {
	poke chan struct{} // buffered 1; a request arrived
	done chan struct{} // closed when the goroutine returns
}

func newTrimmer() *trimmer {
	return &trimmer{poke: make(chan struct{}, 1), done: make(chan struct{})}
}

// Poke notes activity; it never blocks.
func (t *trimmer) Poke() {
	select {
	case t.poke <- struct{}{}:
	default:
	}
}

// run trims once after startup and after every burst of pokes, until ctx
// is done.
func (t *trimmer) run(ctx context.Context) {
	defer close(t.done)
	timer := time.NewTimer(trimIdle)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.poke:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(trimIdle)
		case <-timer.C:
			trimMemory()
		}
	}
}

// trimMemory returns free heap to the kernel and drops the resident pages
// of the executable's read-only file mappings from this process.
func trimMemory() {
	// Two collections: the first moves what sync.Pools hold (the stdio
	// copy buffers) to their victim caches, the second frees it; then
	// FreeOSMemory returns the free pages.
	runtime.GC()
	debug.FreeOSMemory()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
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
