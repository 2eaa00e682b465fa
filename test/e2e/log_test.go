package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// printBoth is a script that prints out-1..out-N on stdout and err-1..err-N on
// stderr, one write per line, interleaved.
func printBoth(n int) string {
	return fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done`, n)
}

func numbered(prefix string, n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

// ctr run --log-uri file:///path appends the container's stdout and stderr
// to one file: every line, each stream in order, after what the file held.
func TestLogURIFile(t *testing.T) {
	const n = 50
	forEachVersion(t, "logfile", func(t *testing.T, d *daemon, ns string) {
		logPath := filepath.Join(t.TempDir(), "x.log")
		if err := os.WriteFile(logPath, []byte("previous line\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		uri := (&url.URL{Scheme: "file", Path: logPath}).String()
		r := d.ctr(t, ns, "run", "--rm", "--runtime", runtimeName, "--log-uri", uri, "--rootfs", rootfsDir, "f1",
			"/bin/sh", "-c", printBoth(n)+"; exit 4")
		if r.code != 4 {
			t.Errorf("ctr run --log-uri %s: exit code %d, want the container's 4: %s", uri, r.code, r)
		}
		if strings.Contains(r.stdout, "out-1") || strings.Contains(r.stderr, "err-1") {
			t.Errorf("the container's output reached ctr instead of only the log file: %s", r)
		}
		data, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatalf("the log file: %v", err)
		}
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if len(lines) == 0 || lines[0] != "previous line" {
			t.Errorf("the log file does not start with what it held before (it was truncated, not appended to): %q", tail(string(data), 300))
		}
		if len(lines) != 2*n+1 {
			t.Errorf("the log file has %d lines, want %d (1 earlier + %d + %d)", len(lines), 2*n+1, n, n)
		}
		checkStream(t, "stdout in the log file", lines, "out-", numbered("out", n))
		checkStream(t, "stderr in the log file", lines, "err-", numbered("err", n))
		if t.Failed() {
			t.Logf("log file %s:\n%s", logPath, data)
		}
	})
}

// ctr run --log-uri binary:///path?dir=D hands stdout and stderr to a logging
// binary on fds 3 and 4, with CONTAINER_ID and CONTAINER_NAMESPACE and the
// query as arguments, and waits until it closes fd 5. The binary gets every
// line, and is gone once the container is deleted: with ctr run --rm a
// logger that exits at EOF, and with run -d, kill, task rm and c rm one that
// stays until it is told to go.
func TestLogURIBinary(t *testing.T) {
	const n = 50
	logger := buildLogger(t)
	forEachVersion(t, "logbin", func(t *testing.T, d *daemon, ns string) {
		t.Cleanup(func() { killProcessesOf(t, logger) })

		// 1. ctr run --rm; the logger exits at EOF.
		rec := filepath.Join(t.TempDir(), "rec1")
		uri := loggerURI(logger, url.Values{"dir": {rec}})
		r := d.ctr(t, ns, "run", "--rm", "--runtime", runtimeName, "--log-uri", uri, "--rootfs", rootfsDir, "b1",
			"/bin/sh", "-c", printBoth(n))
		if r.code != 0 {
			t.Errorf("ctr run --log-uri %s: %s", uri, r)
		}
		if strings.Contains(r.stdout, "out-1") || strings.Contains(r.stderr, "err-1") {
			t.Errorf("the container's output reached ctr instead of only the logger: %s", r)
		}
		pid := loggerPid(t, logger, rec)
		waitFor(t, 60*time.Second, fmt.Sprintf("the logger %d to be gone after ctr run --rm", pid), func() (bool, string) {
			return !alive(pid), fmt.Sprintf("pid %d (%s) is alive; its events: %q", pid, procName(pid), readRec(rec, "events"))
		})
		checkLoggerRecords(t, rec, ns, "b1", []string{"dir", rec}, n)

		// 2. ctr run -d: the logger runs with the container and stays after
		// EOF (linger); deleting the container stops it.
		rec = filepath.Join(t.TempDir(), "rec2")
		uri = loggerURI(logger, url.Values{"dir": {rec}, "linger": {"1"}})
		d.mustCtr(t, ns, "run", "-d", "--runtime", runtimeName, "--log-uri", uri, "--rootfs", rootfsDir, "b2",
			"/bin/sh", "-c", printBoth(n)+"; exec sleep 1000000")
		d.waitStatus(t, ns, "b2", "RUNNING")
		pid = loggerPid(t, logger, rec)
		waitFor(t, 30*time.Second, "the logger to have read all lines", func() (bool, string) {
			out, errs := readRec(rec, "stdout"), readRec(rec, "stderr")
			return strings.Count(out, "\n") >= n && strings.Count(errs, "\n") >= n,
				fmt.Sprintf("stdout %q, stderr %q", tail(out, 100), tail(errs, 100))
		})
		if !alive(pid) {
			t.Errorf("the logger %d of the running container b2 is gone; its events: %q", pid, readRec(rec, "events"))
		}
		checkLoggerRecords(t, rec, ns, "b2", nil, n)
		d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", "b2")
		d.waitStatus(t, ns, "b2", "STOPPED")
		d.mustCtr(t, ns, "task", "rm", "b2")
		d.mustCtr(t, ns, "container", "rm", "b2")
		waitFor(t, 60*time.Second, fmt.Sprintf("the logger %d to be gone after the container was deleted", pid), func() (bool, string) {
			return !alive(pid), fmt.Sprintf("pid %d (%s) is alive; its events: %q", pid, procName(pid), readRec(rec, "events"))
		})
		t.Logf("events of the lingering logger: %q", readRec(rec, "events"))
	})
}

// buildLogger builds testdata/logger into a temporary directory.
func buildLogger(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tether-e2e-logger")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if r := run(ctx, "go", "build", "-o", bin, "./testdata/logger"); r.code != 0 {
		t.Fatalf("go build ./testdata/logger: %s", r)
	}
	return bin
}

func loggerURI(bin string, q url.Values) string {
	return (&url.URL{Scheme: "binary", Path: bin, RawQuery: q.Encode()}).String()
}

func readRec(dir, name string) string {
	data, _ := os.ReadFile(filepath.Join(dir, name))
	return string(data)
}

// loggerPid waits for the logger writing into rec to record its pid. A logger
// started without the dir argument writes into no-dir-arg next to itself.
func loggerPid(t *testing.T, bin, rec string) int {
	t.Helper()
	var pid int
	waitFor(t, 30*time.Second, "the logging binary to record its pid in "+rec, func() (bool, string) {
		var err error
		pid, err = strconv.Atoi(strings.TrimSpace(readRec(rec, "pid")))
		if err == nil {
			return true, ""
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(bin), "no-dir-arg")); err == nil {
			return false, "the logger ran without the dir argument from the URI query; its args: " +
				strconv.Quote(readRec(filepath.Join(filepath.Dir(bin), "no-dir-arg"), "args"))
		}
		return false, "no pid recorded (the logger did not run?)"
	})
	return pid
}

// checkLoggerRecords checks what the logger recorded for container id in ns:
// arguments (if wantArgs is set), environment, fds, readiness and all lines.
func checkLoggerRecords(t *testing.T, rec, ns, id string, wantArgs []string, n int) {
	t.Helper()
	if wantArgs != nil {
		if got := strings.Split(strings.TrimSuffix(readRec(rec, "args"), "\n"), "\n"); strings.Join(got, " ") != strings.Join(wantArgs, " ") {
			t.Errorf("logger arguments %q, want %q (the URI's query as key value)", got, wantArgs)
		}
	}
	env := strings.Split(readRec(rec, "env"), "\n")
	if got := testkit.Getenv(env, "CONTAINER_ID"); got != id {
		t.Errorf("logger env CONTAINER_ID=%q, want %q", got, id)
	}
	if got := testkit.Getenv(env, "CONTAINER_NAMESPACE"); got != ns {
		t.Errorf("logger env CONTAINER_NAMESPACE=%q, want %q", got, ns)
	}
	fds := readRec(rec, "fds")
	for _, want := range []string{"3 fifo r\n", "4 fifo r\n", "5 fifo w\n"} {
		if !strings.Contains(fds, want) {
			t.Errorf("logger fds: %q; want a line %q (stdout and stderr pipes to read, the readiness pipe to close)", fds, strings.TrimSpace(want))
		}
	}
	if events := readRec(rec, "events"); !strings.Contains(events, "ready\n") {
		t.Errorf("the logger could not close fd 5: events %q", events)
	}
	out := strings.Split(strings.TrimSuffix(readRec(rec, "stdout"), "\n"), "\n")
	errs := strings.Split(strings.TrimSuffix(readRec(rec, "stderr"), "\n"), "\n")
	if strings.Join(out, "\n") != strings.Join(numbered("out", n), "\n") {
		t.Errorf("the logger read on fd 3 %q, want out-1..out-%d", tail(readRec(rec, "stdout"), 300), n)
	}
	if strings.Join(errs, "\n") != strings.Join(numbered("err", n), "\n") {
		t.Errorf("the logger read on fd 4 %q, want err-1..err-%d", tail(readRec(rec, "stderr"), 300), n)
	}
}

// checkStream checks that the lines with prefix are exactly want, in order.
func checkStream(t *testing.T, what string, lines []string, prefix string, want []string) {
	t.Helper()
	var got []string
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			got = append(got, l)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: %d lines %q, want %q..%q in order", what, len(got), got, want[0], want[len(want)-1])
	}
}

// killProcessesOf SIGKILLs every process running binary bin.
func killProcessesOf(t *testing.T, bin string) {
	for _, p := range testkit.AllProcesses() {
		if len(p.Args) > 0 && p.Args[0] == bin {
			t.Logf("cleanup: killing leftover logger %d", p.Pid)
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
	}
}
