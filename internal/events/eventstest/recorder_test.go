package eventstest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
)

func TestRecorderRecordsCopiesInOrder(t *testing.T) {
	t.Parallel()
	var r Recorder // zero value
	ev := &apievents.TaskExit{ContainerID: "c", Pid: 1}
	r.Publish("/tasks/exit", ev)
	ev.Pid = 2 // must not show: Publish copies
	r.Publish("/tasks/delete", &apievents.TaskDelete{ContainerID: "c"})
	r.Publish("/tasks/oom", nil)

	evs := r.Events()
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3", len(evs))
	}
	if got := evs[0].Event.(*apievents.TaskExit).GetPid(); got != 1 {
		t.Errorf("recorded pid %d, want 1", got)
	}
	if evs[2].Event != nil {
		t.Errorf("nil event recorded as %v", evs[2].Event)
	}
	if got := r.Topics(); len(got) != 3 || got[0] != "/tasks/exit" || got[1] != "/tasks/delete" || got[2] != "/tasks/oom" {
		t.Errorf("topics %v", got)
	}
	evs[0].Topic = "changed" // Events returns a copy
	if r.Events()[0].Topic != "/tasks/exit" {
		t.Error("Events shares its slice with the Recorder")
	}
}

func TestRecorderWaitFor(t *testing.T) {
	t.Parallel()
	var r Recorder
	const writers, each = 4, 100
	var wg sync.WaitGroup
	defer wg.Wait()
	for range writers {
		wg.Go(func() {
			for range each {
				r.Publish("/tasks/exit", &apievents.TaskExit{})
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	evs, err := r.WaitFor(ctx, writers*each)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) < writers*each {
		t.Errorf("WaitFor returned %d events", len(evs))
	}
}

func TestRecorderWaitForGivesUp(t *testing.T) {
	t.Parallel()
	var r Recorder
	r.Publish("/tasks/exit", &apievents.TaskExit{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	evs, err := r.WaitFor(ctx, 2)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitFor = %v, want a deadline error", err)
	}
	if len(evs) != 1 {
		t.Errorf("WaitFor returned %d events, want the 1 recorded", len(evs))
	}
}
