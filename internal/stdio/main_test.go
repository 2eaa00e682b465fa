package stdio

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/testutil"
)

// childEnv selects what the test binary does when it runs as a child (a
// "container"):
//
//	gen:N:M  write N bytes of stream 1 to stdout and M bytes of stream 2 to
//	         stderr, concurrently, then exit 0
//	tick     write "tick\n" to stdout every 50 ms until killed
//	echo     for each line of stdin, write it to stdout and, in letters
//	         (see letters), to stderr; exit 0 at EOF
//	count:N  write 1..N to stdout and stderr as echo does, then exit 0
const childEnv = "STDIO_TEST_CHILD"

// bound limits every wait of the tests; reaching it fails the test. It is
// not a timing assertion: nothing here should take more than a second.
const bound = 60 * time.Second

// drainAll is the Drain timeout of tests that are not about Drain's
// deadline: long enough never to cut a copy short.
const drainAll = bound

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(childEnv); ok {
		os.Exit(runChild(mode))
	}
	// A process that a container leaves behind is reparented to the test,
	// which kills and reaps it. exits.New (the binary:// tests) does the
	// same; doing it here keeps every test independent of the order.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "set child subreaper:", err)
		os.Exit(1)
	}
	testutil.PrimeRuntime()
	os.Exit(m.Run())
}

func runChild(mode string) int {
	name, arg, _ := strings.Cut(mode, ":")
	switch name {
	case "gen":
		a, b, _ := strings.Cut(arg, ":")
		nOut, err1 := strconv.ParseInt(a, 10, 64)
		nErr, err2 := strconv.ParseInt(b, 10, 64)
		if err1 != nil || err2 != nil {
			fmt.Fprintf(os.Stderr, "bad gen %q\n", arg)
			return 102
		}
		var wg sync.WaitGroup
		failed := atomic.Bool{}
		for _, s := range []struct {
			f    *os.File
			seed uint64
			n    int64
		}{{os.Stdout, 1, nOut}, {os.Stderr, 2, nErr}} {
			wg.Go(func() {
				if _, err := io.Copy(s.f, stream(s.seed, s.n)); err != nil {
					failed.Store(true)
				}
			})
		}
		wg.Wait()
		if failed.Load() {
			return 1
		}
		return 0
	case "echo":
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if !echoNumber(sc.Text()) {
				return 1
			}
		}
		if sc.Err() != nil {
			return 1
		}
		return 0
	case "count":
		n, err := strconv.Atoi(arg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bad count %q\n", arg)
			return 102
		}
		for i := 1; i <= n; i++ {
			if !echoNumber(strconv.Itoa(i)) {
				return 1
			}
		}
		return 0
	case "tick":
		for {
			if _, err := os.Stdout.WriteString("tick\n"); err != nil {
				return 1
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	fmt.Fprintf(os.Stderr, "unknown %s %q\n", childEnv, mode)
	return 102
}

// echoNumber writes s (decimal digits) to stdout as a line and to stderr
// in letters, each with one write.
func echoNumber(s string) bool {
	if _, err := os.Stdout.WriteString(s + "\n"); err != nil {
		return false
	}
	_, err := os.Stderr.WriteString(letters(s) + ";")
	return err == nil
}

// letters writes the decimal digits of s as the letters a-j, so that the
// bytes of stderr and stdout, written into one file, can be told apart.
func letters(s string) string {
	return strings.Map(func(r rune) rune { return r - '0' + 'a' }, s)
}

// stream is n bytes of a deterministic pseudo-random stream.
func stream(seed uint64, n int64) io.Reader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return io.LimitReader(rand.NewChaCha8(s), n)
}

// streamSum is the sha256 of stream(seed, n).
func streamSum(t *testing.T, seed uint64, n int64) []byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, stream(seed, n)); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

// childCmd runs the test binary as a child in mode (see childEnv).
func childCmd(t *testing.T, mode string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("os.Executable: %v", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = testutil.ChildEnv(childEnv, mode)
	return cmd
}

// sh is /bin/sh -c script.
func sh(script string) *exec.Cmd { return exec.Command("/bin/sh", "-c", script) }

// mkfifo makes a fifo named name in dir, as containerd does for a task.
func mkfifo(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatalf("mkfifo %s: %v", p, err)
	}
	return p
}

// openIO opens c and closes the IO (bounded) when the test ends.
func openIO(t *testing.T, c Config, o Options) *IO {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	p, err := Open(ctx, c, o)
	if err != nil {
		t.Fatalf("Open(%+v): %v", c, err)
	}
	t.Cleanup(func() {
		if err := closeIO(p); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	// Without a terminal, as if the runtime's create had returned; a
	// terminal's StartOutput waits for the pty, which the test sends.
	if !c.Terminal {
		if err := p.StartOutput(); err != nil {
			t.Fatalf("StartOutput: %v", err)
		}
	}
	return p
}

// openIOPending is openIO without StartOutput: the runtime's create has
// not returned yet.
func openIOPending(t *testing.T, c Config, o Options) *IO {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	p, err := Open(ctx, c, o)
	if err != nil {
		t.Fatalf("Open(%+v): %v", c, err)
	}
	t.Cleanup(func() {
		if err := closeIO(p); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return p
}

// closeIO closes p, failing if Close does not return within bound. A Close
// that hangs is left behind (the test fails anyway).
func closeIO(p *IO) error {
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("Close: %w", err)
		}
		return nil
	case <-time.After(bound):
		return fmt.Errorf("Close did not return within %v", bound)
	}
}

// drainIO calls p.Drain(timeout) and fails if it does not return within
// timeout+bound.
func drainIO(t *testing.T, p *IO, timeout time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		p.Drain(timeout)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout + bound):
		t.Fatalf("Drain(%v) did not return within %v", timeout, timeout+bound)
	}
}

// container is a process started the way the runtime starts a container.
type container struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // of cmd.Wait; read after done is closed
}

// startContainer starts cmd with p's container-side ends, as go-runc does
// around `runc create`: p.Set(cmd), start, p.CloseAfterStart(). With a
// non-nil reaper the start and the Wait run under a Hold, so that the
// Reaper's sweep leaves the process to os/exec. The process is killed when
// the test ends if it is still running.
func startContainer(t *testing.T, p *IO, r *exits.Reaper, cmd *exec.Cmd) *container {
	t.Helper()
	release := func() {}
	if r != nil {
		release = r.Hold()
	}
	p.Set(cmd)
	if err := cmd.Start(); err != nil {
		release()
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	if err := p.CloseAfterStart(); err != nil {
		t.Errorf("CloseAfterStart: %v", err)
	}
	// As the container package does once the runtime's create returned
	// (with a terminal, startOnTerminal did it already).
	if p.console == nil {
		if err := p.StartOutput(); err != nil {
			t.Errorf("StartOutput: %v", err)
		}
	}
	c := &container{cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		release()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// waitFor waits up to d for the container to exit and returns its status
// (128+signal if a signal killed it).
func (c *container) waitFor(d time.Duration) (status int, exited bool) {
	select {
	case <-c.done:
	case <-time.After(d):
		return 0, false
	}
	if c.err == nil {
		return 0, true
	}
	var ee *exec.ExitError
	if !errors.As(c.err, &ee) {
		return -1, true
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal()), true
	}
	return ws.ExitStatus(), true
}

// wait waits (bounded) for the container to exit and returns its status.
func (c *container) wait(t *testing.T) int {
	t.Helper()
	status, ok := c.waitFor(bound)
	if !ok {
		t.Fatalf("%v did not exit within %v", c.cmd.Args, bound)
	}
	if status == -1 {
		t.Fatalf("wait %v: %v", c.cmd.Args, c.err)
	}
	return status
}

// reader is a client reading an output fifo to EOF.
type reader struct {
	path string
	f    *os.File
	w    io.Writer
	n    atomic.Int64
	done chan struct{}
	err  error // read error other than EOF; read after done is closed
}

// openReader opens the output fifo at path as the client does and copies it
// into w until EOF, chunk bytes per read, pausing after each read. The shim
// holds its output fifos open, so call it after Open: the open then does not
// block.
func openReader(t *testing.T, path string, w io.Writer, chunk int, pause time.Duration) *reader {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatalf("open %s for reading: %v", path, err)
	}
	r := &reader{path: path, f: f, w: w, done: make(chan struct{})}
	go r.run(chunk, pause)
	t.Cleanup(func() {
		f.Close()
		<-r.done
	})
	return r
}

func (r *reader) run(chunk int, pause time.Duration) {
	defer close(r.done)
	buf := make([]byte, chunk)
	for {
		n, err := r.f.Read(buf)
		if n > 0 {
			_, _ = r.w.Write(buf[:n])
			r.n.Add(int64(n))
		}
		if err != nil {
			if err != io.EOF {
				r.err = err
			}
			return
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
}

// wait waits (bounded) for the reader to see EOF.
func (r *reader) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(bound):
		t.Fatalf("no EOF on %s within %v (%d bytes read)", r.path, bound, r.n.Load())
	}
	if r.err != nil {
		t.Fatalf("read %s: %v", r.path, r.err)
	}
}

// lockedBuffer is a bytes buffer safe to read while a reader writes it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.buf = append(b.buf, p...)
	b.mu.Unlock()
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// newReaper makes the shim's exit monitor, the Monitor of logging
// binaries, closed when the test ends.
func newReaper(t *testing.T) *exits.Reaper {
	t.Helper()
	r, err := exits.New(nil, nil)
	if err != nil {
		t.Fatalf("exits.New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// children lists the pids whose parent is the test process, zombies
// included.
func children(t *testing.T) []int {
	t.Helper()
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may contain spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == self {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procState describes pid from /proc, or "" if it does not exist (exited
// and reaped).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// readPid reads the pid a script wrote into path.
func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %s: %q", path, b)
	}
	return pid
}

// killAndReap kills pid, a process left behind by a container and
// reparented to the test (a child subreaper), and reaps it.
func killAndReap(t *testing.T, pid int) {
	t.Helper()
	_ = unix.Kill(pid, unix.SIGKILL)
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil && err != unix.ECHILD {
			t.Errorf("wait4 %d: %v", pid, err)
		}
		return
	}
}
