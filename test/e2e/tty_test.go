package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ctr run -t drives a shell in the container through a terminal: typed input
// is echoed, stty size shows the outer terminal's size and follows a resize,
// and exit 7 is ctr's exit status.
func TestTTYRun(t *testing.T) {
	forEachVersion(t, "ttyrun", func(t *testing.T, d *daemon, ns string) {
		interactiveShell(t, d, ns, "run", "-t", "--rm", "--runtime", runtimeName, "--rootfs", rootfsDir, "tty1", "/bin/sh")
		if out := d.mustCtr(t, ns, "container", "ls", "-q"); strings.TrimSpace(out) != "" {
			t.Errorf("containers left after run -t --rm: %q", out)
		}
	})
}

// ctr task exec -t does the same for a shell exec'd into a running container.
func TestTTYExec(t *testing.T) {
	forEachVersion(t, "ttyexec", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "c1")
		interactiveShell(t, d, ns, "task", "exec", "-t", "--exec-id", "sh1", "c1", "/bin/sh")
		// ctr deleted the exec; the container runs on.
		d.waitStatus(t, ns, "c1", "RUNNING")
		r := d.ctr(t, ns, "task", "exec", "--exec-id", "after", "c1", "/bin/echo", "still-here")
		if r.code != 0 || r.stdout != "still-here\n" {
			t.Errorf("an exec after the terminal exec: %s; want exit 0 and %q", r, "still-here\n")
		}
	})
}

// interactiveShell runs ctr args (which start /bin/sh with -t) on a pty of
// 33x97 and checks echo, stty size before and after a resize to 41x123, and
// that exit 7 makes ctr exit 7.
func interactiveShell(t *testing.T, d *daemon, ns string, args ...string) {
	t.Helper()
	p := startOnPty(t, d, ns, 33, 97, args...)
	p.waitOutput(t, 60*time.Second, "the shell's prompt", 0, func(s string) bool {
		return strings.Contains(s, "# ")
	})
	// ctr puts its terminal in raw mode before it starts the process, so the
	// outer terminal echoes nothing: any echo comes from the container's.
	if tio, err := p.termios(); err != nil {
		t.Fatalf("TCGETS on the pty: %v", err)
	} else if tio.Lflag&unix.ECHO != 0 {
		t.Fatalf("ctr left ECHO on on its terminal (lflag %#x); the echo check would be meaningless", tio.Lflag)
	}

	mark := p.mark()
	p.send(t, "echo typed-$((6*7))\r")
	p.waitOutput(t, 30*time.Second, "the typed command echoed back and run", mark, func(s string) bool {
		return strings.Contains(s, "echo typed-$((6*7))") && hasLine(s, "typed-42")
	})

	mark = p.mark()
	p.send(t, "stty size\r")
	p.waitOutput(t, 30*time.Second, "stty size to show the outer terminal's size 33 97", mark, func(s string) bool {
		return hasLine(s, "33 97")
	})

	// A resize of the outer terminal: ctr gets SIGWINCH and forwards it. That
	// is asynchronous, so ask again until the new size shows (bounded).
	p.setSize(t, 41, 123)
	mark = p.mark()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p.send(t, "stty size\r")
		time.Sleep(time.Second)
		if hasLine(p.since(mark), "41 123") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a resize of the outer terminal to 41x123, stty size still does not show it after 30s; output since the resize:\n%q", p.since(mark))
		}
	}

	p.send(t, "exit 7\r")
	code := p.wait(t, 60*time.Second)
	if code != 7 {
		t.Errorf("ctr %s exited %d after exit 7 in the shell, want 7; terminal output:\n%q", strings.Join(args, " "), code, p.since(0))
	}
}

// ptyCmd is a ctr process whose stdin, stdout and stderr are the slave of a
// pseudo-terminal (its controlling terminal); the test holds the master.
type ptyCmd struct {
	master *os.File
	cmd    *exec.Cmd
	exited chan struct{}
	code   int

	mu  sync.Mutex
	out bytes.Buffer
}

// openPty opens a new pseudo-terminal: the master (non-blocking, so that
// closing it ends a pending read) and its slave.
func openPty() (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlockpt: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("ptsname: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(uintptr(sfd), name), nil
}

// startOnPty starts ctr args in ns on a new pty of rows x cols, as its
// session leader with the pty as controlling terminal. It is killed in cleanup.
func startOnPty(t *testing.T, d *daemon, ns string, rows, cols uint16, args ...string) *ptyCmd {
	t.Helper()
	full := append([]string{"--address", d.Sock, "--namespace", ns}, args...)
	return startBinOnPty(t, rows, cols, d.v.ctr, full, "ctr "+strings.Join(args, " "))
}

// startBinOnPty starts bin with args on a new pty of rows x cols, as its
// session leader with the pty as controlling terminal; show names it in
// messages. It is killed in cleanup.
func startBinOnPty(t *testing.T, rows, cols uint16, bin string, full []string, show string) *ptyCmd {
	t.Helper()
	master, slave, err := openPty()
	if err != nil {
		t.Fatal(err)
	}
	p := &ptyCmd{master: master, exited: make(chan struct{}), code: -1}
	p.setSize(t, rows, cols)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		master.Close()
		slave.Close()
		t.Fatalf("start %s: %v", show, err)
	}
	slave.Close() // ctr holds the only copy: the master reads EIO once it exits
	p.cmd = cmd
	t.Logf("%s: pid %d on a %dx%d pty", show, cmd.Process.Pid, rows, cols)

	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			if n > 0 {
				p.mu.Lock()
				p.out.Write(buf[:n])
				p.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		if cmd.ProcessState != nil {
			p.code = cmd.ProcessState.ExitCode()
		}
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			t.Logf("cleanup: killing %d", cmd.Process.Pid)
			_ = cmd.Process.Kill()
			<-p.exited
		}
		cancel()
		master.Close()
		select {
		case <-readDone:
		case <-time.After(10 * time.Second):
			t.Errorf("the pty reader did not end within 10s of closing the master")
		}
		t.Logf("terminal output of %s:\n%q", show, p.since(0))
	})
	return p
}

func (p *ptyCmd) control(f func(fd int) error) error {
	rc, err := p.master.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// setSize sets the window size of the pty (TIOCSWINSZ on the master), which
// sends SIGWINCH to the foreground process group: ctr.
func (p *ptyCmd) setSize(t *testing.T, rows, cols uint16) {
	t.Helper()
	if err := p.control(func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		t.Fatalf("TIOCSWINSZ %dx%d: %v", rows, cols, err)
	}
}

// termios returns the settings of the slave (TCGETS on a master reads the slave's).
func (p *ptyCmd) termios() (*unix.Termios, error) {
	var tio *unix.Termios
	err := p.control(func(fd int) error {
		var err error
		tio, err = unix.IoctlGetTermios(fd, unix.TCGETS)
		return err
	})
	return tio, err
}

// send types s on the terminal.
func (p *ptyCmd) send(t *testing.T, s string) {
	t.Helper()
	if _, err := p.master.Write([]byte(s)); err != nil {
		t.Fatalf("typing %q: %v", s, err)
	}
}

// ansiRE matches terminal control sequences: CSI, OSC and two-byte escapes.
var ansiRE = regexp.MustCompile("\x1b\\[[0-9;?]*[ -/]*[@-~]|\x1b\\][^\x07\x1b]*(\x07|\x1b\\\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78DEHMc]")

// clean removes control sequences and carriage returns.
func clean(s string) string {
	return strings.ReplaceAll(ansiRE.ReplaceAllString(s, ""), "\r", "")
}

// mark is the current length of the cleaned output, for since.
func (p *ptyCmd) mark() int { return len(p.since(0)) }

// since returns the cleaned output from offset mark on.
func (p *ptyCmd) since(mark int) string {
	p.mu.Lock()
	s := clean(p.out.String())
	p.mu.Unlock()
	if mark > len(s) {
		return ""
	}
	return s[mark:]
}

// waitOutput waits until cond holds for the cleaned output after mark.
func (p *ptyCmd) waitOutput(t *testing.T, timeout time.Duration, what string, mark int, cond func(string) bool) {
	t.Helper()
	waitFor(t, timeout, what, func() (bool, string) {
		s := p.since(mark)
		if cond(s) {
			return true, ""
		}
		select {
		case <-p.exited:
			return false, fmt.Sprintf("ctr exited %d; terminal output: %q", p.code, s)
		default:
		}
		return false, fmt.Sprintf("terminal output: %q", s)
	})
}

// wait waits for ctr to exit and returns its exit code.
func (p *ptyCmd) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("ctr did not exit within %v; terminal output:\n%q", timeout, p.since(0))
		return -1
	}
}

// hasLine tells whether a line of s, without surrounding blanks, is want.
func hasLine(s, want string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}
