package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// nsHeader is the ttrpc metadata key that carries the containerd namespace.
const nsHeader = "containerd-namespace-ttrpc"

// dialShim connects to a shim's ttrpc socket and returns a task v2 client.
func dialShim(t *testing.T, path string) taskapi.TTRPCTaskService {
	t.Helper()
	conn, err := net.DialTimeout("unix", path, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { _ = c.Close() })
	return taskapi.NewTTRPCTaskClient(c)
}

func nsContext(ns string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	return ttrpc.WithMetadata(ctx, ttrpc.MD{nsHeader: []string{ns}}), cancel
}

func codeOf(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	st, ok := status.FromError(err)
	if !ok {
		return codes.Unknown
	}
	return st.Code()
}

// expectCode fails unless err carries one of the codes.
func expectCode(t *testing.T, what string, err error, want ...codes.Code) {
	t.Helper()
	got := codeOf(err)
	for _, w := range want {
		if got == w {
			t.Logf("%s: %v (%v)", what, got, err)
			return
		}
	}
	t.Errorf("%s: got %v (%v), want %v", what, got, err, want)
}

// Bad inputs straight over ttrpc get the right error codes, and the shim
// keeps serving. This is Tether's contract; containerd's runc shim answers
// some of these differently.
func TestTTRPCBadInputs(t *testing.T) {
	if !isTether() {
		t.Logf("these checks are Tether's contract; against %s some are expected to fail", runtimeName)
	}
	forEachVersion(t, "ttrpc", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "b1")
		s := d.shimOf(t, ns, "b1")
		client := dialShim(t, s.path)
		spec, err := os.ReadFile(filepath.Join(d.bundle(ns, "b1"), "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		// bundle makes a valid-looking bundle for id, so that only the input
		// under test is wrong.
		bundle := func(id string) string {
			dir := d.bundle(ns, id)
			if err := os.MkdirAll(dir, 0o711); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "config.json"), spec, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			return dir
		}
		call := func(f func(ctx context.Context) error) error {
			ctx, cancel := nsContext(ns)
			defer cancel()
			return f(ctx)
		}
		// create calls Create; should it succeed, the task is removed again.
		create := func(req *taskapi.CreateTaskRequest) error {
			err := call(func(ctx context.Context) error { _, err := client.Create(ctx, req); return err })
			if err == nil {
				t.Logf("Create %q unexpectedly succeeded; deleting it", req.ID)
				_ = call(func(ctx context.Context) error {
					_, _ = client.Kill(ctx, &taskapi.KillRequest{ID: req.ID, Signal: 9})
					_, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: req.ID})
					return err
				})
			}
			return err
		}

		expectCode(t, "State of an unknown id", call(func(ctx context.Context) error {
			_, err := client.State(ctx, &taskapi.StateRequest{ID: "no-such-task"})
			return err
		}), codes.NotFound)
		expectCode(t, "Kill of an unknown id", call(func(ctx context.Context) error {
			_, err := client.Kill(ctx, &taskapi.KillRequest{ID: "no-such-task", Signal: 9})
			return err
		}), codes.NotFound)
		expectCode(t, "Delete of an unknown id", call(func(ctx context.Context) error {
			_, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: "no-such-task"})
			return err
		}), codes.NotFound)

		good := bundle("valid-bundle")
		for _, id := range []string{"../x", "a/b", ""} {
			expectCode(t, "Create with id "+strconv.Quote(id), create(&taskapi.CreateTaskRequest{ID: id, Bundle: good}),
				codes.InvalidArgument)
		}
		expectCode(t, "Create with a bundle that does not exist", create(&taskapi.CreateTaskRequest{
			ID: "nobundle", Bundle: d.bundle(ns, "nobundle"),
		}), codes.InvalidArgument, codes.NotFound)
		bundle("dotdot")
		expectCode(t, "Create with .. in the bundle path", create(&taskapi.CreateTaskRequest{
			ID: "dotdot", Bundle: d.taskDir(ns) + "/../" + ns + "/dotdot",
		}), codes.InvalidArgument, codes.NotFound)
		expectCode(t, "Create with malformed containerd.runc.v1.Options", create(&taskapi.CreateTaskRequest{
			ID: "badopts", Bundle: bundle("badopts"),
			Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		}), codes.InvalidArgument)
		expectCode(t, "Create with an unknown options type", create(&taskapi.CreateTaskRequest{
			ID: "unkopts", Bundle: bundle("unkopts"),
			Options: &anypb.Any{TypeUrl: "types.tether.example/e2e.NoSuchOptions", Value: []byte{0x0a, 0x01, 0x78}},
		}), codes.InvalidArgument)
		expectCode(t, "Checkpoint to a relative path", call(func(ctx context.Context) error {
			_, err := client.Checkpoint(ctx, &taskapi.CheckpointTaskRequest{ID: "b1", Path: "relative/image"})
			return err
		}), codes.InvalidArgument)

		// The shim still serves, and the real container still runs.
		var st *taskapi.StateResponse
		if err := call(func(ctx context.Context) error {
			var err error
			st, err = client.State(ctx, &taskapi.StateRequest{ID: "b1"})
			return err
		}); err != nil {
			t.Fatalf("State of the running container after the bad inputs: %v", err)
		}
		if st.Status != tasktypes.Status_RUNNING {
			t.Errorf("State of b1: %v, want RUNNING", st.Status)
		}
		if !alive(s.pid) {
			t.Errorf("the shim %d died", s.pid)
		}
		d.waitStatus(t, ns, "b1", "RUNNING")
	})
}
