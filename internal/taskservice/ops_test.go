package taskservice

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	eventsapi "github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/events"
)

// TestPauseResumeUpdateCheckpoint drives the operations of issue 5 through
// the stub runtime: state, events, the runtime's arguments and bad input.
func TestPauseResumeUpdateCheckpoint(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	h.running(ctx, "c")

	if _, err := h.svc.Pause(ctx, &taskv2.PauseRequest{ID: "c"}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if st, _ := h.svc.State(ctx, &taskv2.StateRequest{ID: "c"}); st.Status != tasktypes.Status_PAUSED {
		t.Fatalf("state after pause = %v", st.Status)
	}
	if _, err := h.svc.Pause(ctx, &taskv2.PauseRequest{ID: "c"}); codeOfErr(err) != codes.FailedPrecondition {
		t.Fatalf("pause twice: %v, want FailedPrecondition", err)
	}
	if _, err := h.svc.Exec(ctx, &taskv2.ExecProcessRequest{ID: "c", ExecID: "e", Spec: processSpec(t, "sleep")}); codeOfErr(err) != codes.FailedPrecondition {
		t.Fatalf("exec while paused: %v, want FailedPrecondition", err)
	}
	if _, err := h.svc.Resume(ctx, &taskv2.ResumeRequest{ID: "c"}); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if st, _ := h.svc.State(ctx, &taskv2.StateRequest{ID: "c"}); st.Status != tasktypes.Status_RUNNING {
		t.Fatalf("state after resume = %v", st.Status)
	}
	if _, err := h.svc.Resume(ctx, &taskv2.ResumeRequest{ID: "c"}); codeOfErr(err) != codes.FailedPrecondition {
		t.Fatalf("resume a running container: %v, want FailedPrecondition", err)
	}

	res := &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: []byte(`{"memory":{"limit":33554432}}`)}
	if _, err := h.svc.Update(ctx, &taskv2.UpdateTaskRequest{ID: "c", Resources: res}); err != nil {
		t.Fatalf("update: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(h.runRoot(), "c", "resources")); err != nil || !strings.Contains(string(data), `"limit":33554432`) {
		t.Fatalf("the runtime got resources %q, %v", data, err)
	}
	for name, req := range map[string]*taskv2.UpdateTaskRequest{
		"no resources": {ID: "c"},
		"bad json":     {ID: "c", Resources: &anypb.Any{Value: []byte("{")}},
		"unknown id":   {ID: "nope", Resources: res},
		"invalid id":   {ID: "../c", Resources: res},
	} {
		want := codes.InvalidArgument
		if name == "unknown id" {
			want = codes.NotFound
		}
		if _, err := h.svc.Update(ctx, req); codeOfErr(err) != want {
			t.Errorf("update %s: %v, want %v", name, err, want)
		}
	}

	cpOpts, err := proto.Marshal(&runcoptions.CheckpointOptions{
		OpenTcp: true, FileLocks: true, CgroupsMode: "soft", EmptyNamespaces: []string{"network"},
		WorkPath: "/tmp/cp-work",
	})
	if err != nil {
		t.Fatal(err)
	}
	req := &taskv2.CheckpointTaskRequest{ID: "c", Path: "/tmp/cp-image", Options: &anypb.Any{TypeUrl: "containerd.runc.v1.CheckpointOptions", Value: cpOpts}}
	if _, err := h.svc.Checkpoint(ctx, req); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	args, err := os.ReadFile(filepath.Join(h.runRoot(), "c", "checkpoint-args"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--image-path /tmp/cp-image", "--work-path /tmp/cp-work", "--tcp-established", "--file-locks", "--manage-cgroups-mode soft", "--empty-ns network", "--leave-running"} {
		if !strings.Contains(string(args), want) {
			t.Errorf("checkpoint args %q lack %q", args, want)
		}
	}
	for name, bad := range map[string]*taskv2.CheckpointTaskRequest{
		"relative path": {ID: "c", Path: "cp"},
		"bad cgroups":   {ID: "c", Path: "/tmp/cp", Options: mustAny(t, &runcoptions.CheckpointOptions{CgroupsMode: "loose"})},
		"foreign type":  {ID: "c", Path: "/tmp/cp", Options: &anypb.Any{TypeUrl: "example.com/X"}},
		"garbage":       {ID: "c", Path: "/tmp/cp", Options: &anypb.Any{TypeUrl: "containerd.runc.v1.CheckpointOptions", Value: []byte{0xff}}},
		"no image path": {ID: "c"},
	} {
		if _, err := h.svc.Checkpoint(ctx, bad); codeOfErr(err) != codes.InvalidArgument {
			t.Errorf("checkpoint %s: %v, want InvalidArgument", name, err)
		}
	}

	want := []string{events.TopicCreate, events.TopicStart, events.TopicPaused, events.TopicResumed, events.TopicCheckpointed}
	got, err := h.rec.WaitFor(ctx, len(want))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(topicsOf(got), " ") != strings.Join(want, " ") {
		t.Fatalf("events = %v, want %v", topicsOf(got), want)
	}
	if cp := got[4].Event.(*eventsapi.TaskCheckpointed); cp.ContainerID != "c" || cp.Checkpoint != "/tmp/cp-image" {
		t.Fatalf("TaskCheckpointed = %v", cp)
	}
	if _, err := h.svc.Kill(ctx, &taskv2.KillRequest{ID: "c", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
}

func mustAny(t *testing.T, m *runcoptions.CheckpointOptions) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "containerd.runc.v1.CheckpointOptions", Value: b}
}
