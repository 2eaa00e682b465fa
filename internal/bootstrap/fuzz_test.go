package bootstrap

import (
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzParseStartInput: whatever containerd (or anyone) writes to start's
// stdin, ParseStartInput returns a dialect or an error, never panics, and
// takes it for BootstrapParams only when its ids are the flags'.
func FuzzParseStartInput(f *testing.F) {
	params, _ := proto.Marshal(&bootapi.BootstrapParams{InstanceID: "c1", Namespace: "ns", ContainerdGrpcAddress: "/run/c.sock"})
	opts, _ := proto.Marshal(&anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{0x32, 0x04, 'c', 'r', 'u', 'n'}})
	f.Add(params, "c1", "ns")
	f.Add(opts, "c1", "ns")
	f.Add([]byte{}, "c1", "ns")
	f.Add([]byte{0xff, 0xff, 0xff}, "x", "y")
	f.Fuzz(func(t *testing.T, stdin []byte, id, ns string) {
		req, err := ParseStartInput(stdin, Flags{ID: id, Namespace: ns, PublishBinary: "/nonexistent/containerd"})
		if err != nil {
			return
		}
		if req.Dialect == DialectProto {
			if req.Params.GetInstanceID() != id || req.Params.GetNamespace() != ns {
				t.Fatalf("BootstrapParams for %q/%q taken for flags %q/%q", req.Params.GetInstanceID(), req.Params.GetNamespace(), id, ns)
			}
		}
	})
}
