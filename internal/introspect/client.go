package introspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// Errors of a Client, for errors.Is.
var (
	// ErrNotServed: the shim answers but does not serve ServiceName, as a
	// shim of a version before it does not.
	ErrNotServed = errors.New("the shim does not serve " + ServiceName + ": it is an older version")
	// ErrOtherUID: the socket, or the shim on it, belongs to another uid,
	// and a shim serves only peers of its own.
	ErrOtherUID = errors.New("the shim belongs to another uid")
	// ErrNoServer: nothing listens on the socket.
	ErrNoServer = errors.New("no server listens on the socket")
)

// Client calls a shim's ServiceName. It is not safe for concurrent use.
type Client struct {
	conn net.Conn
	c    *ttrpc.Client
	// Pid is the pid SO_PEERCRED gives for the connection: the process
	// that made the listening socket, which for a Tether shim is its
	// `start`, long gone, not the server it handed the socket to. The
	// server's pid is in its Snapshot.
	Pid int
}

// Dial connects to the shim socket at path. A socket of another uid than
// this process's effective uid is ErrOtherUID, a socket nobody listens on
// ErrNoServer. ctx bounds the connect.
func Dial(ctx context.Context, path string) (*Client, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("shim socket: %w", err)
	}
	if st.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("%s is not a socket", path)
	}
	me := os.Geteuid()
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != me {
		return nil, fmt.Errorf("socket %s belongs to uid %d, this is uid %d: %w", path, sys.Uid, me, ErrOtherUID)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: %w", path, ErrNoServer)
		}
		return nil, fmt.Errorf("connect to %s: %w", path, err)
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("connect to %s: not a unix connection: %T", path, conn)
	}
	uid, pid, err := PeerCred(uc)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect to %s: %w", path, err)
	}
	if uid != me {
		conn.Close()
		return nil, fmt.Errorf("the socket %s was made by uid %d, this is uid %d: %w", path, uid, me, ErrOtherUID)
	}
	return &Client{conn: conn, c: ttrpc.NewClient(conn), Pid: pid}, nil
}

// PeerCred is the uid and pid of the process at the other end of c
// (SO_PEERCRED: as of when the connection was made).
func PeerCred(c *net.UnixConn) (uid, pid int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, 0, err
	}
	if cerr != nil {
		return -1, 0, cerr
	}
	return int(cred.Uid), int(cred.Pid), nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// call calls method with req and returns the reply's bytes. A reply of
// another type than BytesType is an error: a shim of another version of
// the service.
func (c *Client) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	var resp anypb.Any
	if err := c.c.Call(ctx, ServiceName, method, &anypb.Any{TypeUrl: BytesType, Value: req}, &resp); err != nil {
		if s, ok := status.FromError(err); ok && s.Code() == codes.Unimplemented {
			return nil, fmt.Errorf("%w (%s)", ErrNotServed, s.Message())
		}
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	if t := resp.GetTypeUrl(); t != BytesType {
		return nil, fmt.Errorf("%s: answer of type %q, want %q: the shim speaks another version of %s", method, t, BytesType, ServiceName)
	}
	return resp.GetValue(), nil
}

// Snapshot returns the shim's state.
func (c *Client) Snapshot(ctx context.Context) (*Snapshot, error) {
	data, err := c.call(ctx, MethodSnapshot, nil)
	if err != nil {
		return nil, err
	}
	return DecodeSnapshot(data)
}

// Stacks returns the stacks of the shim's goroutines, as text.
func (c *Client) Stacks(ctx context.Context) ([]byte, error) {
	return c.call(ctx, MethodStacks, nil)
}

// Profile returns a profile in pprof's format.
func (c *Client) Profile(ctx context.Context, r ProfileRequest) ([]byte, error) {
	req, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return c.call(ctx, MethodProfile, req)
}
