package bootstrap

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Transparent huge pages.
//
// With THP set to "always" (Debian's and RHEL's kernel default), the first
// touch of an anonymous mapping of 2 MiB or more can fault in a whole huge
// page. The Go runtime reserves such mappings before main runs, among them a
// 32 MiB arena index of which it touches a few bytes, and its heap arenas;
// each first touch then costs 2 MiB of RSS, and a shim's RSS doubled
// (docs/performance.md, "Huge pages"). The containers must keep the host's
// setting, so the shim cannot simply turn THP off for itself with
// prctl(PR_SET_THP_DISABLE): that flag is inherited by every child and kept
// across execve, so runc, and through it every container, would get it.
//
// So the flag is on only while the server's runtime starts:
//
//  1. `start` sets PR_SET_THP_DISABLE just before it launches the server
//     (holdHugePages), so the server's runtime starts without huge pages;
//  2. the server, first thing in Serve, marks every private anonymous
//     writable mapping it has MADV_NOHUGEPAGE (markNoHugePages), a
//     per-mapping flag that no child inherits, and then clears
//     PR_SET_THP_DISABLE (releaseHugePages), so that its children inherit
//     the host's setting;
//  3. heap mappings made later are marked MADV_NOHUGEPAGE by the Go runtime
//     itself (GODEBUG disablethp=1, see serverSettings).

// holdHugePages sets PR_SET_THP_DISABLE on this process, for the server it
// is about to launch to inherit. Only `start` calls it: it launches nothing
// else.
func holdHugePages() error {
	if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_THP_DISABLE, 1): %w", err)
	}
	return nil
}

// markNoHugePages marks this process's private anonymous writable mappings
// MADV_NOHUGEPAGE and returns how many it marked.
func markNoHugePages() (int, error) {
	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0, fmt.Errorf("read mappings: %w", err)
	}
	marked := 0
	for line := range strings.Lines(string(data)) {
		r, ok := anonWritableMapping(line)
		if !ok {
			continue
		}
		// The region is named by address, never turned into a Go pointer.
		if _, _, errno := syscall.RawSyscall(syscall.SYS_MADVISE, r.start, r.end-r.start, unix.MADV_NOHUGEPAGE); errno != 0 {
			return marked, fmt.Errorf("madvise(%#x-%#x, MADV_NOHUGEPAGE): %w", r.start, r.end, errno)
		}
		marked++
	}
	return marked, nil
}

// releaseHugePages clears PR_SET_THP_DISABLE if it is set, so that the
// server's children inherit the host's setting. It must run before the
// server starts any child; for a server not launched by start it changes
// nothing.
func releaseHugePages() error {
	disabled, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0)
	if err != nil {
		return fmt.Errorf("prctl(PR_GET_THP_DISABLE): %w", err)
	}
	if disabled != 0 {
		if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 0, 0, 0, 0); err != nil {
			return fmt.Errorf("prctl(PR_SET_THP_DISABLE, 0): %w", err)
		}
	}
	return nil
}

// mapRange is an address range of a mapping.
type mapRange struct{ start, end uintptr }

// anonWritableMapping parses one line of /proc/self/maps and reports whether
// it is a private, writable mapping of no file (the heap, the runtime's own
// allocations, thread stacks), and its range.
func anonWritableMapping(line string) (mapRange, bool) {
	// address perms offset dev inode [path]
	fields := strings.Fields(line)
	if len(fields) < 5 || len(fields) > 6 || len(fields[1]) < 4 || fields[1][1] != 'w' || fields[1][3] != 'p' || fields[4] != "0" {
		return mapRange{}, false
	}
	if len(fields) == 6 && fields[5] != "[heap]" {
		// [stack], [vvar], [vdso] and files.
		return mapRange{}, false
	}
	lo, hi, found := strings.Cut(fields[0], "-")
	if !found {
		return mapRange{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapRange{}, false
	}
	return mapRange{uintptr(start), uintptr(end)}, true
}
