package stdio

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/testutil"
)

// newPty makes a pty pair the way the runtime does: the master from
// /dev/ptmx, unlocked, and its slave opened by number.
func newPty(t *testing.T) (master int, slave *os.File) {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(m)
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetUint32(m, unix.TIOCGPTN)
	if err != nil {
		unix.Close(m)
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		unix.Close(m)
		t.Fatalf("open slave: %v", err)
	}
	return m, s
}

// sendConsole sends the master over the console socket, as `runc create
// --console-socket` does, and closes the test's copy of it.
func sendConsole(t *testing.T, path string, master int) {
	t.Helper()
	defer unix.Close(master)
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("connect to the console socket: %v", err)
	}
	defer conn.Close()
	if _, _, err := conn.WriteMsgUnix([]byte("/dev/ptmx"), unix.UnixRights(master), nil); err != nil {
		t.Fatalf("send the pty master: %v", err)
	}
}

// startOnTerminal emulates the runtime for a terminal: it makes a pty, sends
// the master to p's console socket, lets p receive it, and starts cmd as a
// session leader with the slave as its controlling terminal. before runs
// after ReceiveConsole, before cmd starts.
func startOnTerminal(t *testing.T, p *IO, cmd *exec.Cmd, before func()) *container {
	t.Helper()
	master, slave := newPty(t)
	defer slave.Close()
	sendConsole(t, p.ConsoleSocket().Path(), master)
	if err := p.ReceiveConsole(); err != nil {
		t.Fatalf("ReceiveConsole: %v", err)
	}
	if before != nil {
		before()
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	c := startContainer(t, p, nil, cmd)
	// Set leaves a terminal's process alone: it has the slave.
	if cmd.Stdin != slave || cmd.Stdout != slave || cmd.Stderr != slave {
		t.Error("Set changed the stdio of a process on a terminal")
	}
	return c
}

// TestTerminal: the client's stdin reaches the process on the pty, its
// output reaches the stdout fifo, and Resize sets the size it sees.
func TestTerminal(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout")
	consoleDir := t.TempDir()
	p := openIO(t, Config{Stdin: in, Stdout: out, Terminal: true}, Options{ConsoleDir: consoleDir})
	sock := p.ConsoleSocket()
	if sock == nil {
		t.Fatal("ConsoleSocket() is nil with a terminal")
	}
	if st, err := os.Stat(sock.Path()); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("console socket %s: %v, %v", sock.Path(), st, err)
	}
	if !strings.HasPrefix(sock.Path(), consoleDir+"/") {
		t.Errorf("console socket %s is not under ConsoleDir %s", sock.Path(), consoleDir)
	}
	if err := p.Resize(80, 24); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Resize before ReceiveConsole = %v, want FailedPrecondition", err)
	}
	var b lockedBuffer
	r := openReader(t, out, &b, 4096, 0)

	c := startOnTerminal(t, p, sh("read x; echo got-$x; stty size"), func() {
		if err := p.Resize(100, 40); err != nil {
			t.Errorf("Resize: %v", err)
		}
		// Refused, not cut to 16 bits (70000 would become 4464 columns):
		// the size stays 40x100.
		if err := p.Resize(70000, 40); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Resize(70000, 40) = %v, want InvalidArgument", err)
		}
	})
	w, err := os.OpenFile(in, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString("hello\n"); err != nil {
		t.Fatal(err)
	}
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, p, drainAll)
	r.wait(t)
	got := b.String()
	if !strings.Contains(got, "got-hello\r\n") || !strings.Contains(got, "40 100\r\n") {
		t.Errorf("stdout fifo got %q, want got-hello and 40 100", got)
	}
	if err := closeIO(p); err != nil {
		t.Error(err)
	}
	if ents, _ := os.ReadDir(consoleDir); len(ents) != 0 {
		t.Errorf("console socket left behind: %v", ents)
	}
}

// TestTerminalWithoutStdio: a terminal with no client endpoints still
// receives the pty and drains it.
func TestTerminalWithoutStdio(t *testing.T) {
	testutil.CheckLeaks(t)
	p := openIO(t, Config{Terminal: true}, Options{ConsoleDir: t.TempDir()})
	c := startOnTerminal(t, p, sh("echo discarded"), nil)
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, p, drainAll)
}

func TestResizeWithoutTerminal(t *testing.T) {
	testutil.CheckLeaks(t)
	out := mkfifo(t, t.TempDir(), "stdout")
	p := openIO(t, Config{Stdout: out}, Options{})
	if err := p.Resize(100, 40); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("Resize without a terminal = %v, want FailedPrecondition", err)
	}
	for _, size := range [][2]uint32{{65536, 24}, {80, 1 << 20}} {
		if err := p.Resize(size[0], size[1]); !errdefs.IsInvalidArgument(err) {
			t.Errorf("Resize(%d, %d) = %v, want InvalidArgument", size[0], size[1], err)
		}
	}
	if err := p.ReceiveConsole(); err != nil {
		t.Errorf("ReceiveConsole without a terminal = %v, want nil", err)
	}
}

// TestReceiveConsoleWithoutRuntime: nobody connects to the console socket;
// ReceiveConsole gives up after its bounded wait (10 s).
func TestReceiveConsoleWithoutRuntime(t *testing.T) {
	testutil.CheckLeaks(t)
	consoleDir := t.TempDir()
	p := openIO(t, Config{Terminal: true}, Options{ConsoleDir: consoleDir})
	done := make(chan error, 1)
	go func() { done <- p.ReceiveConsole() }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("ReceiveConsole succeeded without a runtime")
		}
	case <-time.After(receiveTimeout + bound):
		t.Fatalf("ReceiveConsole did not return within %v", receiveTimeout+bound)
	}
	if err := closeIO(p); err != nil {
		t.Error(err)
	}
	if ents, _ := os.ReadDir(consoleDir); len(ents) != 0 {
		t.Errorf("console socket left behind: %v", ents)
	}
}

// TestRegressionTerminalFifoSchemeStdout: Validate accepts fifo:///path for
// stdout, and without a terminal Open uses the path; with a terminal Open
// used to pass the raw URI to openOutputFifo, which stat'ed "fifo:///..."
// and failed with NotFound.
func TestRegressionTerminalFifoSchemeStdout(t *testing.T) {
	testutil.CheckLeaks(t)
	out := mkfifo(t, t.TempDir(), "stdout")
	c := Config{Stdout: "fifo://" + out, Terminal: true}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	p, err := Open(t.Context(), c, Options{ConsoleDir: t.TempDir()})
	if err != nil {
		t.Fatalf("Open(%+v): %v", c, err)
	}
	if err := closeIO(p); err != nil {
		t.Error(err)
	}
}

// TestRegressionTerminalStdinEOF: the client closes stdin of a process on a
// terminal (`echo data | ctr run -t`, or CloseIO). The pty must get ^D
// (VEOF) at EOF, as copyIn's comment says; copyInConsole used to write
// nothing, and the process never saw EOF.
func TestRegressionTerminalStdinEOF(t *testing.T) {
	for _, how := range []string{"client closes stdin", "CloseStdin"} {
		t.Run(how, func(t *testing.T) {
			testutil.CheckLeaks(t)
			dir := t.TempDir()
			in, out := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout")
			p := openIO(t, Config{Stdin: in, Stdout: out, Terminal: true}, Options{ConsoleDir: t.TempDir()})
			var b lockedBuffer
			r := openReader(t, out, &b, 4096, 0)
			c := startOnTerminal(t, p, exec.Command("cat"), nil)
			w, err := os.OpenFile(in, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err := w.WriteString("hello\n"); err != nil {
				t.Fatal(err)
			}
			// Wait until cat has the line (echo, then cat's copy), so the
			// next thing on the terminal is the end of input.
			deadline := time.Now().Add(bound)
			for strings.Count(b.String(), "hello") < 2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if strings.Count(b.String(), "hello") < 2 {
				t.Fatalf("cat did not echo the line: %q", b.String())
			}
			if how == "CloseStdin" {
				p.CloseStdin()
			} else {
				w.Close()
			}
			const d = 10 * time.Second
			status, exited := c.waitFor(d)
			if !exited {
				t.Errorf("cat on the terminal still reads %v after stdin reached EOF (%s): no ^D was sent to the pty", d, how)
				return
			}
			if status != 0 {
				t.Errorf("cat exit status %d", status)
			}
			drainIO(t, p, drainAll)
			r.wait(t)
		})
	}
}

// TestConsoleSocketsDistinct: each terminal gets its own console socket in
// its own directory under ConsoleDir.
func TestConsoleSocketsDistinct(t *testing.T) {
	testutil.CheckLeaks(t)
	consoleDir := t.TempDir()
	p := openIO(t, Config{Terminal: true}, Options{ConsoleDir: consoleDir})
	q := openIO(t, Config{Terminal: true}, Options{ConsoleDir: consoleDir})
	if p.ConsoleSocket().Path() == q.ConsoleSocket().Path() {
		t.Errorf("two terminals share the console socket %s", p.ConsoleSocket().Path())
	}
	for _, x := range []*IO{p, q} {
		if filepath.Dir(filepath.Dir(x.ConsoleSocket().Path())) != consoleDir {
			t.Errorf("console socket %s is not in its own directory under %s", x.ConsoleSocket().Path(), consoleDir)
		}
	}
}

// TestTerminalDrainDeadline: a process left behind holds the pty slave after
// the process on the terminal exited; Drain returns after its deadline and
// the client sees what was written, then EOF.
func TestTerminalDrainDeadline(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	out := mkfifo(t, dir, "stdout")
	pidFile := filepath.Join(dir, "pid")
	p := openIO(t, Config{Stdout: out, Terminal: true}, Options{ConsoleDir: t.TempDir()})
	var b lockedBuffer
	r := openReader(t, out, &b, 4096, 0)
	// The grandchild ignores the SIGHUP the session leader's exit sends to
	// the terminal's foreground process group.
	c := startOnTerminal(t, p, sh("trap '' HUP; sleep 1000 & echo $! > "+pidFile+"; echo hi"), nil)
	if status := c.wait(t); status != 0 {
		t.Fatalf("exit status %d", status)
	}
	grandchild := readPid(t, pidFile)
	t.Cleanup(func() { killAndReap(t, grandchild) })

	drainIO(t, p, 500*time.Millisecond)
	r.wait(t)
	if !strings.Contains(b.String(), "hi\r\n") {
		t.Errorf("stdout fifo got %q, want hi", b.String())
	}
	if procState(grandchild) == "" {
		t.Errorf("the grandchild %d is gone: the test did not hold the pty open", grandchild)
	}
}

// TestRegressionTerminalStdinEOFAfterPartialLine: copyInConsole types one ^D
// at the client's stdin EOF "so that a process reading the terminal sees end
// of file". In canonical mode a ^D after a partial line only pushes that
// line to the reader (read returns "abc"); a second ^D is the end of file.
// Input that does not end in a newline (`printf abc | ctr run -t ... cat`)
// leaves the process reading forever.
func TestRegressionTerminalStdinEOFAfterPartialLine(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdin: in, Stdout: out, Terminal: true}, Options{ConsoleDir: t.TempDir()})
	var b lockedBuffer
	r := openReader(t, out, &b, 4096, 0)
	c := startOnTerminal(t, p, exec.Command("cat"), nil)
	w, err := os.OpenFile(in, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteString("abc"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	const d = 10 * time.Second
	status, exited := c.waitFor(d)
	if !exited {
		t.Errorf("cat on the terminal still reads %v after stdin without a final newline reached EOF (output %q): one ^D only ended the line", d, b.String())
		return
	}
	if status != 0 {
		t.Errorf("cat exit status %d", status)
	}
	drainIO(t, p, drainAll)
	r.wait(t)
}

// TestRegressionTerminalExitBeforeReceiveConsole: a quick `exec -t` can
// exit, and its exit watcher call Drain, before the runtime call returned
// and ReceiveConsole started the pty copy. Drain used to find no copy to
// wait for and return at once, so TaskExit went out before the output was
// copied (and WaitGroup.Add could race with Wait). Open now counts the pty
// copy, so Drain waits for it.
func TestRegressionTerminalExitBeforeReceiveConsole(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	out := mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdout: out, Terminal: true}, Options{ConsoleDir: t.TempDir()})
	var b lockedBuffer
	r := openReader(t, out, &b, 4096, 0)

	// The process wrote and exited before the master reached the shim.
	master, slave := newPty(t)
	if _, err := slave.WriteString("early output\n"); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var got string
	drained := make(chan struct{})
	go func() {
		p.Drain(drainAll)
		got = b.String()
		close(drained)
	}()
	// Let Drain run first, as the exit watcher does in the race.
	time.Sleep(50 * time.Millisecond)
	sendConsole(t, p.ConsoleSocket().Path(), master)
	if err := p.ReceiveConsole(); err != nil {
		t.Fatalf("ReceiveConsole: %v", err)
	}
	select {
	case <-drained:
	case <-time.After(2 * drainAll):
		t.Fatal("Drain did not return")
	}
	if !strings.Contains(got, "early output") {
		t.Fatalf("the client had %q when Drain returned, want the process's output", got)
	}
	r.wait(t)
}

// TestRegressionConsoleMasterRace: the pty master was stored by the
// create's ReceiveConsole and read by ResizePty, the exit watcher's Drain and
// Close on other goroutines without a lock (a data race under -race). And
// a master that came after Close was kept open.
func TestRegressionConsoleMasterRace(t *testing.T) {
	testutil.CheckLeaks(t)
	p := openIO(t, Config{Terminal: true}, Options{ConsoleDir: t.TempDir()})
	stop := make(chan struct{})
	resized := make(chan error, 1)
	go func() {
		var last error
		for {
			select {
			case <-stop:
				resized <- last
				return
			default:
			}
			last = p.Resize(80, 25)
			if last != nil && !errdefs.IsFailedPrecondition(last) {
				resized <- last
				return
			}
		}
	}()
	master, slave := newPty(t)
	defer slave.Close()
	sendConsole(t, p.ConsoleSocket().Path(), master)
	if err := p.ReceiveConsole(); err != nil {
		t.Fatalf("ReceiveConsole: %v", err)
	}
	// Resizes race with the master's arrival, then succeed.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := p.Resize(100, 30); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("Resize after ReceiveConsole: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	go p.Drain(10 * time.Millisecond)
	p.Close()
	close(stop)
	if err := <-resized; err != nil && !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("a concurrent Resize failed with %v", err)
	}

	// A master that comes after Close is refused and closed.
	q := openIO(t, Config{Terminal: true}, Options{ConsoleDir: t.TempDir()})
	sock := q.ConsoleSocket().Path()
	master2, slave2 := newPty(t)
	defer slave2.Close()
	q.console.mu.Lock()
	q.console.closed = true // as if Close ran while the runtime was sending
	q.console.mu.Unlock()
	sendConsole(t, sock, master2)
	if err := q.ReceiveConsole(); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("ReceiveConsole after Close = %v, want FailedPrecondition", err)
	}
	if q.console.pty() != nil {
		t.Fatal("a master that came after Close was kept")
	}
	q.Close()
}
