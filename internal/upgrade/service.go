package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// ServiceName is the ttrpc service of live upgrade on the shim's socket.
// Its messages are JSON objects (Request, Accepted, Status) in the value of
// a google.protobuf.Any of type jsonType, so that it needs no generated code
// (and no message type the shim does not link already).
const ServiceName = "tether.upgrade.v1.Upgrade"

// jsonType is the type URL of the service's messages.
const jsonType = "tether.upgrade.v1/json"

// Request asks a shim to upgrade.
type Request struct {
	// ExpectVersion, if set, is the build the binary on disk must report;
	// any other build is refused.
	ExpectVersion string `json:"expect_version,omitempty"`
}

// Accepted is the answer to an accepted Request: the shim has paused
// reading and hands over once every request read is answered. Any request
// sent after this answer is answered by the new image (or, if the hand-over
// fails after all, by the old one, whose Status then tells why).
type Accepted struct {
	// From and To are the builds of the running image and of the binary.
	From string `json:"from"`
	To   string `json:"to"`
	// StateVersion is the version of the state document handed over.
	StateVersion int `json:"state_version"`
	// Exe is the path of the binary.
	Exe string `json:"exe"`
}

// Status describes a running shim server.
type Status struct {
	// Pid is the server's pid, which upgrades keep.
	Pid int `json:"pid"`
	// Version is the running image's build.
	Version string `json:"version"`
	// Exe is the path upgrades re-execute.
	Exe string `json:"exe"`
	// StateVersion is the version of the state document it writes.
	StateVersion int `json:"state_version"`
	// Generation counts the upgrades the server went through.
	Generation int `json:"generation"`
	// LastError is why the last accepted upgrade failed after it was
	// accepted, if it did.
	LastError string `json:"last_error,omitempty"`
}

// Backend serves the service.
type Backend interface {
	Upgrade(ctx context.Context, r Request) (Accepted, error)
	Status(ctx context.Context) Status
}

// Register adds the service to srv.
func Register(srv *ttrpc.Server, b Backend) {
	srv.RegisterService(ServiceName, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Upgrade": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var r Request
			if err := decodeMsg(unmarshal, &r); err != nil {
				return nil, err
			}
			a, err := b.Upgrade(ctx, r)
			if err != nil {
				code := codes.Unknown
				if errors.Is(err, ErrRefused) {
					code = codes.FailedPrecondition
				}
				return nil, status.Error(code, err.Error())
			}
			return encodeMsg(a)
		},
		"Status": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var none struct{}
			if err := decodeMsg(unmarshal, &none); err != nil {
				return nil, err
			}
			return encodeMsg(b.Status(ctx))
		},
	}})
}

func decodeMsg(unmarshal func(any) error, v any) error {
	var m anypb.Any
	if err := unmarshal(&m); err != nil {
		return err
	}
	if len(m.GetValue()) == 0 {
		return nil
	}
	if m.GetTypeUrl() != jsonType {
		return status.Errorf(codes.InvalidArgument, "%s: message of type %q, want %q", ServiceName, m.GetTypeUrl(), jsonType)
	}
	if err := json.Unmarshal(m.GetValue(), v); err != nil {
		return status.Errorf(codes.InvalidArgument, "%s: %v", ServiceName, err)
	}
	return nil
}

func encodeMsg(v any) (*anypb.Any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: jsonType, Value: b}, nil
}

// Client calls the service over a ttrpc client.
type Client struct{ c *ttrpc.Client }

// NewClient returns a Client on c, which the caller closes.
func NewClient(c *ttrpc.Client) *Client { return &Client{c: c} }

// Upgrade asks the shim to upgrade.
func (c *Client) Upgrade(ctx context.Context, r Request) (Accepted, error) {
	var a Accepted
	err := c.call(ctx, "Upgrade", r, &a)
	return a, err
}

// Status asks the shim how it is.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.call(ctx, "Status", struct{}{}, &s)
	return s, err
}

func (c *Client) call(ctx context.Context, method string, req, resp any) error {
	in, err := encodeMsg(req)
	if err != nil {
		return err
	}
	var out anypb.Any
	if err := c.c.Call(ctx, ServiceName, method, in, &out); err != nil {
		if st, ok := status.FromError(err); ok {
			return fmt.Errorf("%s", st.Message())
		}
		return err
	}
	if out.GetTypeUrl() != jsonType {
		return fmt.Errorf("%s.%s answer of type %q, want %q", ServiceName, method, out.GetTypeUrl(), jsonType)
	}
	if err := json.Unmarshal(out.GetValue(), resp); err != nil {
		return fmt.Errorf("%s.%s answer: %w", ServiceName, method, err)
	}
	return nil
}
