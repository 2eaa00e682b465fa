package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/handover"
)

// quiesceTimeout bounds the wait for in-flight requests to be answered once
// an upgrade is accepted; past it the upgrade fails and the shim resumes.
const quiesceTimeout = 10 * time.Second

// Config is what an Upgrader needs from the server.
type Config struct {
	Logger *slog.Logger
	// Version is this build.
	Version string
	// Exe is the path the server was first started from.
	Exe string
	// Generation counts the upgrades so far (0 for a server `start`
	// launched).
	Generation int
	// Argv and Env are the new image's arguments and environment; Env is
	// called just before execve.
	Argv []string
	Env  func() []string
	// Listener is the server's listening socket; Quiescer quiesces it and
	// its connections.
	Listener *net.UnixListener
	Quiescer *Quiescer
	// Busy returns why the server holds state the hand-over cannot carry
	// (a Create under way), or nil.
	Busy func() error
	// Snapshot, once the connections are quiescent, quiesces the rest of
	// the shim (exits, OOM watches, stdio copies, the event sender) and
	// returns its description for State.Shim, with every descriptor it
	// names duplicated into files. If the hand-over fails after Snapshot
	// was called (even if Snapshot itself failed), Resume undoes its
	// quiescing before the connections resume. Both may be nil: nothing
	// but the connections is handed over.
	Snapshot func(ctx context.Context, files *handover.Files) (json.RawMessage, error)
	Resume   func()
	// Replayable reports whether a request frame read and not answered
	// may be left to the new image, which replays it (a Wait for a
	// process that has not exited: containerd holds one for every task).
	// It runs with the Quiescer's lock held (Quiescer.Wait). Nil: every
	// request must be answered before the hand-over.
	Replayable func(frame []byte) bool
	// Settle, if set, runs once the connections are quiescent, before
	// they are waited for again and Snapshot runs: it stops what could
	// still answer a request Replayable let be (the exit monitor). Resume
	// undoes it.
	Settle func(ctx context.Context) error
	// Hold, if set, keeps the server's reaper from reaping the dry run's
	// process before os/exec waits for it (exits.Reaper.Hold).
	Hold func() (release func())
	// BeforeExec runs just before execve; AfterFailedExec undoes it if
	// execve failed.
	BeforeExec      func() error
	AfterFailedExec func()
}

// Upgrader runs the upgrades of one server. Upgrade (the ttrpc method)
// checks and accepts a request; the server's main goroutine then calls
// HandOver with what it receives from Pending. It starts no goroutine.
type Upgrader struct {
	cfg     Config
	pending chan *Binary

	mu sync.Mutex
	// busy: an upgrade was accepted and HandOver has not finished it.
	busy    bool
	lastErr string
	// closed: Cancel ran (the server is stopping); no upgrade is
	// accepted any more.
	closed bool
}

// New returns an Upgrader.
func New(cfg Config) *Upgrader {
	return &Upgrader{cfg: cfg, pending: make(chan *Binary, 1)}
}

// Pending yields an accepted upgrade, to pass to HandOver.
func (u *Upgrader) Pending() <-chan *Binary { return u.pending }

// Status implements Backend.
func (u *Upgrader) Status(context.Context) Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	return Status{
		Pid:          os.Getpid(),
		Version:      u.cfg.Version,
		Exe:          u.cfg.Exe,
		StateVersion: StateVersion,
		Generation:   u.cfg.Generation,
		LastError:    u.lastErr,
	}
}

// Upgrade implements Backend: it refuses (ErrRefused) an upgrade while
// another is under way, while the server holds what cannot be handed over,
// or to a binary Probe refuses or that is not r.ExpectVersion. Otherwise it
// pauses the server's reading, so that every request after this one is
// the new image's, and queues the hand-over.
func (u *Upgrader) Upgrade(ctx context.Context, r Request) (Accepted, error) {
	u.mu.Lock()
	if u.busy {
		u.mu.Unlock()
		return Accepted{}, fmt.Errorf("%w: an upgrade is already under way", ErrRefused)
	}
	// Claimed while the checks run (the dry run may take seconds), without
	// holding mu, so that Status answers meanwhile.
	u.busy = true
	u.mu.Unlock()
	bin, err := u.check(ctx, r)
	if err != nil {
		u.mu.Lock()
		u.busy = false
		u.mu.Unlock()
		return Accepted{}, err
	}
	u.mu.Lock()
	if u.closed {
		// Cancel ran while the checks did: nobody would hand over, and
		// a paused server would never stop.
		u.busy = false
		u.mu.Unlock()
		bin.Close()
		return Accepted{}, fmt.Errorf("%w: the shim is stopping", ErrRefused)
	}
	u.lastErr = ""
	// Paused and queued under mu, so that Cancel either finds the
	// upgrade queued or makes this refuse; pending has room for it.
	u.cfg.Quiescer.Pause()
	u.pending <- bin
	u.mu.Unlock()
	u.cfg.Logger.Info("upgrade accepted", "from", u.cfg.Version, "to", bin.Answer.Version, "exe", bin.Path)
	return Accepted{From: u.cfg.Version, To: bin.Answer.Version, StateVersion: StateVersion, Exe: bin.Path}, nil
}

// check runs the checks of Upgrade and returns the binary to execute.
func (u *Upgrader) check(ctx context.Context, r Request) (*Binary, error) {
	if err := u.cfg.Busy(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	release := func() {}
	if u.cfg.Hold != nil {
		release = u.cfg.Hold()
	}
	bin, err := Probe(ctx, u.cfg.Exe, u.cfg.Version)
	release()
	if err != nil {
		return nil, err
	}
	if r.ExpectVersion != "" && bin.Answer.Version != r.ExpectVersion {
		bin.Close()
		return nil, fmt.Errorf("%w: new binary %s is build %q, not the expected %q", ErrRefused, bin.Path, bin.Answer.Version, r.ExpectVersion)
	}
	return bin, nil
}

// HandOver completes an accepted upgrade: it waits for the server to be
// quiescent, checks again that nothing is held that cannot be handed over,
// and execs bin. It returns only if the upgrade failed; the server then
// serves on, as before, and Status tells why.
func (u *Upgrader) HandOver(ctx context.Context, bin *Binary) error {
	err := u.handOver(ctx, bin)
	bin.Close()
	u.cfg.Logger.Error("upgrade failed; serving on", "to", bin.Answer.Version, "error", err)
	// Before the readers go on: the first request they read may ask.
	u.mu.Lock()
	u.busy = false
	u.lastErr = err.Error()
	u.mu.Unlock()
	u.cfg.Quiescer.Resume()
	return err
}

func (u *Upgrader) handOver(ctx context.Context, bin *Binary) error {
	ctx, cancel := context.WithTimeout(ctx, quiesceTimeout)
	defer cancel()
	conns, err := u.cfg.Quiescer.Wait(ctx, u.cfg.Replayable)
	if err != nil {
		return err
	}
	// Authoritative: no request is being served now.
	if err := u.cfg.Busy(); err != nil {
		return err
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	var shim json.RawMessage
	var files handover.Files
	if u.cfg.Snapshot != nil || u.cfg.Settle != nil {
		// On failure the duplicates are closed and the shim's parts
		// resumed here, before HandOver resumes the connections.
		defer func() {
			files.Close()
			if u.cfg.Resume != nil {
				u.cfg.Resume()
			}
		}()
	}
	if u.cfg.Settle != nil {
		if err := u.cfg.Settle(ctx); err != nil {
			return fmt.Errorf("quiesce the shim: %w", err)
		}
		// A request Replayable let be may have been answered meanwhile,
		// or be about to (its process exited just before Settle): ask
		// again, now that nothing can change its answer.
		if conns, err = u.cfg.Quiescer.Wait(ctx, u.cfg.Replayable); err != nil {
			return err
		}
	}
	if u.cfg.Snapshot != nil {
		if shim, err = u.cfg.Snapshot(ctx, &files); err != nil {
			return fmt.Errorf("quiesce the shim: %w", err)
		}
	}
	lfd, err := handover.Dup(u.cfg.Listener)
	if err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	fds = append(fds, lfd)
	s := State{Version: StateVersion, Generation: u.cfg.Generation + 1, From: u.cfg.Version, Exe: u.cfg.Exe, ListenerFD: lfd,
		Shim: shim, FDs: files.FDs()}
	for _, c := range conns {
		fd, err := handover.Dup(c.Conn)
		if err != nil {
			return fmt.Errorf("connection of peer %d: %w", c.PeerPID, err)
		}
		fds = append(fds, fd)
		s.Conns = append(s.Conns, Conn{FD: fd, PeerPID: c.PeerPID, Replay: c.Replay})
	}
	if len(s.Shim) > 0 {
		doc, err := Encode(s)
		if err != nil {
			return err
		}
		if err := bin.CheckState(ctx, doc); err != nil {
			return err
		}
	}
	if u.cfg.BeforeExec != nil {
		if err := u.cfg.BeforeExec(); err != nil {
			return err
		}
	}
	u.cfg.Logger.Info("handing over", "to", bin.Answer.Version, "connections", len(s.Conns), "descriptors", len(s.FDs), "generation", s.Generation)
	err = Exec(bin, u.cfg.Argv, u.cfg.Env(), s)
	if u.cfg.AfterFailedExec != nil {
		u.cfg.AfterFailedExec()
	}
	return err
}

// Resumed turns an inherited State into the listener and connections to
// serve: it takes the descriptors over (closing the numbers the State
// names) and returns the listener and the connections in order.
func Resumed(s State) (*net.UnixListener, []Handed, error) {
	var conns []Handed
	ln, err := fileListener(s.ListenerFD)
	if err != nil {
		return nil, nil, err
	}
	for _, c := range s.Conns {
		uc, err := fileConn(c.FD)
		if err != nil {
			for _, h := range conns {
				h.Conn.Close()
			}
			ln.Close()
			return nil, nil, err
		}
		conns = append(conns, Handed{Conn: uc, PeerPID: c.PeerPID, Replay: c.Replay})
	}
	return ln, conns, nil
}

func fileListener(fd int) (*net.UnixListener, error) {
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited listener %d: %w", fd, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("inherited listener %d is not a unix socket", fd)
	}
	// The socket's path belongs to the server as long as it runs.
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

func fileConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "conn")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("inherited connection %d: %w", fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, errors.New("inherited connection is not a unix socket")
	}
	return uc, nil
}

// Cancel drops an accepted upgrade that HandOver never got (the server is
// stopping) and lets the server's readers go on, so that they see the
// server's own shutdown.
func (u *Upgrader) Cancel() {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	select {
	case bin := <-u.pending:
		bin.Close()
		u.mu.Lock()
		u.busy = false
		u.lastErr = "the shim stopped before the hand-over"
		u.mu.Unlock()
		u.cfg.Quiescer.Resume()
	default:
	}
}
