package stdio

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRegressionClientDropsUnreadTailAtExit pins the bug behind a 1 GiB
// end-to-end run that lost its last 16-28 kB under load: containerd's
// client closes its fifos as soon as the exit is reported (cio.Cancel), so
// whatever it had not read by then was lost. Drain must not return (and the
// exit must not be published) while bytes still sit in the fifo.
func TestRegressionClientDropsUnreadTailAtExit(t *testing.T) {
	const size = 40000 // fits in the fifo: the copy finishes at once
	dir := t.TempDir()
	out := filepath.Join(dir, "stdout")
	if err := syscall.Mkfifo(out, 0o600); err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(out, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	p, err := Open(context.Background(), Config{Stdout: out}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.StartOutput(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "head -c 40000 /dev/zero")
	p.Set(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.CloseAfterStart()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}

	// A slow client: it starts reading late, in small pieces.
	var got atomic.Int64
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		time.Sleep(300 * time.Millisecond)
		buf := make([]byte, 4096)
		for {
			n, err := reader.Read(buf)
			got.Add(int64(n))
			if err == io.EOF {
				return
			}
			if err != nil && !os.IsTimeout(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	p.Drain(2 * time.Second)
	rc, err := reader.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var unread int
	if err := rc.Control(func(fd uintptr) { unread, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }); err != nil {
		t.Fatal(err)
	}
	if unread != 0 {
		t.Fatalf("Drain returned with %d bytes still unread in the client's fifo", unread)
	}
	select {
	case <-readerDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the client never saw EOF")
	}
	if got.Load() != size {
		t.Fatalf("the client read %d bytes, want %d", got.Load(), size)
	}
}
