package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// printf 'a\nb\n' | ctr run --rm ... /bin/cat prints both lines and exits 0:
// the EOF of ctr's stdin reaches the container. The same for ctr task exec.
func TestStdinEOF(t *testing.T) {
	const in = "a\nb\n"
	forEachVersion(t, "stdin", func(t *testing.T, d *daemon, ns string) {
		r := d.ctrStdin(t, ns, 90*time.Second, in, "run", "--rm", "--runtime", runtimeName, "--rootfs", rootfsDir, "cat1", "/bin/cat")
		if r.code != 0 || r.stdout != in {
			t.Errorf("printf 'a\\nb\\n' | ctr run --rm ... /bin/cat: %s; want exit 0 and stdout %q", r, in)
		}

		d.runDetached(t, ns, "c1")
		r = d.ctrStdin(t, ns, 90*time.Second, in, "task", "exec", "--exec-id", "cat2", "c1", "/bin/cat")
		if r.code != 0 || r.stdout != in {
			t.Errorf("printf 'a\\nb\\n' | ctr task exec ... /bin/cat: %s; want exit 0 and stdout %q", r, in)
		}
	})
}

// 1 GiB written to stdout arrives complete through ctr run: the same bytes
// (count, content, sha256) that the test generates itself.
func TestStdoutGiB(t *testing.T) {
	const size = 1 << 30
	// A 63-byte line (odd, so a lost or repeated pipe-sized chunk shifts the
	// pattern) that busybox yes repeats; head cuts it at exactly 1 GiB.
	const line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	pattern := line + "\n"
	want := expectedSum(pattern, size)
	forEachVersionFirstRunc(t, "gib", func(t *testing.T, d *daemon, ns string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		args := []string{"--address", d.Sock, "--namespace", ns, "run", "--rm", "--runtime", runtimeName, "--rootfs", rootfsDir, "big1",
			"/bin/sh", "-c", fmt.Sprintf("yes %s | head -c %d", line, size)}
		chk := &streamCheck{pattern: pattern, h: sha256.New(), firstBad: -1}
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, d.v.ctr, args...)
		cmd.Stdout, cmd.Stderr = chk, &stderr
		cmd.WaitDelay = 5 * time.Second
		err := cmd.Run()
		code := -1
		if cmd.ProcessState != nil {
			code = cmd.ProcessState.ExitCode()
		}
		got := hex.EncodeToString(chk.h.Sum(nil))
		t.Logf("ctr run: exit %d (err %v), %d bytes, sha256 %s, stderr %q", code, err, chk.n, got, stderr.String())
		if ctx.Err() != nil {
			t.Fatalf("ctr run did not finish within 10 minutes; %d bytes had arrived", chk.n)
		}
		if code != 0 {
			t.Errorf("ctr run exit code %d, want 0", code)
		}
		if chk.n != size {
			t.Errorf("stdout has %d bytes, want %d (%d missing)", chk.n, size, size-chk.n)
		}
		if chk.firstBad >= 0 {
			t.Errorf("stdout differs from the expected stream first at byte %d", chk.firstBad)
		}
		if got != want {
			t.Errorf("stdout sha256 %s, want %s", got, want)
		}
	})
}

// A container that prints 100 lines and exits: all 100 lines reach ctr run
// --rm before it returns, in 100 runs out of 100.
func TestHundredLines(t *testing.T) {
	const runs = 100
	var want strings.Builder
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&want, "line-%d\n", i)
	}
	// One echo (one write) per line.
	script := `i=1; while [ $i -le 100 ]; do echo line-$i; i=$((i+1)); done`
	forEachVersionFirstRunc(t, "lines", func(t *testing.T, d *daemon, ns string) {
		failed := 0
		for i := 1; i <= runs; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			id := fmt.Sprintf("l%03d", i)
			r := d.runCtr(ctx, ns, "run", "--rm", "--runtime", runtimeName, "--rootfs", rootfsDir, id, "/bin/sh", "-c", script)
			cancel()
			if r.code == 0 && r.stdout == want.String() {
				continue
			}
			failed++
			n := strings.Count(r.stdout, "\n")
			t.Errorf("run %d: exit %d, %d lines (want 100); err %v; stderr %q; stdout tail %q",
				i, r.code, n, r.err, r.stderr, tail(r.stdout, 200))
			if failed == 10 {
				t.Fatalf("stopping after 10 failed runs of %d", i)
			}
		}
		t.Logf("%d of %d runs delivered all 100 lines", runs-failed, runs)
	})
}

// ctrStdin runs ctr with stdin fed from a pipe holding in.
func (d *daemon) ctrStdin(t *testing.T, ns string, timeout time.Duration, in string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	full := append([]string{"--address", d.Sock, "--namespace", ns}, args...)
	cmd := exec.CommandContext(ctx, d.v.ctr, full...)
	cmd.Stdin = strings.NewReader(in) // not an *os.File: ctr gets a pipe
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), code: -1, err: err}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		r.err = fmt.Errorf("%v (deadline %v: %w)", err, timeout, ctx.Err())
	}
	t.Logf("ctr %s <<< %q -> exit %d%s%s", strings.Join(args, " "), in, r.code, quoteIf(" stdout=", r.stdout), quoteIf(" stderr=", r.stderr))
	return r
}

// streamCheck counts, hashes and compares a stream with the endless
// repetition of pattern, without keeping it.
type streamCheck struct {
	pattern  string
	h        hash.Hash
	n        int
	firstBad int
}

func (c *streamCheck) Write(p []byte) (int, error) {
	c.h.Write(p)
	if c.firstBad < 0 {
		off := c.n % len(c.pattern)
		for i, b := range p {
			if b != c.pattern[off] {
				c.firstBad = c.n + i
				break
			}
			if off++; off == len(c.pattern) {
				off = 0
			}
		}
	}
	c.n += len(p)
	return len(p), nil
}

// expectedSum is the sha256 of pattern repeated and cut at size bytes.
func expectedSum(pattern string, size int) string {
	block := []byte(strings.Repeat(pattern, (1<<20)/len(pattern)))
	h := sha256.New()
	for left := size; left > 0; {
		n := min(left, len(block))
		h.Write(block[:n])
		left -= n
	}
	return hex.EncodeToString(h.Sum(nil))
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
