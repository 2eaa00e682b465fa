package upgrade

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ttrpc's frame header: length (4), stream id (4), type (1), flags (1).
const (
	frameHeader = 10
	typeRequest = 1
	typeResp    = 2
	typeData    = 3
	// flagRemoteClosed on a data frame the server sends ends its stream.
	flagRemoteClosed = 1
)

// gateState is where the reader of a connection (or the accepting goroutine
// of the listener) is.
type gateState int

const (
	// stateBusy: inside a frame, or between two calls of ReadFirst.
	stateBusy gateState = iota
	// stateWaiting: blocked reading the first byte of a frame (or in
	// accept); Pause interrupts it with a deadline in the past.
	stateWaiting
	// stateParked: held at a frame boundary (or before accept) by a pause.
	stateParked
	// stateEnded: the connection failed or closed; it is not handed over.
	stateEnded
)

// Quiescer stops a ttrpc server at a request boundary. Each connection of
// the server reads through a Gate and the listener accepts through the
// ListenerGate. After Pause, no reader reads the first byte of another frame
// and the listener accepts no other connection; Wait returns once every
// request already read has been answered in full. The server's goroutines
// stay parked until Resume (an upgrade that failed) or execve (one that did
// not).
//
// ttrpc answers every request frame with exactly one response frame (or, for
// a stream, a data frame that closes it), the error of an invalid request
// included; a Gate counts requests read and answers written per stream id.
type Quiescer struct {
	mu sync.Mutex
	// cond wakes parked readers on Resume; guarded by mu.
	cond *sync.Cond
	// changed, made by Wait so that it can wait with a deadline, is
	// closed and cleared whenever a gate changes state. It is nil while
	// nobody waits: a request's state changes then allocate nothing (a
	// channel made per change was garbage on every request of every
	// shim, docs/performance.md).
	changed chan struct{}
	paused  bool
	conns   map[*Gate]struct{}
	ln      *ListenerGate
}

// NewQuiescer returns a Quiescer with no connection, not paused.
func NewQuiescer() *Quiescer {
	q := &Quiescer{conns: make(map[*Gate]struct{})}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// notifyLocked tells Wait that something changed.
func (q *Quiescer) notifyLocked() {
	if q.changed != nil {
		close(q.changed)
		q.changed = nil
	}
}

// Gate is the quiescing state of one connection. Its methods may be called
// on a nil *Gate, which does nothing (a connection without a Quiescer).
type Gate struct {
	q       *Quiescer
	conn    *net.UnixConn
	peerPID int

	// Guarded by q.mu.
	state gateState
	// interrupted: Pause set a read deadline in the past, which the
	// reader clears before it reads again.
	interrupted bool
	// open counts, per stream id, the requests read and not yet answered;
	// frames keeps the last request frame read on each such stream (the
	// frame buffer the reader made for it, not a copy), which a hand-over
	// replays in the new image if the request may wait there (Replayable).
	open   map[uint32]int
	frames map[uint32][]byte
	// out follows the frames the server writes.
	out frameScanner
}

// Add registers a connection the server has accepted. On a nil Quiescer it
// returns a nil Gate.
func (q *Quiescer) Add(conn *net.UnixConn, peerPID int) *Gate {
	if q == nil {
		return nil
	}
	g := &Gate{q: q, conn: conn, peerPID: peerPID, open: make(map[uint32]int), frames: make(map[uint32][]byte)}
	q.mu.Lock()
	q.conns[g] = struct{}{}
	q.notifyLocked()
	q.mu.Unlock()
	return g
}

// ReadFirst reads the first byte of the next frame from the connection,
// unless the server is paused: then it parks until Resume. Whether the
// server is paused is checked, and the byte read, under the Quiescer's lock,
// by a non-blocking read when the socket is readable: so a byte is read
// only if it was read before Pause returned, and a frame begun is one the
// caller reads in full and the server answers before the hand-over. (A read
// deadline alone cannot promise that: a read woken by a deadline in the
// past still returns data that arrived before the reader ran.) Any error
// but Pause's interruption ends the gate and is returned; a clean end is
// io.EOF. On a nil Gate it reads conn plainly.
func (g *Gate) ReadFirst(conn *net.UnixConn) (byte, error) {
	var b [1]byte
	if g == nil {
		_, err := io.ReadFull(conn, b[:])
		return b[0], err
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	q := g.q
	for {
		q.mu.Lock()
		for q.paused {
			g.setLocked(stateParked)
			q.cond.Wait()
		}
		if g.interrupted {
			g.interrupted = false
			if err := conn.SetReadDeadline(time.Time{}); err != nil {
				g.setLocked(stateEnded)
				q.mu.Unlock()
				return 0, err
			}
		}
		g.setLocked(stateWaiting)
		q.mu.Unlock()

		var got bool
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.paused {
				return true // read nothing; park
			}
			for {
				n, err := unix.Read(int(fd), b[:])
				switch {
				case err == unix.EINTR:
					continue
				case err == unix.EAGAIN:
					return false // wait until readable
				case err != nil:
					rerr = err
				case n == 0:
					rerr = io.EOF
				default:
					got = true
					g.setLocked(stateBusy)
				}
				return true
			}
		})
		if got {
			// The caller sets the frame's own deadline next, which replaces
			// one Pause may have set meanwhile.
			q.mu.Lock()
			g.interrupted = false
			q.mu.Unlock()
			return b[0], nil
		}
		if rerr == nil && (err == nil || errors.Is(err, os.ErrDeadlineExceeded)) {
			continue // paused: park at the top
		}
		if rerr == nil {
			rerr = err
		}
		q.mu.Lock()
		g.setLocked(stateEnded)
		q.mu.Unlock()
		return 0, rerr
	}
}

// Received counts a frame read in full. A request frame is kept until its
// answer is written: the caller must not modify it afterwards.
func (g *Gate) Received(frame []byte) {
	if g == nil || len(frame) < frameHeader {
		return
	}
	if frame[8] != typeRequest {
		return
	}
	id := binary.BigEndian.Uint32(frame[4:8])
	g.q.mu.Lock()
	g.open[id]++
	g.frames[id] = frame
	g.q.notifyLocked()
	g.q.mu.Unlock()
}

// Sent follows bytes the server wrote to the connection.
func (g *Gate) Sent(p []byte) {
	if g == nil || len(p) == 0 {
		return
	}
	g.q.mu.Lock()
	defer g.q.mu.Unlock()
	g.out.scan(p, func(id uint32, typ, flags byte) {
		if typ == typeResp || (typ == typeData && flags&flagRemoteClosed != 0) {
			if g.open[id] > 0 {
				g.open[id]--
				if g.open[id] == 0 {
					delete(g.open, id)
					delete(g.frames, id)
				}
			}
		}
	})
	g.q.notifyLocked()
}

// Closed ends the gate: its connection is closed and is not handed over.
func (g *Gate) Closed() {
	if g == nil {
		return
	}
	g.q.mu.Lock()
	delete(g.q.conns, g)
	g.setLocked(stateEnded)
	g.q.mu.Unlock()
}

// setLocked changes the state and tells Wait.
func (g *Gate) setLocked(s gateState) {
	g.state = s
	g.q.notifyLocked()
}

// quiescedLocked: the gate is ended, or parked with no response half
// written and every request answered but those replayable (nil: none) says
// the new image may answer instead.
func (g *Gate) quiescedLocked(replayable func(frame []byte) bool) bool {
	if g.state == stateEnded {
		return true
	}
	if g.state != stateParked || !g.out.atBoundary() {
		return false
	}
	for id := range g.open {
		if replayable == nil || !replayable(g.frames[id]) {
			return false
		}
	}
	return true
}

// replayLocked returns the frames of the requests still open, by stream
// id: the order the peer sent them in, and the order ttrpc accepts them in.
func (g *Gate) replayLocked() [][]byte {
	if len(g.open) == 0 {
		return nil
	}
	ids := make([]uint32, 0, len(g.open))
	for id := range g.open {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([][]byte, 0, len(ids))
	for _, id := range ids {
		out = append(out, g.frames[id])
	}
	return out
}

// ListenerGate is the quiescing state of the server's listener.
type ListenerGate struct {
	q           *Quiescer
	ln          *net.UnixListener
	state       gateState // guarded by q.mu
	interrupted bool      // guarded by q.mu
}

// Listener registers the server's listener. A Quiescer has one. On a nil
// Quiescer it returns a nil ListenerGate.
func (q *Quiescer) Listener(ln *net.UnixListener) *ListenerGate {
	if q == nil {
		return nil
	}
	l := &ListenerGate{q: q, ln: ln, state: stateBusy}
	q.mu.Lock()
	q.ln = l
	q.mu.Unlock()
	return l
}

// Accept runs accept unless the server is paused, then it parks until
// Resume; like ReadFirst, it retries an accept Pause interrupted.
func (l *ListenerGate) Accept(accept func() (*net.UnixConn, error)) (*net.UnixConn, error) {
	if l == nil {
		return accept()
	}
	q := l.q
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		for q.paused {
			l.state = stateParked
			q.notifyLocked()
			q.cond.Wait()
		}
		if l.interrupted {
			l.interrupted = false
			if err := l.ln.SetDeadline(time.Time{}); err != nil {
				return nil, err
			}
		}
		l.state = stateWaiting
		q.mu.Unlock()
		c, err := accept()
		q.mu.Lock()
		if err != nil && l.interrupted && errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		// interrupted stays set even when accept won the race with
		// Pause's past deadline: the next Accept clears that deadline.
		// Clearing the flag here left it on the listener after a failed
		// hand-over's Resume, and every later accept timed out.
		l.state = stateBusy
		q.notifyLocked()
		return c, err
	}
}

// Pause stops the server from reading the first byte of any frame and from
// accepting: waiting readers are interrupted, busy ones park at their next
// frame boundary.
func (q *Quiescer) Pause() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.paused = true
	past := time.Unix(1, 0)
	for g := range q.conns {
		if g.state == stateWaiting {
			g.interrupted = true
			_ = g.conn.SetReadDeadline(past)
		}
	}
	if l := q.ln; l != nil && l.state == stateWaiting {
		l.interrupted = true
		_ = l.ln.SetDeadline(past)
	}
	q.notifyLocked()
}

// Resume undoes Pause: parked readers and the listener go on.
func (q *Quiescer) Resume() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.paused = false
	q.cond.Broadcast()
	q.notifyLocked()
}

// Handed is a connection ready to be handed over.
type Handed struct {
	Conn    *net.UnixConn
	PeerPID int
	// Replay are the request frames read and not answered, which the new
	// image reads first, as if they had just arrived.
	Replay [][]byte
}

// Wait waits, after Pause, until the server is quiescent: the listener and
// every connection parked, every request read answered in full, but those
// replayable says the new image may answer instead (a nil replayable: none).
// It returns the connections to hand over, with the frames of the requests
// to replay, or ctx's error. replayable runs with the Quiescer's lock held:
// it must not call into the Quiescer.
func (q *Quiescer) Wait(ctx context.Context, replayable func(frame []byte) bool) ([]Handed, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		if !q.paused {
			return nil, errors.New("quiesce: not paused")
		}
		if ok, why := q.quiescedLocked(replayable); ok {
			var out []Handed
			for g := range q.conns {
				if g.state != stateEnded {
					out = append(out, Handed{Conn: g.conn, PeerPID: g.peerPID, Replay: g.replayLocked()})
				}
			}
			return out, nil
		} else if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("quiesce: %s: %w", why, err)
		}
		if q.changed == nil {
			q.changed = make(chan struct{})
		}
		ch := q.changed
		q.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		q.mu.Lock()
	}
}

// quiescedLocked reports whether the server is quiescent, or what it waits
// for.
func (q *Quiescer) quiescedLocked(replayable func([]byte) bool) (bool, string) {
	if q.ln != nil && q.ln.state != stateParked {
		return false, "the listener is accepting a connection"
	}
	for g := range q.conns {
		if !g.quiescedLocked(replayable) {
			return false, fmt.Sprintf("a connection (peer pid %d) has %d requests unanswered", g.peerPID, len(g.open))
		}
	}
	return true, ""
}

// frameScanner follows a stream of ttrpc frames written piecewise.
type frameScanner struct {
	header [frameHeader]byte
	got    int // bytes of header gathered
	rest   int // payload bytes of the current frame still to come
}

// scan consumes p, calling frame for every header completed.
func (s *frameScanner) scan(p []byte, frame func(id uint32, typ, flags byte)) {
	for len(p) > 0 {
		if s.rest > 0 {
			n := min(s.rest, len(p))
			s.rest -= n
			p = p[n:]
			continue
		}
		n := copy(s.header[s.got:], p)
		s.got += n
		p = p[n:]
		if s.got < frameHeader {
			return
		}
		s.got = 0
		s.rest = int(binary.BigEndian.Uint32(s.header[:4]))
		frame(binary.BigEndian.Uint32(s.header[4:8]), s.header[8], s.header[9])
	}
}

// atBoundary: no frame half written.
func (s *frameScanner) atBoundary() bool { return s.got == 0 && s.rest == 0 }
