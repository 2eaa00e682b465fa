package e2e

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
)

// hugePageFlags counts, in /proc/<pid>/smaps, the anonymous mappings of at
// least 4 MiB (the Go heap's arenas are 64 MiB) and how many of them carry
// the "nh" VmFlag (MADV_NOHUGEPAGE); others lists the ones without it.
func hugePageFlags(pid int) (large, noHuge int, others []string, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, nil, err
	}
	defer f.Close()
	var sizeKB int
	var anon bool
	var header string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			anon = len(fields) == 5 // no path: an anonymous mapping
			header = fields[0]
		case len(fields) >= 2 && fields[0] == "Size:":
			fmt.Sscan(fields[1], &sizeKB)
		case len(fields) >= 1 && fields[0] == "VmFlags:":
			if anon && sizeKB >= 4<<10 && strings.Contains(strings.Join(fields[1:], " "), "rd wr") {
				large++
				if strings.Contains(" "+strings.Join(fields[1:], " ")+" ", " nh ") {
					noHuge++
				} else {
					others = append(others, fmt.Sprintf("%s (%d kB, %s)", header, sizeKB, strings.Join(fields[1:], " ")))
				}
			}
		}
	}
	return large, noHuge, others, sc.Err()
}

// The shim's Go heap is never backed by transparent huge pages (the
// runtime's disablethp: with THP "always", as on Debian's and RHEL's
// kernels, a shim's RSS used to double), and neither the shim's children
// nor the container inherit that choice: the shim has cleared the
// PR_SET_THP_DISABLE it started with, and the container's init has THP
// enabled.
func TestShimHeapWithoutHugePages(t *testing.T) {
	forEachVersion(t, "thp", func(t *testing.T, d *daemon, ns string) {
		if !isTether() {
			t.Fatal("this test checks Tether's own setting; run it with the Tether runtime")
		}
		d.runDetached(t, ns, "h1")
		s := d.shimOf(t, ns, "h1")
		large, noHuge, others, err := hugePageFlags(s.pid)
		if err != nil {
			t.Fatal(err)
		}
		if large == 0 || noHuge != large {
			t.Errorf("shim %d: %d of its %d large anonymous mappings are MADV_NOHUGEPAGE, want all; without: %q", s.pid, noHuge, large, others)
		}
		if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid)); err != nil || !strings.Contains(string(status), "THP_enabled:\t1") {
			t.Errorf("shim %d still has PR_SET_THP_DISABLE (its children would inherit it): %v\n%s", s.pid, err, status)
		}
		tk := d.waitStatus(t, ns, "h1", "RUNNING")
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tk.pid))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(status), "THP_enabled:\t1") {
			t.Errorf("container init %d has THP disabled:\n%s", tk.pid, status)
		}
		t.Logf("shim %d: %d/%d large anonymous mappings MADV_NOHUGEPAGE; container %d THP enabled", s.pid, noHuge, large, tk.pid)
	})
}
