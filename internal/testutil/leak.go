// Package testutil holds checks shared by the unit tests: goroutine and
// file-descriptor leak detection, a logger that records what it is
// given, sockets in the states a test needs, and a busybox OCI bundle. It
// is imported only from _test.go files.
package testutil

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// settle is how long a leak check waits for goroutines and fds to go away
// before it reports a leak. Goroutines that end asynchronously after Close
// returned (runtime internals, the netpoller) need a moment.
const settle = 5 * time.Second

// CheckLeaks records the goroutines and open file descriptors of the process
// and registers a t.Cleanup that fails the test if, after the test, more
// goroutines are running or more descriptors are open than before. Call it
// first in a test, before anything that starts goroutines, and do not use it
// in parallel tests: it counts process-wide.
func CheckLeaks(t testing.TB) {
	t.Helper()
	g0 := goroutines()
	f0 := fdCount(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(settle)
		for {
			g, f := goroutines(), fdCount(t)
			if g <= g0 && f <= f0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("leak: goroutines %d -> %d, fds %d -> %d (%s)\n%s", g0, g, f0, f, fdList(t), buf[:n])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// goroutines counts the running goroutines that are not permanent.
func goroutines() int {
	// Goroutines that, once started, live as long as the process: os/signal
	// starts its loop at the first signal.Notify and never stops it.
	permanent := []string{"os/signal.loop"}
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.TrimSpace(g) == "" {
			continue
		}
		skip := false
		for _, p := range permanent {
			if strings.Contains(g, p) {
				skip = true
			}
		}
		if !skip {
			count++
		}
	}
	return count
}

func fdCount(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(ents)
}

func fdList(t testing.TB) string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		b.WriteString(e.Name() + "->" + target + " ")
	}
	return b.String()
}
