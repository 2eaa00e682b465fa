package taskservice

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"

	"github.com/tether-shim/tether/internal/container"
)

// TestRegressionAdoptStoppedAtFirstFailure: the new image of a live
// upgrade adopted containers until the first that failed, and dropped the
// rest (in map order: any of them). Each is adopted on its own now: the
// one that cannot be is named in the error, the others are served.
func TestRegressionAdoptStoppedAtFirstFailure(t *testing.T) {
	h := newHarness(t)
	stopped := func(id, bundleDir string) container.Handed {
		return container.Handed{ID: id, Bundle: bundleDir, Init: container.ProcessHanded{
			State: "stopped", Pid: 4242,
			Exit: &container.ExitHanded{Pid: 4242, Status: 3, At: time.Unix(1765000000, 0)},
		}}
	}
	hs := []container.Handed{
		stopped("outside", filepath.Join(t.TempDir(), "outside")),
		stopped("kept", h.bundle("kept", map[string]string{})),
	}
	err := h.svc.Adopt(ctxT(t), hs)
	if err == nil || !strings.Contains(err.Error(), "outside") {
		t.Fatalf("Adopt = %v, want an error naming the container outside the bundle parent", err)
	}
	st, err := h.svc.State(ctxT(t), &taskv2.StateRequest{ID: "kept"})
	if err != nil {
		t.Fatalf("State of the container adopted after the failure: %v", err)
	}
	if st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 3 || st.Pid != 4242 {
		t.Errorf("adopted container: %v, want stopped, pid 4242, status 3", st)
	}
	if _, err := h.svc.State(ctxT(t), &taskv2.StateRequest{ID: "outside"}); err == nil {
		t.Error("the container that could not be adopted is served")
	}
}
