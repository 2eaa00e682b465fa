package bootstrap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/upgrade"
)

// Limits of what one connection to the server's socket can make it hold.
const (
	// maxFrame is ttrpc's own limit on a message (4 MiB); a frame that
	// declares more ends the connection.
	maxFrame = 4 << 20
	// frameHeader is the size of a ttrpc frame header: length, stream id,
	// type and flags.
	frameHeader = 10
	// frameTimeout bounds the time from a frame's first byte to its last.
	// containerd writes a frame at once; a peer that stalls inside one
	// loses the connection. Between frames a connection may idle forever.
	frameTimeout = 10 * time.Second
	// frameChunk is how much a frame's buffer grows at a time.
	frameChunk = 64 << 10
)

// guardedListener is the server's listener. It serves only peers of the
// server's own uid (SO_PEERCRED), refusing others with a warning, and
// wraps each connection in a frameConn. It tells activity of every
// accepted and closed connection, so that the trimmer also sees traffic
// that never becomes a request.
type guardedListener struct {
	*net.UnixListener
	uid      int
	logger   *slog.Logger
	activity func()
	// frameTimeout is frameTimeout; tests shorten it.
	frameTimeout time.Duration
	// quiescer, if set, quiesces the connections for live upgrade, and
	// gate the listener. inherited are the connections a live upgrade
	// handed over, which Accept returns first; only ttrpc's accepting
	// goroutine touches it.
	quiescer  *upgrade.Quiescer
	gate      *upgrade.ListenerGate
	inherited []upgrade.Handed
	// conns tracks the open connections, for `tether inspect`.
	conns connTable
}

// newGuardedListener wraps ln; activity must not block.
func newGuardedListener(ln *net.UnixListener, logger *slog.Logger, activity func()) *guardedListener {
	return &guardedListener{UnixListener: ln, uid: os.Getuid(), logger: logger, activity: activity, frameTimeout: frameTimeout}
}

// Accept returns the next connection of a peer of the server's uid, the
// inherited ones first.
func (l *guardedListener) Accept() (net.Conn, error) {
	if len(l.inherited) > 0 {
		h := l.inherited[0]
		l.inherited = l.inherited[1:]
		fc := l.wrap(h.Conn, h.PeerPID, l.uid) // checked by the image that accepted it
		fc.replay = h.Replay
		return fc, nil
	}
	for {
		c, err := l.gate.Accept(l.AcceptUnix)
		if err != nil {
			return nil, err
		}
		l.activity()
		uid, pid, err := introspect.PeerCred(c)
		if err != nil || uid != l.uid {
			l.conns.refused.Add(1)
			l.logger.Warn("refusing a connection to the shim's socket", "peer_uid", uid, "peer_pid", pid, "want_uid", l.uid, "error", err)
			c.Close()
			continue
		}
		return l.wrap(c, pid, uid), nil
	}
}

// wrap makes c a frameConn, registered with the quiescer and in the
// connection table.
func (l *guardedListener) wrap(c *net.UnixConn, pid, uid int) *frameConn {
	fc := &frameConn{UnixConn: c, activity: l.activity, timeout: l.frameTimeout, logger: l.logger, peerPID: pid, gate: l.quiescer.Add(c, pid), table: &l.conns}
	l.conns.add(fc, introspect.Peer{Pid: pid, UID: uid})
	return fc
}

// errFrameTooLarge ends a connection whose peer declared a frame above
// maxFrame.
var errFrameTooLarge = errors.New("ttrpc frame larger than 4 MiB")

// frameConn hands ttrpc whole frames only. ttrpc allocates a frame's buffer
// from the length in its header, before any of its bytes arrived, and keeps
// it (in a pool) afterwards: a peer that declares 4 MiB and sends nothing
// more made the shim hold 4 MiB per connection for as long as it liked.
// frameConn reads each frame itself first, growing its buffer only as bytes
// come, within frameTimeout of its first byte, and refuses frames above
// maxFrame. So what a connection makes the shim hold is what it sent, for
// at most frameTimeout per frame.
//
// Any error but a clean end between frames ends the connection: Read
// logs why at Warn and returns an error that is io.ErrUnexpectedEOF to
// errors.Is. ttrpc (v1.2) closes a connection only on EOF, unexpected EOF
// and ECONNRESET; on any other read error it logs and keeps the connection
// and its goroutine until the peer goes, which a peer that never goes
// turned into a leak (TestRegressionFrameErrorLeakedConnection).
//
// Read is called by ttrpc's one reader goroutine of the connection, never
// concurrently; pending is owned by it.
type frameConn struct {
	*net.UnixConn
	activity func()
	timeout  time.Duration // from a frame's first byte to its last
	logger   *slog.Logger
	peerPID  int // for the log
	// gate quiesces the connection for live upgrade (nil: never): it
	// holds the reader between frames and counts requests and answers.
	gate *upgrade.Gate
	// table is the listener's, which Close removes the connection from.
	table *connTable
	// pending is the rest of the frame being handed to ttrpc.
	pending []byte
	// replay are the request frames the old image of a live upgrade read
	// and left unanswered (upgrade.Handed.Replay), which fill returns
	// before it reads the socket.
	replay [][]byte
}

// Read returns bytes of the current frame, reading the next whole frame
// first when the current one is done.
func (c *frameConn) Read(p []byte) (int, error) {
	if len(c.pending) == 0 {
		c.pending = nil
		if err := c.fill(); err != nil {
			return 0, c.ended(err)
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// ended turns an error of fill into the error ttrpc gets: io.EOF as it is
// (the peer hung up between frames), anything else logged and made an
// unexpected EOF, so that ttrpc closes the connection.
func (c *frameConn) ended(err error) error {
	if err == io.EOF || errors.Is(err, syscall.ECONNRESET) {
		return err // the peer went; ttrpc closes the connection
	}
	if !errors.Is(err, net.ErrClosed) {
		c.logger.Warn("ending a connection to the shim's socket", "peer_pid", c.peerPID, "error", err)
	}
	return fmt.Errorf("%w: %w", io.ErrUnexpectedEOF, err)
}

// fill reads the next whole frame into pending.
func (c *frameConn) fill() error {
	if len(c.replay) > 0 {
		f := c.replay[0]
		c.replay = c.replay[1:]
		if len(c.replay) == 0 {
			c.replay = nil
		}
		c.gate.Received(f)
		c.pending = f
		return nil
	}
	// Between frames: no deadline, containerd's connections idle; a live
	// upgrade holds the reader here.
	first, err := c.gate.ReadFirst(c.UnixConn)
	if err != nil {
		return err
	}
	if err := c.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return err
	}
	var header [frameHeader]byte
	header[0] = first
	if _, err := io.ReadFull(c.UnixConn, header[1:]); err != nil {
		return fmt.Errorf("ttrpc frame header: %w", err)
	}
	length := int(binary.BigEndian.Uint32(header[:4]))
	if length > maxFrame {
		return fmt.Errorf("%w: %d bytes", errFrameTooLarge, length)
	}
	// A frame's first chunk at most: most frames are a few hundred bytes,
	// and a buffer of frameChunk for each made 600 connections allocate
	// 38 MB and peak the heap at 11 MB, whose runtime metadata stayed.
	buf := make([]byte, frameHeader, frameHeader+min(length, frameChunk))
	copy(buf, header[:])
	for got := 0; got < length; {
		want := min(length-got, frameChunk)
		buf = slices.Grow(buf, want)
		n, err := c.UnixConn.Read(buf[len(buf) : len(buf)+want])
		buf = buf[:len(buf)+n]
		got += n
		if err != nil {
			return fmt.Errorf("ttrpc frame of %d bytes after %d: %w", length, got, err)
		}
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	c.gate.Received(buf)
	c.pending = buf
	return nil
}

// Write writes ttrpc's bytes, which the gate follows to know when every
// request read is answered.
func (c *frameConn) Write(p []byte) (int, error) {
	n, err := c.UnixConn.Write(p)
	c.gate.Sent(p[:n])
	return n, err
}

// Close closes the connection and tells of the activity.
func (c *frameConn) Close() error {
	err := c.UnixConn.Close()
	c.gate.Closed()
	if c.table != nil {
		c.table.remove(c)
	}
	c.activity()
	return err
}
