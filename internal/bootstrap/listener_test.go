package bootstrap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/testutil"
	"github.com/tether-shim/tether/internal/trim"
)

// framePair is a frameConn over one end of a unix socket pair and the
// other end, as the peer.
func framePair(t *testing.T) (*frameConn, *net.UnixConn, *atomic.Int32) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	var activity atomic.Int32
	_, logger := testutil.NewLog(t)
	gl := newGuardedListener(ln, logger, func() { activity.Add(1) })
	gl.frameTimeout = 100 * time.Millisecond
	c, err := gl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c.(*frameConn), peer, &activity
}

func testFrame(length uint32, body []byte) []byte {
	b := make([]byte, frameHeader)
	binary.BigEndian.PutUint32(b, length)
	binary.BigEndian.PutUint32(b[4:], 1)
	b[8] = 1
	return append(b, body...)
}

// TestFrameConnPassesFrames: whole frames, written in pieces, reach the
// reader byte for byte.
func TestFrameConnPassesFrames(t *testing.T) {
	c, peer, activity := framePair(t)
	big := bytes.Repeat([]byte("x"), 3*frameChunk+17)
	want := append(append(testFrame(5, []byte("hello")), testFrame(0, nil)...), testFrame(uint32(len(big)), big)...)
	go func() {
		for rest := want; len(rest) > 0; {
			n := min(len(rest), 1000)
			peer.Write(rest[:n])
			rest = rest[n:]
		}
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the frames came out changed")
	}
	if activity.Load() == 0 {
		t.Error("Accept did not tell of the activity")
	}
}

// TestRegressionFrameLengthHeldMemory: ttrpc allocated a frame's buffer
// from its declared length before its bytes came, and a peer declaring
// 4 MiB made the shim hold it for as long as the peer kept the connection.
// Now a frame above 4 MiB ends the connection at once, and one that stalls
// ends it after frameTimeout, holding only what was sent.
func TestRegressionFrameLengthHeldMemory(t *testing.T) {
	c, peer, _ := framePair(t)
	if _, err := peer.Write(testFrame(maxFrame+1, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 4096)); !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("a frame above 4 MiB: Read = %v, want errFrameTooLarge", err)
	}

	c2, peer2, _ := framePair(t)
	if _, err := peer2.Write(testFrame(maxFrame, []byte("only this"))); err != nil {
		t.Fatal(err)
	}
	_, err := c2.Read(make([]byte, 4096))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a stalled frame: Read = %v, want a timeout", err)
	}
	if c2.pending != nil {
		t.Fatalf("a stalled frame left %d bytes pending", len(c2.pending))
	}
}

// TestRegressionFrameErrorLeakedConnection: frameConn's errors (a frame
// above 4 MiB, a frame stalled past frameTimeout) are not ones ttrpc ends
// a connection on: it logged them and kept the connection and its
// goroutine for as long as the peer kept it open, which after 600 abusive
// connections was 302 goroutines and 8 MB. Now the server hangs up at
// once, and says why through the shim's logger.
func TestRegressionFrameErrorLeakedConnection(t *testing.T) {
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"too large", testFrame(maxFrame+1, nil)},
		{"stalled", testFrame(1000, []byte("only this"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, logger := testutil.NewLog(t)
			path := filepath.Join(t.TempDir(), "s")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			server, err := newTTRPCServer(logger, trim.New(), false)
			if err != nil {
				t.Fatal(err)
			}
			gl := newGuardedListener(ln, logger, func() {})
			gl.frameTimeout = 100 * time.Millisecond
			served := make(chan error, 1)
			go func() { served <- serveTTRPC(context.Background(), server, gl, logger) }()
			defer func() {
				server.Close()
				<-served
			}()

			peer, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			if _, err := peer.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			// The peer never hangs up; the server must.
			peer.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := io.Copy(io.Discard, peer)
			if err != nil {
				t.Fatalf("the server kept the connection: read %d bytes, then %v", n, err)
			}
			if _, ok := rec.Find(slog.LevelWarn, "ending a connection"); !ok {
				t.Errorf("no warning through the shim's logger; records: %v", rec.Records())
			}
		})
	}
}
