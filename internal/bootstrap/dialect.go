package bootstrap

import (
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"strings"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Dialect is how a containerd version expects `start` to answer.
type Dialect int

// The dialects, oldest first.
const (
	// DialectPlain is the bare address with no trailing newline
	// (containerd 1.6 and 1.7; 1.7 does not trim the output).
	DialectPlain Dialect = iota
	// DialectJSON is {"version":3,"address":...,"protocol":"ttrpc"}
	// (containerd 2.0 to 2.2).
	DialectJSON
	// DialectProto is a protobuf BootstrapResult (containerd 2.3+).
	DialectProto
)

// String names the dialect for logs.
func (d Dialect) String() string {
	switch d {
	case DialectPlain:
		return "plain"
	case DialectJSON:
		return "json"
	case DialectProto:
		return "protobuf"
	}
	return fmt.Sprintf("dialect(%d)", int(d))
}

// taskAPIVersion is the shim protocol version Tether answers in the JSON and
// protobuf dialects: 3 means the task API v3, which Tether serves beside v2.
const taskAPIVersion = 3

// Request is what `start` learned from its stdin and flags.
type Request struct {
	Dialect Dialect
	// Params is set in the protobuf dialect.
	Params *bootapi.BootstrapParams
	// Options is the runtime options Any, if containerd sent one.
	Options *anypb.Any
}

// ParseStartInput tells the dialect from what containerd wrote to stdin and
// the flags. containerd 2.3+ writes a BootstrapParams whose instance_id and
// namespace equal the -id and -namespace flags; older versions write the
// runtime options Any, or nothing. A legacy options Any can also parse as
// BootstrapParams, which is why the ids are compared. Between 1.x and
// 2.0-2.2 nothing on stdin, in the flags or in the environment differs, so
// the containerd binary named by -publish-binary decides: see isContainerd2.
func ParseStartInput(stdin []byte, f Flags) (Request, error) {
	if len(stdin) > 0 {
		var params bootapi.BootstrapParams
		if err := proto.Unmarshal(stdin, &params); err == nil &&
			params.GetInstanceID() == f.ID && params.GetNamespace() == f.Namespace {
			req := Request{Dialect: DialectProto, Params: &params}
			for _, ext := range params.GetExtensions() {
				if v := ext.GetValue(); v != nil && strings.HasSuffix(v.GetTypeUrl(), "Options") {
					req.Options = v
				}
			}
			return req, nil
		}
		var opts anypb.Any
		if err := proto.Unmarshal(stdin, &opts); err != nil {
			return Request{}, fmt.Errorf("stdin is neither BootstrapParams nor a runtime options Any: %w", err)
		}
		return Request{Dialect: legacyDialect(f.PublishBinary), Options: &opts}, nil
	}
	return Request{Dialect: legacyDialect(f.PublishBinary)}, nil
}

func legacyDialect(containerdBinary string) Dialect {
	if isContainerd2(containerdBinary) {
		return DialectJSON
	}
	return DialectPlain
}

// isContainerd2 reports whether the binary is containerd 2.x, from the Go
// build information every containerd binary carries: the main package of
// 2.x is github.com/containerd/containerd/v2/cmd/containerd. Reading it
// touches a few pages of the file and runs nothing. Any doubt answers false,
// and the plain dialect is understood by every version.
func isContainerd2(path string) bool {
	if path == "" {
		return false
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return false
	}
	return strings.HasPrefix(bi.Path, "github.com/containerd/containerd/v2/")
}

// Answer encodes the address for the dialect.
func Answer(d Dialect, address string) ([]byte, error) {
	switch d {
	case DialectPlain:
		return []byte(address), nil
	case DialectJSON:
		return json.Marshal(struct {
			Version  int    `json:"version"`
			Address  string `json:"address"`
			Protocol string `json:"protocol"`
		}{taskAPIVersion, address, "ttrpc"})
	case DialectProto:
		return proto.Marshal(&bootapi.BootstrapResult{
			Version:  taskAPIVersion,
			Address:  address,
			Protocol: "ttrpc",
		})
	}
	return nil, fmt.Errorf("unknown dialect %v", d)
}
