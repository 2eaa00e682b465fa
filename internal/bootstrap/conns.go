package bootstrap

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tether-shim/tether/internal/introspect"
)

// connTable tracks the connections of a guardedListener for `tether
// inspect`: the open ones with their peers, and counts of those accepted
// and refused. Its zero value is ready; it is updated by Accept and by a
// connection's Close, paths that run anyway, and adds no goroutine.
type connTable struct {
	accepted atomic.Uint64
	refused  atomic.Uint64

	mu   sync.Mutex
	open map[*frameConn]introspect.Peer // guarded by mu
}

// add records c, accepted from peer.
func (t *connTable) add(c *frameConn, p introspect.Peer) {
	t.accepted.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open = make(map[*frameConn]introspect.Peer)
	}
	t.open[c] = p
}

// remove forgets c; it is idempotent.
func (t *connTable) remove(c *frameConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.open, c)
}

// snapshot reports the table: peers in pid order.
func (t *connTable) snapshot() introspect.Connections {
	t.mu.Lock()
	peers := make([]introspect.Peer, 0, len(t.open))
	for _, p := range t.open {
		peers = append(peers, p)
	}
	t.mu.Unlock()
	slices.SortFunc(peers, func(a, b introspect.Peer) int { return a.Pid - b.Pid })
	return introspect.Connections{
		Open:     len(peers),
		Peers:    peers,
		Accepted: t.accepted.Load(),
		Refused:  t.refused.Load(),
	}
}
