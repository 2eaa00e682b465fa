package bootstrap

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAnonWritableMapping(t *testing.T) {
	tests := []struct {
		line string
		want mapRange
		ok   bool
	}{
		{"00b2c000-02b64000 rw-p 00000000 00:00 0 \n", mapRange{0xb2c000, 0x2b64000}, true},
		{"7faa0ea00000-7faa10a00000 rw-p 00000000 00:00 0                          \n", mapRange{0x7faa0ea00000, 0x7faa10a00000}, true},
		{"01000000-01021000 rw-p 00000000 00:00 0                                  [heap]\n", mapRange{0x1000000, 0x1021000}, true},
		{"7ffd1000-7ffd2000 rw-p 00000000 00:00 0                                  [stack]\n", mapRange{}, false},
		{"7faa10a00000-7faa24c5d000 ---p 00000000 00:00 0 \n", mapRange{}, false}, // a reservation
		{"00400000-00500000 r-xp 00000000 fe:01 1234 /usr/bin/containerd-shim-tether-v2\n", mapRange{}, false},
		{"00600000-00610000 rw-p 00200000 fe:01 1234 /usr/bin/containerd-shim-tether-v2\n", mapRange{}, false}, // file-backed data
		{"7f000000-7f100000 rw-s 00000000 00:01 77 /dev/zero (deleted)\n", mapRange{}, false},                  // shared
		{"7f000000-7f100000 rw-s 00000000 00:00 0\n", mapRange{}, false},                                       // shared anonymous
		{"garbage\n", mapRange{}, false},
		{"zz-yy rw-p 00000000 00:00 0\n", mapRange{}, false},
		{"2000-1000 rw-p 00000000 00:00 0\n", mapRange{}, false},
	}
	for _, tt := range tests {
		got, ok := anonWritableMapping(tt.line)
		if got != tt.want || ok != tt.ok {
			t.Errorf("anonWritableMapping(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

// thpChildEnv makes the test binary, run as a child, report its
// PR_GET_THP_DISABLE instead of running tests (see TestMain).
const thpChildEnv = "TETHER_TEST_THP_CHILD"

// thpChild prints the process's PR_GET_THP_DISABLE.
func thpChild() int {
	v, err := unix.PrctlRetInt(unix.PR_GET_THP_DISABLE, 0, 0, 0, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("thp-disabled=%d\n", v)
	return 0
}

// TestHugePagesHeldAndReleased: what holdHugePages sets is inherited by a
// child across execve (the server inherits it from start), and after
// markNoHugePages and releaseHugePages a child inherits the host's
// setting again (the containers do), while the large anonymous mappings
// stay MADV_NOHUGEPAGE.
func TestHugePagesHeldAndReleased(t *testing.T) {
	child := func() string {
		t.Helper()
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(self, "-test.run=^$")
		cmd.Env = append(os.Environ(), thpChildEnv+"=1")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_THP_DISABLE, 0, 0, 0, 0) })
	if err := holdHugePages(); err != nil {
		t.Fatal(err)
	}
	if got := child(); got != "thp-disabled=1" {
		t.Fatalf("after holdHugePages a child reports %q, want thp-disabled=1", got)
	}
	marked, err := markNoHugePages()
	if err != nil || marked == 0 {
		t.Fatalf("markNoHugePages = %d, %v; want some mappings marked", marked, err)
	}
	if err := releaseHugePages(); err != nil {
		t.Fatal(err)
	}
	if got := child(); got != "thp-disabled=0" {
		t.Fatalf("after releaseHugePages a child reports %q, want thp-disabled=0", got)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(smaps), " nh") {
		t.Fatal("no mapping of this process has the nh VmFlag after markNoHugePages")
	}
	if err := releaseHugePages(); err != nil {
		t.Fatalf("releaseHugePages when the flag is clear: %v", err)
	}
}
