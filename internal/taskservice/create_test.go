package taskservice

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/testutil"
)

// TestRegressionFailedCreateLeftRuntimeConfig: the service saved
// tether-runtime.json in the bundle before container.Create and left it
// there when the create failed. Now container.Create writes it and removes
// it with everything else a failed create leaves; a successful create
// keeps it for `delete`.
func TestRegressionFailedCreateLeftRuntimeConfig(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	ctx := ctxT(t)
	for name, files := range map[string]map[string]string{
		"fails":      {"stub-fail": "boom"},
		"fails-late": {"stub-fail-late": "hook failed"},
	} {
		dir := h.bundle(name, files)
		if _, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: name, Bundle: dir, Options: h.options}); err == nil {
			t.Fatalf("%s: create succeeded", name)
		}
		if _, err := os.Stat(bundle.New(dir).RuntimeConfig()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: a failed create left the runtime config behind (stat: %v)", name, err)
		}
	}
	if _, err := h.create(ctx, "ok", map[string]string{"exit-code": "0"}, ""); err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := os.Stat(bundle.New(filepath.Join(h.bundles, "ok")).RuntimeConfig()); err != nil {
		t.Fatalf("a created container has no runtime config: %v", err)
	}
	if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "ok"}); err != nil {
		t.Fatalf("delete: %v", err)
	}
}

// TestRegressionDuplicateCreateMovedShim: the service moved the shim into
// the options' ShimCgroup before it reserved the id, so a Create of an id
// the shim already serves (or one with a bad request) moved the shim all
// the same. Now the move comes after the request is validated and the id
// reserved.
func TestRegressionDuplicateCreateMovedShim(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	ctx := ctxT(t)
	var mu sync.Mutex
	var moves []string
	h.svc.cfg.MoveShim = func(path string) error {
		mu.Lock()
		defer mu.Unlock()
		moves = append(moves, path)
		return nil
	}
	moved := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), moves...)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts, err := proto.Marshal(&runcoptions.Options{BinaryName: self, Root: h.root, ShimCgroup: "/tether-test-shim"})
	if err != nil {
		t.Fatal(err)
	}
	options := &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: opts}
	dir := h.bundle("dup", map[string]string{"exit-code": "0"})
	if _, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "dup", Bundle: dir, Options: options}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := moved(); len(got) != 1 || got[0] != "/tether-test-shim" {
		t.Fatalf("moves after the first create = %v, want one to /tether-test-shim", got)
	}
	_, err = h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "dup", Bundle: dir, Options: options})
	if codeOfErr(err) != codes.AlreadyExists {
		t.Fatalf("duplicate create = %v, want AlreadyExists", err)
	}
	_, err = h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "bad", Bundle: h.bundle("bad", map[string]string{}), Options: options, Stdout: "relative/path"})
	if codeOfErr(err) != codes.InvalidArgument {
		t.Fatalf("create with a relative stdout = %v, want InvalidArgument", err)
	}
	if got := moved(); len(got) != 1 {
		t.Fatalf("moves after a duplicate and an invalid create = %v, want still one", got)
	}
	if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "dup"}); err != nil {
		t.Fatalf("delete: %v", err)
	}
}
