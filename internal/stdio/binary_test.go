package stdio

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

// recorder is a logging binary that records into the directory %[1]s: its
// pid, its arguments, CONTAINER_ID and CONTAINER_NAMESPACE, and what it
// reads on fds 3 and 4. It closes fd 5 (ready) once the readers run, and
// exits when both reached EOF.
const recorder = `#!/bin/sh
d='%[1]s'
echo $$ > "$d/pid"
printf '%%s\n' "$@" > "$d/args"
printf 'CONTAINER_ID=%%s\nCONTAINER_NAMESPACE=%%s\n' "$CONTAINER_ID" "$CONTAINER_NAMESPACE" > "$d/env"
cat <&3 5>&- > "$d/stdout" &
cat <&4 5>&- > "$d/stderr" &
exec 5>&-
wait
`

// neverReady is a logging binary that never closes fd 5 (nor exits).
const neverReady = `#!/bin/sh
echo $$ > '%[1]s/pid'
exec sleep 100000
`

// ignoresEOF is a logging binary that gets ready and then keeps running
// whatever its input does, until a signal stops it.
const ignoresEOF = `#!/bin/sh
echo $$ > '%[1]s/pid'
exec 5>&-
exec sleep 100000
`

// ignoresTERM is ignoresEOF that also ignores SIGTERM.
const ignoresTERM = `#!/bin/sh
echo $$ > '%[1]s/pid'
trap '' TERM
exec 5>&-
exec sleep 100000
`

// writeLogger writes a logging binary from script (a format taking the
// record directory) and returns its path and the record directory.
func writeLogger(t *testing.T, script string) (path, rec string) {
	t.Helper()
	rec = t.TempDir()
	path = filepath.Join(t.TempDir(), "logger")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(script, rec)), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, rec
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// noChildren fails if the test process has a child left (running or
// zombie).
func noChildren(t *testing.T) {
	t.Helper()
	for _, pid := range children(t) {
		t.Errorf("child process left behind: %s", procState(pid))
	}
}

// TestBinaryLogger: binary:// starts the logging binary with the query as
// arguments and the container's identity in its environment; it gets the
// container's stdout on fd 3 and stderr on fd 4; after the container exited,
// Close waits for it, and it is gone (reaped, not a zombie).
func TestBinaryLogger(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newReaper(t)
	logger, rec := writeLogger(t, recorder)
	uri := "binary://" + logger + "?level=debug"
	p := openIO(t, Config{Stdout: uri, Stderr: uri}, Options{ID: "c1", Namespace: "ns1", Monitor: r})
	pid := readPid(t, filepath.Join(rec, "pid"))
	if procState(pid) == "" {
		t.Fatalf("the logging binary %d is not running after Open", pid)
	}
	if got := readFile(t, filepath.Join(rec, "args")); got != "level\ndebug\n" {
		t.Errorf("logger args %q, want %q", got, "level\ndebug\n")
	}
	if got, want := readFile(t, filepath.Join(rec, "env")), "CONTAINER_ID=c1\nCONTAINER_NAMESPACE=ns1\n"; got != want {
		t.Errorf("logger env %q, want %q", got, want)
	}

	c := startContainer(t, p, r, sh("echo out1; echo err1 >&2; echo out2; echo err2 >&2"))
	if status := c.wait(t); status != 0 {
		t.Errorf("container exit status %d", status)
	}
	drainIO(t, p, drainAll)
	if err := closeIO(p); err != nil {
		t.Errorf("logger that exits at EOF: %v", err)
	}
	if st := procState(pid); st != "" {
		t.Errorf("the logging binary is still there after Close: %s", st)
	}
	noChildren(t)
	if got := readFile(t, filepath.Join(rec, "stdout")); got != "out1\nout2\n" {
		t.Errorf("logger fd 3 got %q, want %q", got, "out1\nout2\n")
	}
	if got := readFile(t, filepath.Join(rec, "stderr")); got != "err1\nerr2\n" {
		t.Errorf("logger fd 4 got %q, want %q", got, "err1\nerr2\n")
	}
}

// TestBinaryLoggerStderrOnly: a binary:// stderr alone starts the logger too.
func TestBinaryLoggerStderrOnly(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newReaper(t)
	logger, rec := writeLogger(t, recorder)
	p := openIO(t, Config{Stderr: "binary://" + logger}, Options{Monitor: r})
	c := startContainer(t, p, r, sh("echo err >&2"))
	if status := c.wait(t); status != 0 {
		t.Errorf("container exit status %d", status)
	}
	if err := closeIO(p); err != nil {
		t.Error(err)
	}
	noChildren(t)
	if got := readFile(t, filepath.Join(rec, "args")); got != "\n" {
		t.Errorf("logger args %q, want none", got)
	}
	if got := readFile(t, filepath.Join(rec, "stderr")); got != "err\n" {
		t.Errorf("logger fd 4 got %q, want %q", got, "err\n")
	}
}

// TestBinaryLoggerCloseWithoutStart: the logger sees EOF when the IO is
// closed without a container, and exits.
func TestBinaryLoggerCloseWithoutStart(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newReaper(t)
	logger, rec := writeLogger(t, recorder)
	p := openIO(t, Config{Stdout: "binary://" + logger}, Options{Monitor: r})
	pid := readPid(t, filepath.Join(rec, "pid"))
	for i := range 2 {
		if err := closeIO(p); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if st := procState(pid); st != "" {
		t.Errorf("the logging binary is still there after Close: %s", st)
	}
	noChildren(t)
}

// TestBinaryLoggerNeverReady: a logger that never closes fd 5 makes Open fail
// once ctx's deadline passed, and is stopped.
func TestBinaryLoggerNeverReady(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newReaper(t)
	logger, rec := writeLogger(t, neverReady)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	type result struct {
		p   *IO
		err error
	}
	done := make(chan result, 1)
	go func() {
		p, err := Open(ctx, Config{Stdout: "binary://" + logger}, Options{Monitor: r})
		done <- result{p, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(bound):
		t.Fatalf("Open with a logger that is never ready did not return within %v", bound)
	}
	if res.err == nil {
		closeIO(res.p)
		t.Fatal("Open succeeded with a logger that never closed fd 5")
	}
	t.Logf("Open: %v", res.err)
	if _, err := os.Stat(filepath.Join(rec, "pid")); err == nil {
		if st := procState(readPid(t, filepath.Join(rec, "pid"))); st != "" {
			t.Errorf("the logging binary is still there after Open failed: %s", st)
		}
	}
	noChildren(t)
}

// TestBinaryLoggerIgnoresEOF: Close stops a logger that does not exit at EOF
// with SIGTERM (it gets no error: SIGTERM is the documented way to ask it).
func TestBinaryLoggerIgnoresEOF(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newReaper(t)
	logger, rec := writeLogger(t, ignoresEOF)
	p := openIO(t, Config{Stdout: "binary://" + logger, Stderr: "binary://" + logger}, Options{Monitor: r})
	pid := readPid(t, filepath.Join(rec, "pid"))
	c := startContainer(t, p, r, sh("echo hi"))
	if status := c.wait(t); status != 0 {
		t.Errorf("container exit status %d", status)
	}
	if err := closeIO(p); err != nil {
		t.Error(err)
	}
	if st := procState(pid); st != "" {
		t.Errorf("the logging binary is still there after Close: %s", st)
	}
	noChildren(t)
}

// TestBinaryLoggerIgnoresSIGTERM: Close kills a logger that ignores EOF and
// SIGTERM, and says so.
func TestBinaryLoggerIgnoresSIGTERM(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newReaper(t)
	logger, rec := writeLogger(t, ignoresTERM)
	p := openIO(t, Config{Stdout: "binary://" + logger, Stderr: "binary://" + logger}, Options{Monitor: r})
	pid := readPid(t, filepath.Join(rec, "pid"))
	c := startContainer(t, p, r, sh("echo hi"))
	if status := c.wait(t); status != 0 {
		t.Errorf("container exit status %d", status)
	}
	err := closeIO(p)
	if err == nil {
		t.Error("Close reported no error for a logger it had to kill")
	}
	t.Logf("Close: %v", err)
	if st := procState(pid); st != "" {
		t.Errorf("the logging binary is still there after Close: %s", st)
	}
	noChildren(t)
}

// TestRegressionLoggerReadyIgnoresCancel: Open documents that ctx bounds the
// wait for the logging binary to become ready, but startLogger only takes
// ctx's deadline: a cancelled ctx without a deadline (containerd gave up on
// the Create) does not end the wait, and Open succeeds once the logger gets
// ready.
func TestRegressionLoggerReadyIgnoresCancel(t *testing.T) {
	testutil.CheckLeaks(t)
	r := newReaper(t)
	dir := t.TempDir()
	gate := mkfifo(t, dir, "gate")
	// Ready only once the test writes a line into gate.
	logger, rec := writeLogger(t, `#!/bin/sh
echo $$ > '%[1]s/pid'
read x < '`+gate+`'
exec 5>&-
exec sleep 100000
`)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	type result struct {
		p   *IO
		err error
	}
	done := make(chan result, 1)
	go func() {
		p, err := Open(ctx, Config{Stdout: "binary://" + logger}, Options{Monitor: r})
		done <- result{p, err}
	}()
	// Open the gate as soon as the logger waits at it, unless Open already
	// returned.
	var res result
	deadline := time.After(bound)
	gated := false
	for !gated {
		select {
		case res = <-done:
			gated = true
			continue
		case <-deadline:
			t.Fatalf("Open did not return and the logger did not open its gate within %v", bound)
		case <-time.After(time.Millisecond):
		}
		fd, err := unix.Open(gate, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // ENXIO: the logger is not reading yet
		}
		_, _ = unix.Write(fd, []byte("go\n"))
		unix.Close(fd)
		select {
		case res = <-done:
		case <-time.After(bound):
			t.Fatalf("Open did not return within %v", bound)
		}
		gated = true
	}
	if res.err == nil {
		closeIO(res.p)
		t.Errorf("Open with a cancelled ctx succeeded: it waited for the logging binary anyway")
	}
	if _, err := os.Stat(filepath.Join(rec, "pid")); err == nil {
		if st := procState(readPid(t, filepath.Join(rec, "pid"))); st != "" {
			t.Errorf("the logging binary is still there: %s", st)
		}
	}
	noChildren(t)
}
