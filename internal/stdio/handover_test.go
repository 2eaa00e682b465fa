package stdio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/handover"
	"github.com/tether-shim/tether/internal/testutil"
)

// roundTrip passes h through JSON as the state document does: encoded,
// then decoded refusing unknown fields. The result must equal h.
func roundTrip(t *testing.T, h Handed) Handed {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatalf("encode %+v: %v", h, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var got Handed
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("through JSON %s: %+v, want %+v", b, got, h)
	}
	return got
}

// handOverIO does to p what a live upgrade does, in one process: Pause,
// HandOver into a fresh handover.Files, the description through JSON, and
// Adopt from the duplicates; then it abandons p, as execve would. The
// adopted IO is closed when the test ends.
func handOverIO(t *testing.T, p *IO, opts Options) *IO {
	t.Helper()
	q, _ := handOverDesc(t, p, opts)
	return q
}

// handOverDesc is handOverIO that also returns the description.
func handOverDesc(t *testing.T, p *IO, opts Options) (*IO, Handed) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	return handOverPaused(t, p, opts)
}

// handOverPaused is handOverDesc of an IO already paused.
func handOverPaused(t *testing.T, p *IO, opts Options) (*IO, Handed) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	var files handover.Files
	h, err := p.HandOver(&files)
	if err != nil {
		files.Close()
		p.Unpause()
		t.Fatalf("HandOver: %v", err)
	}
	h = roundTrip(t, h)
	q, err := Adopt(ctx, h, opts)
	if err != nil {
		// Adopt closed what it took; the rest stays open (a failed test).
		p.Unpause()
		t.Fatalf("Adopt(%+v): %v", h, err)
	}
	p.abandon()
	t.Cleanup(func() {
		if err := closeIO(q); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return q, h
}

// seqText is the numbers 1..n, each written by conv and followed by sep.
func seqText(n int, sep string, conv func(string) string) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		b.WriteString(conv(strconv.Itoa(i)))
		b.WriteString(sep)
	}
	return b.String()
}

func same(s string) string { return s }

// checkSeq fails unless got is want, and says where they part.
func checkSeq(t *testing.T, what, got, want string) {
	t.Helper()
	if got == want {
		return
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(i-20, 0)
	t.Errorf("%s: %d bytes, want %d; they part at byte %d: got %q, want %q", what, len(got), len(want), i,
		got[from:min(i+20, len(got))], want[from:min(i+20, len(want))])
}

// waitUntil waits (bounded) until cond holds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(time.Millisecond)
	}
}

// lines counts the lines in b.
func lines(b *lockedBuffer) int { return strings.Count(b.String(), "\n") }

// feeder is a client writing the lines 1..n into a stdin fifo, which it
// closes at the end.
type feeder struct {
	f      *os.File
	stops  map[int]chan struct{}
	order  []int
	mu     sync.Mutex
	passed int
	// at receives each stop as the feeder reaches it.
	at   chan int
	done chan struct{}
	err  error // read after done is closed
}

// feed starts writing 1..n into the stdin fifo at path, one line per
// write; before each number in stops it waits for next.
func feed(t *testing.T, path string, n int, stops ...int) *feeder {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open %s for writing: %v", path, err)
	}
	fd := &feeder{f: f, stops: map[int]chan struct{}{}, order: stops, at: make(chan int, len(stops)), done: make(chan struct{})}
	for _, s := range stops {
		fd.stops[s] = make(chan struct{})
	}
	go func() {
		defer close(fd.done)
		defer f.Close()
		for i := 1; i <= n; i++ {
			if ch, ok := fd.stops[i]; ok {
				fd.at <- i
				<-ch
			}
			if _, err := f.WriteString(strconv.Itoa(i) + "\n"); err != nil {
				fd.err = err
				return
			}
		}
	}()
	t.Cleanup(func() {
		for fd.next() {
		}
		_ = f.SetWriteDeadline(time.Now())
		<-fd.done
	})
	return fd
}

// next lets the feeder go past its next stop; false if there is none.
func (fd *feeder) next() bool {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if fd.passed >= len(fd.order) {
		return false
	}
	close(fd.stops[fd.order[fd.passed]])
	fd.passed++
	return true
}

// reached waits (bounded) until the feeder has written everything before
// its stop k.
func (fd *feeder) reached(t *testing.T, k int) {
	t.Helper()
	for {
		select {
		case i := <-fd.at:
			if i == k {
				return
			}
		case <-time.After(bound):
			t.Fatalf("the stdin feeder did not reach %d within %v", k, bound)
		}
	}
}

// wait waits (bounded) until the feeder wrote everything and closed the fifo.
func (fd *feeder) wait(t *testing.T) {
	t.Helper()
	select {
	case <-fd.done:
	case <-time.After(bound):
		t.Fatalf("the stdin feeder did not finish within %v", bound)
	}
	if fd.err != nil {
		t.Fatalf("feed stdin: %v", fd.err)
	}
}

// stageOf is the stage of p's copy ro.
func stageOf(p *IO, ro role) stage {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stage[ro]
}

// echoRun is a process that echoes a client's numbered lines from its
// stdin fifo to its stdout and stderr fifos, which the client reads.
type echoRun struct {
	n      int
	f      *feeder
	c      *container
	bo, be lockedBuffer
	ro, re *reader
}

// startEcho starts reading the fifos out and errp, runs the echo process
// on p and feeds it 1..n through the fifo in, waiting at stops (see feed).
func startEcho(t *testing.T, p *IO, in, out, errp string, n int, stops ...int) *echoRun {
	t.Helper()
	e := &echoRun{n: n}
	e.ro = openReader(t, out, &e.bo, 4096, 0)
	e.re = openReader(t, errp, &e.be, 4096, 0)
	e.c = startContainer(t, p, nil, childCmd(t, "echo"))
	e.f = feed(t, in, n, stops...)
	return e
}

// finish waits for the client's last line and the process's exit, drains
// p (the IO that has the copies by then), and checks that both fifos got
// every number once, in order.
func (e *echoRun) finish(t *testing.T, p *IO) {
	t.Helper()
	e.f.wait(t)
	if status := e.c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, p, drainAll)
	e.ro.wait(t)
	e.re.wait(t)
	checkSeq(t, "stdout", e.bo.String(), seqText(e.n, "\n", same))
	checkSeq(t, "stderr", e.be.String(), seqText(e.n, ";", letters))
}

// TestHandOverFifo: stdin, stdout and stderr fifos, handed over twice
// (an adopted IO hands over again) while a client writes a numbered
// sequence into stdin, which the process echoes to stdout and stderr:
// both fifos get every number exactly once, in order, and the counters
// carry over.
func TestHandOverFifo(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out, errp := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout"), mkfifo(t, dir, "stderr")
	const n = 6000
	p := openIO(t, Config{Stdin: in, Stdout: out, Stderr: errp}, Options{})
	e := startEcho(t, p, in, out, errp, n, n/3, 2*n/3)

	// The first third is on its way (in the fifo, the pipes, the
	// process) while it is handed over.
	waitUntil(t, "first line out", func() bool { return lines(&e.bo) > 0 })
	q, h := handOverDesc(t, p, Options{})
	if h.StdinFifo == 0 || h.StdinPipe == 0 || h.StdoutPipe == 0 || h.StderrPipe == 0 || h.StdoutFifo == 0 || h.StderrFifo == 0 {
		t.Errorf("a descriptor is missing: %+v", h)
	}
	if h.ContainerStdin != 0 || h.ContainerStdout != 0 || h.ContainerStderr != 0 {
		t.Errorf("container-side ends handed over after CloseAfterStart: %+v", h)
	}
	if h.Copies != (HandedCopies{Out: "reading", Err: "reading", In: "reading"}) {
		t.Errorf("copies %+v, want all reading", h.Copies)
	}
	// The second third, written while the adopted IO is paused, stays in
	// the stdin fifo for the next one.
	e.f.reached(t, n/3)
	waitUntil(t, "the first third out", func() bool { return lines(&e.bo) == n/3-1 })
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := q.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	e.f.next()
	e.f.reached(t, 2*n/3)
	want := len(seqText(2*n/3-1, "\n", same)) - len(seqText(n/3-1, "\n", same))
	if got := fionread(t, q.stdinFifo.f); got != want {
		t.Errorf("%d bytes in the stdin fifo after a paused IO's client wrote %d", got, want)
	}
	r, _ := handOverPaused(t, q, Options{})
	e.f.next()
	e.finish(t, r)
	total := uint64(len(e.bo.String()) + len(e.be.String()))
	if got := r.Stats().OutBytes; got < total {
		t.Errorf("OutBytes %d after two hand-overs, want at least the %d bytes delivered", got, total)
	}
}

// TestHandOverFile: file:// (one file, two copies) handed over while the
// process writes: the file gets both sequences, each exactly once and in
// order (stdout in digits, stderr in letters, so that they can be told
// apart byte by byte).
func TestHandOverFile(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in := mkfifo(t, dir, "stdin")
	log := filepath.Join(dir, "logs", "c.log")
	const n = 6000
	p := openIO(t, Config{Stdin: in, Stdout: "file://" + log, Stderr: "file://" + log}, Options{})
	c := startContainer(t, p, nil, childCmd(t, "echo"))
	f := feed(t, in, n, n/2)
	waitUntil(t, "first line in the file", func() bool {
		b, _ := os.ReadFile(log)
		return bytes.IndexByte(b, '\n') >= 0
	})
	q, h := handOverDesc(t, p, Options{})
	if h.File == 0 || h.StdoutFifo != 0 || h.StderrFifo != 0 {
		t.Errorf("descriptors %+v, want the file and no fifo", h)
	}
	f.next()
	f.wait(t)
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, q, drainAll)
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var outB, errB strings.Builder
	for _, ch := range string(b) {
		if ch == '\n' || ch >= '0' && ch <= '9' {
			outB.WriteRune(ch)
		} else {
			errB.WriteRune(ch)
		}
	}
	checkSeq(t, "stdout in the file", outB.String(), seqText(n, "\n", same))
	checkSeq(t, "stderr in the file", errB.String(), seqText(n, ";", letters))
}

// relayMonitor is the exit monitor of the IOs of a test that hands over
// within one process. A Reaper watches a pid once, and handing the Reaper
// itself over (its pidfds, which the new image's Watch takes up) is package
// exits' part; so a second Watch of a pid through the relay takes the
// first one's place, as the new image's Watch of an adopted pid does.
type relayMonitor struct {
	r      *exits.Reaper
	mu     sync.Mutex
	onExit map[int]func(exits.Exit)
}

func newRelay(t *testing.T) *relayMonitor {
	return &relayMonitor{r: newReaper(t), onExit: map[int]func(exits.Exit){}}
}

func (m *relayMonitor) Hold() func() { return m.r.Hold() }

func (m *relayMonitor) Signal(pid int, sig syscall.Signal) error { return m.r.Signal(pid, sig) }

func (m *relayMonitor) Watch(pid int, onExit func(exits.Exit)) error {
	m.mu.Lock()
	_, again := m.onExit[pid]
	m.onExit[pid] = onExit
	m.mu.Unlock()
	if again {
		return nil
	}
	return m.r.Watch(pid, func(e exits.Exit) {
		m.mu.Lock()
		f := m.onExit[pid]
		m.mu.Unlock()
		f(e)
	})
}

// watched reports whether pid was watched through the relay.
func (m *relayMonitor) watched(pid int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.onExit[pid]
	return ok
}

// TestHandOverBinary: a logging binary is handed over by its pid, once
// before the container started (with the container's ends of its pipes)
// and once while the container writes: the old IO lets go of it without
// stopping it, the logger gets both streams whole, and the adopted IO's
// Close sees it exit (at EOF) through the watch Adopt set up: nothing is
// left.
func TestHandOverBinary(t *testing.T) {
	testutil.CheckLeaks(t)
	m := newRelay(t)
	logger, rec := writeLogger(t, recorder)
	uri := "binary://" + logger
	in := mkfifo(t, t.TempDir(), "stdin")
	p := openIOPending(t, Config{Stdin: in, Stdout: uri, Stderr: uri}, Options{Monitor: m})
	pid := readPid(t, filepath.Join(rec, "pid"))

	q, h := handOverDesc(t, p, Options{Monitor: m})
	if h.LoggerPid != pid {
		t.Errorf("LoggerPid %d, want %d", h.LoggerPid, pid)
	}
	if h.ContainerStdin == 0 || h.ContainerStdout == 0 || h.ContainerStderr == 0 {
		t.Errorf("the container's ends of the pipes not handed over before start: %+v", h)
	}
	if st := procState(pid); st == "" {
		t.Fatalf("the logging binary is gone after the old IO let go of it")
	}
	const n = 6000
	c := startContainer(t, q, m.r, childCmd(t, "echo"))
	f := feed(t, in, n, n/2)
	waitUntil(t, "the logger got half", func() bool {
		b, _ := os.ReadFile(filepath.Join(rec, "stdout"))
		return bytes.Count(b, []byte("\n")) >= n/2-1
	})
	r := handOverIO(t, q, Options{Monitor: m})
	if st := procState(pid); st == "" {
		t.Fatalf("the logging binary is gone after the second hand-over")
	}
	f.next()
	f.wait(t)
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	if err := closeIO(r); err != nil {
		t.Errorf("Close of the adopted IO: %v", err)
	}
	if st := procState(pid); st != "" {
		t.Errorf("the logging binary is still there after the adopted IO's Close: %s", st)
	}
	noChildren(t)
	checkSeq(t, "logger fd 3", readFile(t, filepath.Join(rec, "stdout")), seqText(n, "\n", same))
	checkSeq(t, "logger fd 4", readFile(t, filepath.Join(rec, "stderr")), seqText(n, ";", letters))
}

// TestHandOverBinaryStop: an adopted IO stops a logging binary that ignores
// EOF (SIGTERM, through the monitor Adopt watched it with).
func TestHandOverBinaryStop(t *testing.T) {
	testutil.CheckLeaks(t)
	m := newRelay(t)
	logger, rec := writeLogger(t, ignoresEOF)
	p := openIO(t, Config{Stdout: "binary://" + logger}, Options{Monitor: m})
	pid := readPid(t, filepath.Join(rec, "pid"))
	q := handOverIO(t, p, Options{Monitor: m})
	if !m.watched(pid) {
		t.Errorf("Adopt did not watch the logging binary %d", pid)
	}
	if err := closeIO(q); err != nil {
		t.Errorf("Close: %v", err)
	}
	if st := procState(pid); st != "" {
		t.Errorf("the logging binary is still there after Close: %s", st)
	}
	noChildren(t)
}

// winsize reads the terminal size of p's pty.
func winsize(t *testing.T, p *IO) (cols, rows uint16) {
	t.Helper()
	rc, err := p.console.pty().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ws *unix.Winsize
	var werr error
	if err := rc.Control(func(fd uintptr) { ws, werr = unix.IoctlGetWinsize(int(fd), unix.TIOCGWINSZ) }); err != nil || werr != nil {
		t.Fatalf("TIOCGWINSZ: %v, %v", err, werr)
	}
	return ws.Col, ws.Row
}

// ptyCat runs cat on the terminal, without echo, after printing "ready".
const ptyCat = "stty -echo; echo ready; exec cat"

// TestHandOverTerminal: a terminal (the pty master, the output fifo, the
// stdin copy into the master) handed over twice while a client types a
// numbered sequence that the process echoes: the output fifo gets every
// number once, in order; Resize works on the adopted IO; the client's EOF
// reaches the process as ^D.
func TestHandOverTerminal(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdin: in, Stdout: out, Terminal: true}, Options{ConsoleDir: t.TempDir()})
	var b lockedBuffer
	rd := openReader(t, out, &b, 4096, 0)
	c := startOnTerminal(t, p, sh(ptyCat), nil)
	waitUntil(t, "ready", func() bool { return strings.Contains(b.String(), "ready\r\n") })
	const n = 600
	f := feed(t, in, n, n/3, 2*n/3)
	waitUntil(t, "first line out", func() bool { return lines(&b) > 1 })
	q, h := handOverDesc(t, p, Options{})
	if h.Console == nil || h.Console.Master == 0 || h.Console.Listener != 0 || h.StdoutFifo == 0 || h.StdinFifo == 0 {
		t.Errorf("descriptors %+v (console %+v), want the master, the output fifo and stdin", h, h.Console)
	}
	f.next()
	waitUntil(t, "a third out", func() bool { return lines(&b) > n/3 })
	r := handOverIO(t, q, Options{})
	if err := r.Resize(123, 45); err != nil {
		t.Errorf("Resize of the adopted IO: %v", err)
	}
	if cols, rows := winsize(t, r); cols != 123 || rows != 45 {
		t.Errorf("terminal size %dx%d after Resize(123, 45)", cols, rows)
	}
	f.next()
	f.wait(t)
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, r, drainAll)
	rd.wait(t)
	checkSeq(t, "terminal output", b.String(), "ready\r\n"+seqText(n, "\r\n", same))
}

// TestHandOverPending: an exec created but not started (its copies
// pending, the container-side ends still open in the shim) is handed over;
// the adopted IO then starts the process and delivers all of its output.
func TestHandOverPending(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out, errp := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout"), mkfifo(t, dir, "stderr")
	p := openIOPending(t, Config{Stdin: in, Stdout: out, Stderr: errp}, Options{})
	q, h := handOverDesc(t, p, Options{})
	if h.Copies != (HandedCopies{Out: "pending", Err: "pending", In: "reading"}) {
		t.Errorf("copies %+v, want the outputs pending", h.Copies)
	}
	if h.ContainerStdin == 0 || h.ContainerStdout == 0 || h.ContainerStderr == 0 {
		t.Errorf("container-side ends not handed over before start: %+v", h)
	}
	startEcho(t, q, in, out, errp, 3000).finish(t, q)
}

// TestHandOverPendingConsole: a terminal whose console socket has not
// received the master yet is handed over with its socket: the runtime's
// master reaches the adopted IO, which copies as usual, and its Close
// removes the socket's directory (the old IO's letting go did not).
func TestHandOverPendingConsole(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	consoleDir := t.TempDir()
	in, out := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdin: in, Stdout: out, Terminal: true}, Options{ConsoleDir: consoleDir})
	path := p.ConsoleSocket().Path()
	q, h := handOverDesc(t, p, Options{})
	if h.Console == nil || h.Console.Listener == 0 || h.Console.Dir != filepath.Dir(path) || h.Copies.Out != "pending" {
		t.Fatalf("console %+v, copies %+v: want its socket, pending", h.Console, h.Copies)
	}
	if got := q.ConsoleSocket().Path(); got != path {
		t.Errorf("adopted console socket %s, want %s", got, path)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the console socket is gone after the old IO let go of it: %v", err)
	}
	var b lockedBuffer
	rd := openReader(t, out, &b, 4096, 0)
	c := startOnTerminal(t, q, sh(ptyCat), nil)
	waitUntil(t, "ready", func() bool { return strings.Contains(b.String(), "ready\r\n") })
	const n = 300
	f := feed(t, in, n)
	f.wait(t)
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, q, drainAll)
	rd.wait(t)
	checkSeq(t, "terminal output", b.String(), "ready\r\n"+seqText(n, "\r\n", same))
	if err := closeIO(q); err != nil {
		t.Error(err)
	}
	if ents, _ := os.ReadDir(consoleDir); len(ents) != 0 {
		t.Errorf("console socket directory left behind: %v", ents)
	}
}

// TestHandOverClosing: a copy that read its pipe to the end and waits for
// the client to read the fifo empty is handed over at that stage: the
// client, coming later, reads everything from the adopted IO and sees EOF.
func TestHandOverClosing(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	out := mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdout: out}, Options{})
	const n = 500
	c := startContainer(t, p, nil, childCmd(t, fmt.Sprintf("count:%d", n)))
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	waitUntil(t, "the copy at EOF", func() bool { return stageOf(p, roleOut) == stageClosing })
	q, h := handOverDesc(t, p, Options{})
	if h.Copies.Out != "closing" || h.StdoutFifo == 0 {
		t.Errorf("copies %+v, stdout fifo %d: want closing, with the fifo", h.Copies, h.StdoutFifo)
	}
	var b lockedBuffer
	rd := openReader(t, out, &b, 4096, 0)
	drainIO(t, q, drainAll)
	rd.wait(t)
	checkSeq(t, "stdout", b.String(), seqText(n, "\n", same))
}

// TestHandOverNull: an IO without stdio hands over nothing but its
// counters, and adopts.
func TestHandOverNull(t *testing.T) {
	testutil.CheckLeaks(t)
	p := openIO(t, Config{}, Options{})
	p.progress.Store(11)
	p.dropped.Store(7)
	q, h := handOverDesc(t, p, Options{})
	if got := q.Stats(); got != (Stats{OutBytes: 11, Drops: 7}) {
		t.Errorf("adopted stats %+v, want 11 out and 7 dropped", got)
	}
	if len(h.fds()) != 10 || h.Console != nil || h.LoggerPid != 0 {
		t.Errorf("null stdio handed %+v", h)
	}
	for _, d := range h.fds() {
		if d.fd != 0 {
			t.Errorf("null stdio handed %s = %d", d.name, d.fd)
		}
	}
	drainIO(t, q, drainAll)
}

// TestUnpauseResumes: after Pause and a hand-over that failed (the
// duplicates closed), Unpause resumes the copies as if nothing had
// happened: every number arrives once, in order. HandOver refuses an IO
// that is not paused, and a second Pause fails.
func TestUnpauseResumes(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out, errp := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout"), mkfifo(t, dir, "stderr")
	const n = 4000
	p := openIO(t, Config{Stdin: in, Stdout: out, Stderr: errp}, Options{})
	e := startEcho(t, p, in, out, errp, n, n/4, n/2)
	waitUntil(t, "first line out", func() bool { return lines(&e.bo) > 0 })

	var files handover.Files
	if _, err := p.HandOver(&files); err == nil {
		t.Error("HandOver of an IO that is not paused succeeded")
	}
	files.Close()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	for round := range 2 {
		if err := p.Pause(ctx); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if err := p.Pause(ctx); err == nil {
			t.Error("a second Pause succeeded")
		}
		before := p.Stats()
		h, err := p.HandOver(&files)
		if err != nil {
			t.Fatalf("HandOver: %v", err)
		}
		if h.Progress != int64(before.OutBytes) {
			t.Errorf("handed progress %d, Stats says %d", h.Progress, before.OutBytes)
		}
		files.Close()
		p.Unpause()
		p.Unpause() // a second one does nothing
		e.f.next()
		if round == 0 {
			waitUntil(t, "output after Unpause", func() bool { return lines(&e.bo) > n/4 })
		}
	}
	e.finish(t, p)
}

// TestPauseFailsOnSlowClient: a copy blocked writing to a client that does
// not read makes Pause fail at its deadline, and resume: once the client
// reads, everything arrives, once.
func TestPauseFailsOnSlowClient(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	out := mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdout: out}, Options{})
	// The fifo full before the process writes: the copy's first write
	// blocks, and stays blocked while nobody reads.
	w, err := unix.Open(out, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fill := 0
	line := []byte("x\n")
	for {
		n, err := unix.Write(w, line)
		fill += max(n, 0)
		if err == unix.EAGAIN {
			break
		}
		if err != nil {
			t.Fatalf("fill the fifo: %v", err)
		}
	}
	unix.Close(w)
	const n = 1000
	c := startContainer(t, p, nil, childCmd(t, fmt.Sprintf("count:%d", n)))
	waitUntil(t, "the copy blocked writing", func() bool { return p.writing.Load() > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Pause(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Pause with a copy stuck writing = %v, want DeadlineExceeded", err)
	}
	if p.paused.Load() {
		t.Error("still paused after a failed Pause")
	}
	var b lockedBuffer
	rd := openReader(t, out, &b, 4096, 0)
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, p, drainAll)
	rd.wait(t)
	checkSeq(t, "stdout", b.String(), strings.Repeat("x\n", fill/2)+seqText(n, "\n", same))
}

// TestPauseFailsOnStuckStdin: the stdin copy blocked writing to a process
// that does not read its stdin makes Pause fail at its deadline too, and
// resume: what the client typed reaches the process once it reads.
func TestPauseFailsOnStuckStdin(t *testing.T) {
	testutil.CheckLeaks(t)
	in := mkfifo(t, t.TempDir(), "stdin")
	var held atomic.Int32
	busy := func() func() {
		held.Add(1)
		return func() { held.Add(-1) }
	}
	p := openIO(t, Config{Stdin: in}, Options{Busy: busy})
	// The process's stdin pipe full before the client types: the copy's
	// first write blocks, and stays blocked while nobody reads.
	rc, err := p.stdinW.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fill := 0
	if err := rc.Control(func(fd uintptr) {
		for {
			n, err := unix.Write(int(fd), []byte("x\n"))
			fill += max(n, 0)
			if err != nil {
				return
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	f := feed(t, in, 100, 2)
	waitUntil(t, "the stdin copy holding the first line", func() bool { return held.Load() > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := p.Pause(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Pause with the stdin copy stuck writing = %v, want DeadlineExceeded", err)
	}
	f.next()
	// The process reads its stdin at last.
	var b lockedBuffer
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(&b, p.stdinR)
		done <- err
	}()
	f.wait(t)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("read the process's stdin: %v", err)
		}
	case <-time.After(bound):
		t.Fatalf("no EOF on the process's stdin within %v", bound)
	}
	checkSeq(t, "stdin", b.String(), strings.Repeat("x\n", fill/2)+seqText(100, "\n", same))
}

// TestCloseWhilePaused: Drain and Close still end a paused IO's copies
// (the stdin copy too), with nothing left behind.
func TestCloseWhilePaused(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdin: in, Stdout: out}, Options{})
	var b lockedBuffer
	openReader(t, out, &b, 4096, 0)
	c := startContainer(t, p, nil, childCmd(t, "echo"))
	f := feed(t, in, 10, 5)
	// All echoed, so that the process is reading when its stdout closes.
	waitUntil(t, "four lines out", func() bool { return lines(&b) == 4 })
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := closeIO(p); err != nil {
		t.Error(err)
	}
	f.next()
	// The process read EOF on stdin: Close closed its pipe.
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	p.Unpause()
}

// TestAdoptRefusesBadHanded: a description that does not hold together,
// or names descriptors that are not open or not of their kind, is refused
// with an error, never a panic.
func TestAdoptRefusesBadHanded(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	fifo := mkfifo(t, dir, "fifo")
	// A regular file's descriptor, where a fifo is needed: refused by
	// type, and left open.
	reg, err := os.Create(filepath.Join(dir, "reg"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	regFD, err := handover.Dup(reg)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(regFD)
	// A number no descriptor has.
	const unused = 1 << 19
	if _, err := unix.FcntlInt(unused, unix.F_GETFD, 0); err == nil {
		t.Fatalf("descriptor %d is open", unused)
	}
	fifoCfg := Config{Stdout: fifo}
	reading := HandedCopies{Out: "reading"}
	for _, tt := range []struct {
		name string
		h    Handed
	}{
		{"bad config", Handed{Config: Config{Stdout: "relative"}}},
		{"negative fd", Handed{Config: fifoCfg, Copies: reading, StdoutPipe: -1, StdoutFifo: unused}},
		{"stderr fd", Handed{Config: fifoCfg, Copies: reading, StdoutPipe: 2, StdoutFifo: unused}},
		{"huge fd", Handed{Config: fifoCfg, Copies: reading, StdoutPipe: 1 << 30, StdoutFifo: unused}},
		{"same fd twice", Handed{Config: fifoCfg, Copies: reading, StdoutPipe: unused, StdoutFifo: unused}},
		{"missing pipe", Handed{Config: fifoCfg, Copies: reading, StdoutFifo: unused}},
		{"missing fifo", Handed{Config: fifoCfg, Copies: reading, StdoutPipe: unused}},
		{"unknown stage", Handed{Config: fifoCfg, Copies: HandedCopies{Out: "sleeping"}}},
		{"a copy of nothing", Handed{Copies: HandedCopies{Err: "reading"}}},
		{"fd for nothing", Handed{StdinPipe: unused}},
		{"negative counter", Handed{Progress: -1}},
		{"stopping while reading", Handed{Config: fifoCfg, Copies: reading, Stopping: true, StdoutPipe: unused, StdoutFifo: unused + 1}},
		{"logger without binary", Handed{LoggerPid: 1}},
		{"logger without monitor", Handed{Config: Config{Stdout: "binary:///bin/true"}, LoggerPid: 1}},
		{"terminal without console", Handed{Config: Config{Terminal: true}, Copies: HandedCopies{Out: "done"}}},
		{"console without terminal", Handed{Console: &HandedConsole{Master: unused}}},
		{"console with socket and master", Handed{Config: Config{Terminal: true}, Copies: reading, Console: &HandedConsole{Master: unused, Listener: unused + 1, Dir: "/tmp/tether-pty-1"}}},
		{"console dir not ours", Handed{Config: Config{Terminal: true}, Copies: HandedCopies{Out: "pending"}, Console: &HandedConsole{Listener: unused, Dir: "/"}}},
		{"console dir relative", Handed{Config: Config{Terminal: true}, Copies: HandedCopies{Out: "pending"}, Console: &HandedConsole{Listener: unused, Dir: "tether-pty-1"}}},
		{"pending console without socket", Handed{Config: Config{Terminal: true}, Copies: HandedCopies{Out: "pending"}, Console: &HandedConsole{Master: unused}}},
		{"fd not open", Handed{Config: fifoCfg, Copies: reading, StdoutPipe: unused, StdoutFifo: unused + 1}},
		{"fd of a regular file for a pipe", Handed{Config: fifoCfg, Copies: reading, StdoutPipe: regFD, StdoutFifo: unused}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			q, err := Adopt(ctx, tt.h, Options{})
			if err == nil {
				q.Close()
				t.Fatalf("Adopt(%+v) succeeded", tt.h)
			}
		})
	}
	// The refused regular file's descriptor is still open.
	if _, err := unix.FcntlInt(uintptr(regFD), unix.F_GETFD, 0); err != nil {
		t.Errorf("Adopt closed a descriptor it refused: %v", err)
	}

	// A descriptor Adopt took before it found a bad one is closed again.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	pipeFD, err := handover.Dup(r)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if q, err := Adopt(ctx, Handed{Config: fifoCfg, Copies: reading, StdoutPipe: pipeFD, StdoutFifo: unused}, Options{}); err == nil {
		q.Close()
		t.Fatal("Adopt with a fifo not open succeeded")
	}
	if _, err := unix.FcntlInt(uintptr(pipeFD), unix.F_GETFD, 0); err == nil {
		unix.Close(pipeFD)
		t.Error("Adopt left open a descriptor it had taken before failing")
	}
}

// TestHandOverRefusesStdinClosedWhilePaused: CloseStdin on a paused IO
// closes the fifo its parked copy reads: HandOver fails (that copy has not
// ended yet), and after Unpause the process reads EOF as usual.
func TestHandOverRefusesStdinClosedWhilePaused(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	in, out := mkfifo(t, dir, "stdin"), mkfifo(t, dir, "stdout")
	p := openIO(t, Config{Stdin: in, Stdout: out}, Options{})
	var b lockedBuffer
	rd := openReader(t, out, &b, 4096, 0)
	c := startContainer(t, p, nil, childCmd(t, "echo"))
	f := feed(t, in, 10, 10)
	waitUntil(t, "nine lines out", func() bool { return lines(&b) == 9 })
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	p.CloseStdin()
	var files handover.Files
	if h, err := p.HandOver(&files); err == nil {
		t.Errorf("HandOver after CloseStdin while paused succeeded: %+v", h)
	}
	files.Close()
	p.Unpause()
	if status := c.wait(t); status != 0 {
		t.Errorf("exit status %d", status)
	}
	drainIO(t, p, drainAll)
	rd.wait(t)
	checkSeq(t, "stdout", b.String(), seqText(9, "\n", same))
	_ = f // held at its last line until the test ends: the fifo stays open
}
