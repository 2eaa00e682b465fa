package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindListening(t *testing.T) {
	table := `Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/containerd/s/aaaa
0000000000000000: 00000003 00000000 00000000 0001 03 1002 /run/containerd/s/aaaa
0000000000000000: 00000002 00000000 00010000 0001 01 1003 /run/other
0000000000000000: 00000003 00000000 00000000 0001 03 1004
`
	got, err := findListening(strings.NewReader(table), map[string]bool{"1001": true, "1002": true, "1004": true})
	if err != nil || got != "/run/containerd/s/aaaa" {
		t.Fatalf("findListening = %q, %v; want the listening socket 1001", got, err)
	}
	if _, err := findListening(strings.NewReader(table), map[string]bool{"1002": true}); err == nil {
		t.Fatal("findListening found a listening socket among connected ones")
	}
	if _, err := findListening(strings.NewReader(table), map[string]bool{"1001": true, "1003": true}); err == nil {
		t.Fatal("findListening chose one of two listening sockets")
	}
}

func TestListeningSocketOfAProcess(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got, err := listeningSocket("/proc", os.Getpid())
	if err != nil || got != sock {
		t.Fatalf("listeningSocket(self) = %q, %v; want %s", got, err, sock)
	}
}

func TestShimPids(t *testing.T) {
	proc := t.TempDir()
	procs := map[string]string{
		"10":   "/usr/local/bin/containerd-shim-tether-v2\x00-namespace\x00default\x00-id\x00c1\x00serve\x00",
		"11":   "/usr/local/bin/containerd-shim-tether-v2\x00-namespace\x00default\x00-id\x00c1\x00start\x00",
		"12":   "/usr/bin/containerd-shim-runc-v2\x00-namespace\x00default\x00serve\x00",
		"13":   "",
		"self": "/usr/local/bin/containerd-shim-tether-v2\x00serve\x00",
	}
	for pid, cmdline := range procs {
		if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, pid, "cmdline"), []byte(cmdline), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := shimPids(proc)
	if err != nil || len(got) != 1 || got[0] != 10 {
		t.Fatalf("shimPids = %v, %v; want [10]", got, err)
	}
}

func TestRunUpgradeArguments(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{{}, {"--all", "12"}, {"x"}, {"-1"}} {
		if err := runUpgrade(ctx, args); err == nil {
			t.Errorf("runUpgrade(%q) succeeded", args)
		}
	}
	// A process that is not a shim server is refused, not upgraded.
	if err := runUpgrade(ctx, []string{"1"}); err == nil {
		t.Error("runUpgrade(1) succeeded on init")
	}
}
