package bootstrap

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func oomScore(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, "sleep", "60")
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	return cmd
}

// TestServerOOMScoreIsContainerdsPlusOne: the server's oom_score_adj is its
// parent's (containerd's) plus one, as with containerd's shims.
func TestServerOOMScoreIsContainerdsPlusOne(t *testing.T) {
	server := sleeper(t)
	if err := adjustOOMScore(server.Process.Pid, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	want := min(oomScore(t, os.Getpid())+1, oomScoreAdjMax)
	if got := oomScore(t, server.Process.Pid); got != want {
		t.Fatalf("server's oom_score_adj %d, want %d (ours plus one)", got, want)
	}
}

// TestServerOOMScoreStopsAtMax: a containerd at the largest score gives a
// server the largest score, not one more.
func TestServerOOMScoreStopsAtMax(t *testing.T) {
	parent, server := sleeper(t), sleeper(t)
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", parent.Process.Pid), []byte("1000"), 0); err != nil {
		t.Fatal(err)
	}
	if err := adjustOOMScore(server.Process.Pid, parent.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if got := oomScore(t, server.Process.Pid); got != oomScoreAdjMax {
		t.Fatalf("server's oom_score_adj %d, want %d", got, oomScoreAdjMax)
	}
}
