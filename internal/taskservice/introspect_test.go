package taskservice

import (
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"

	"github.com/tether-shim/tether/internal/introspect"
)

// TestContainersForInspect: the adapter reports each container with its
// runtime, and its processes (init first, then execs by id) with their
// status, pid, exit and stdio mode, as the task API's State does.
func TestContainersForInspect(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	if got := h.svc.Containers(); len(got) != 0 {
		t.Fatalf("no containers yet: %+v", got)
	}
	h.running(ctx, "c")
	for _, id := range []string{"e2", "e1"} {
		if _, err := h.svc.Exec(ctx, &taskv2.ExecProcessRequest{ID: "c", ExecID: id, Spec: processSpec(t, "exit", "5")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: "c", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: "c", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	got := h.svc.Containers()
	if len(got) != 1 {
		t.Fatalf("containers %+v", got)
	}
	c := got[0]
	st, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "c" || c.Status != "running" || c.Pid != int(st.Pid) || c.Bundle != st.Bundle {
		t.Errorf("container %+v, State says %v", c, st)
	}
	if c.Runtime.Root != h.runRoot() || c.Runtime.Binary == "" {
		t.Errorf("runtime %+v, want root %s", c.Runtime, h.runRoot())
	}
	if len(c.Processes) != 3 {
		t.Fatalf("processes %+v, want the init and two execs", c.Processes)
	}
	init, e1, e2 := c.Processes[0], c.Processes[1], c.Processes[2]
	if init.ID != "c" || init.ExecID != "" || init.Pid != c.Pid || init.ExitStatus != nil || init.Stdio.Mode != introspect.ModeNull {
		t.Errorf("init %+v", init)
	}
	if e1.ExecID != "e1" || e1.Status != "stopped" || e1.ExitStatus == nil || *e1.ExitStatus != 5 || e1.ExitedAt == nil {
		t.Errorf("e1 %+v, want stopped with exit 5", e1)
	}
	if e2.ExecID != "e2" || e2.Status != "created" || e2.Pid != 0 || e2.ExitStatus != nil {
		t.Errorf("e2 %+v, want created", e2)
	}
}
