package events

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/typeurl/v2"

	"github.com/tether-shim/tether/internal/events/eventstest"
	"github.com/tether-shim/tether/internal/testutil"
)

var (
	_ Sink = (*Publisher)(nil)
	_ Sink = (*eventstest.Recorder)(nil)
)

// newTestOutbox returns an Outbox over a fresh Recorder, logging into a
// capture.
func newTestOutbox(t *testing.T) (*Outbox, *eventstest.Recorder, *testutil.Log) {
	rec := &eventstest.Recorder{}
	logs, logger := testutil.NewLog(t)
	return NewOutbox(rec, logger), rec, logs
}

func startEv() *apievents.TaskStart { return &apievents.TaskStart{ContainerID: "c", Pid: 7} }
func exitEv() *apievents.TaskExit   { return &apievents.TaskExit{ContainerID: "c", ID: "c", Pid: 7} }

// topics fails unless rec recorded exactly want, in order.
func checkTopics(t *testing.T, rec *eventstest.Recorder, want ...string) {
	t.Helper()
	if got := rec.Topics(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("published %v, want %v", got, want)
	}
}

func TestOutboxSendIsImmediate(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.Send(TopicCreate, &apievents.TaskCreate{ContainerID: "c"})
	checkTopics(t, rec, TopicCreate)
	o.Send(TopicPaused, &apievents.TaskPaused{ContainerID: "c"})
	o.Send(TopicResumed, &apievents.TaskResumed{ContainerID: "c"})
	checkTopics(t, rec, TopicCreate, TopicPaused, TopicResumed)
}

func TestOutboxExitWithoutPendingStartIsImmediate(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.Started(TopicStart, startEv())
	o.Exit(TopicExit, exitEv())
	checkTopics(t, rec, TopicStart, TopicExit)
}

func TestOutboxExitHeldUntilStarted(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.Send(TopicCreate, &apievents.TaskCreate{ContainerID: "c"})
	o.ExpectStart()
	o.Exit(TopicExit, exitEv())
	checkTopics(t, rec, TopicCreate)
	o.Started(TopicStart, startEv())
	checkTopics(t, rec, TopicCreate, TopicStart, TopicExit)

	evs := rec.Events()
	if ev, ok := evs[2].Event.(*apievents.TaskExit); !ok || ev.GetPid() != 7 {
		t.Errorf("released exit is %v", evs[2].Event)
	}
}

func TestOutboxAbortStartReleasesExit(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.ExpectStart()
	o.Exit(TopicExit, exitEv())
	checkTopics(t, rec)
	o.AbortStart()
	checkTopics(t, rec, TopicExit)
	// The start that failed cannot be reported after the exit.
	o.Started(TopicStart, startEv())
	checkTopics(t, rec, TopicExit)
}

func TestOutboxAbortStartWithoutExit(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.ExpectStart()
	o.AbortStart()
	o.AbortStart() // no-op
	o.Exit(TopicExit, exitEv())
	checkTopics(t, rec, TopicExit)
}

// An abandoned outbox drops the held exit and everything after it, whether
// the exit came before Abandon or after.
func TestOutboxAbandonDropsEverything(t *testing.T) {
	t.Parallel()
	for _, exitFirst := range []bool{true, false} {
		o, rec, _ := newTestOutbox(t)
		o.ExpectStart()
		if exitFirst {
			o.Exit(TopicExit, exitEv())
		}
		o.Abandon()
		if !exitFirst {
			o.Exit(TopicExit, exitEv())
		}
		o.Started(TopicCreate, &apievents.TaskCreate{ContainerID: "c"})
		o.ExpectStart()
		o.AbortStart()
		o.Send(TopicDelete, &apievents.TaskDelete{ContainerID: "c"})
		checkTopics(t, rec)
	}
}

// A pending start does not hold Send back; only an exit does.
func TestOutboxSendUnaffectedByPendingStart(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.ExpectStart()
	o.Send(TopicOOM, &apievents.TaskOOM{ContainerID: "c"})
	checkTopics(t, rec, TopicOOM)
	o.Started(TopicStart, startEv())
	o.Exit(TopicExit, exitEv())
	checkTopics(t, rec, TopicOOM, TopicStart, TopicExit)
}

// Events sent after a held exit stay behind it.
func TestOutboxSendAfterHeldExitFollowsExit(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.ExpectStart()
	o.Exit(TopicExit, exitEv())
	o.Send(TopicDelete, &apievents.TaskDelete{ContainerID: "c"})
	checkTopics(t, rec)
	o.Started(TopicStart, startEv())
	checkTopics(t, rec, TopicStart, TopicExit, TopicDelete)
	o.Send(TopicDelete, &apievents.TaskDelete{ContainerID: "c"})
	checkTopics(t, rec, TopicStart, TopicExit, TopicDelete, TopicDelete)
}

func TestOutboxSendAfterExit(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.Exit(TopicExit, exitEv())
	o.Send(TopicDelete, &apievents.TaskDelete{ContainerID: "c"})
	checkTopics(t, rec, TopicExit, TopicDelete)
}

func TestOutboxSecondExitDropped(t *testing.T) {
	t.Parallel()
	t.Run("published", func(t *testing.T) {
		t.Parallel()
		o, rec, logs := newTestOutbox(t)
		o.Exit(TopicExit, exitEv())
		o.Exit(TopicExit, exitEv())
		checkTopics(t, rec, TopicExit)
		if w := logs.Matching(slog.LevelWarn, "events: second exit event dropped"); len(w) != 1 {
			t.Errorf("drop logged %d times, want once", len(w))
		}
	})
	t.Run("held", func(t *testing.T) {
		t.Parallel()
		o, rec, logs := newTestOutbox(t)
		o.ExpectStart()
		o.Exit(TopicExit, exitEv())
		o.Exit(TopicExit, exitEv())
		o.Started(TopicStart, startEv())
		checkTopics(t, rec, TopicStart, TopicExit)
		if w := logs.Matching(slog.LevelWarn, "events: second exit event dropped"); len(w) != 1 {
			t.Errorf("drop logged %d times, want once", len(w))
		}
	})
}

// Started after an exit that went out (no ExpectStart: a caller bug) would put
// a start after the exit; it is dropped instead.
func TestOutboxStartedAfterPublishedExitDropped(t *testing.T) {
	t.Parallel()
	o, rec, logs := newTestOutbox(t)
	o.Exit(TopicExit, exitEv())
	o.Started(TopicStart, startEv())
	checkTopics(t, rec, TopicExit)
	if w := logs.Matching(slog.LevelWarn, "events: start event after the exit dropped"); len(w) != 1 {
		t.Errorf("drop logged %d times, want once", len(w))
	}
}

func TestOutboxExpectStartAfterExitIgnored(t *testing.T) {
	t.Parallel()
	o, rec, logs := newTestOutbox(t)
	o.Exit(TopicExit, exitEv())
	o.ExpectStart()
	o.Send(TopicDelete, &apievents.TaskDelete{ContainerID: "c"}) // not held
	checkTopics(t, rec, TopicExit, TopicDelete)
	if w := logs.Matching(slog.LevelWarn, "events: ExpectStart after the exit ignored"); len(w) != 1 {
		t.Errorf("ignore logged %d times, want once", len(w))
	}
}

func TestOutboxExpectStartTwice(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.ExpectStart()
	o.ExpectStart()
	o.Exit(TopicExit, exitEv())
	o.Started(TopicStart, startEv())
	checkTopics(t, rec, TopicStart, TopicExit)
}

// The reaper's Exit races the Start handler's Started: the start is always
// published first, both exactly once.
func TestOutboxRaceStartedVsExit(t *testing.T) {
	t.Parallel()
	for i := range 1000 {
		rec := &eventstest.Recorder{}
		o := NewOutbox(rec, testLogger(t))
		o.ExpectStart()
		var wg sync.WaitGroup
		wg.Go(func() { o.Exit(TopicExit, exitEv()) })
		wg.Go(func() { o.Started(TopicStart, startEv()) })
		wg.Wait()
		if got := strings.Join(rec.Topics(), " "); got != TopicStart+" "+TopicExit {
			t.Fatalf("iteration %d: published %s", i, got)
		}
	}
}

// The reaper's Exit races a failing start: the exit is published exactly once,
// without a start.
func TestOutboxRaceAbortStartVsExit(t *testing.T) {
	t.Parallel()
	for i := range 1000 {
		rec := &eventstest.Recorder{}
		o := NewOutbox(rec, testLogger(t))
		o.ExpectStart()
		var wg sync.WaitGroup
		wg.Go(func() { o.Exit(TopicExit, exitEv()) })
		wg.Go(o.AbortStart)
		wg.Wait()
		if got := strings.Join(rec.Topics(), " "); got != TopicExit {
			t.Fatalf("iteration %d: published %s", i, got)
		}
	}
}

// End to end through a real Publisher and ttrpc: many processes, each with
// its exit racing its start; containerd sees every start before its exit.
func TestOutboxOverPublisher(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	p, _ := startPublisher(t, f.path, fastConfig())

	const procs = 200
	var wg sync.WaitGroup
	for i := range procs {
		id := fmt.Sprintf("c%d", i)
		o := NewOutbox(p, testLogger(t))
		o.Send(TopicCreate, &apievents.TaskCreate{ContainerID: id})
		o.ExpectStart()
		wg.Go(func() { o.Exit(TopicExit, &apievents.TaskExit{ContainerID: id, ID: id}) })
		wg.Go(func() { o.Started(TopicStart, &apievents.TaskStart{ContainerID: id}) })
	}
	wg.Wait()
	envs := f.waitRecorded(3 * procs)
	closePublisher(t, p)

	seen := make(map[string][]string)
	for _, env := range envs {
		v, err := typeurl.UnmarshalAny(env.GetEvent())
		if err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		id := v.(interface{ GetContainerID() string }).GetContainerID()
		seen[id] = append(seen[id], env.GetTopic())
	}
	want := strings.Join([]string{TopicCreate, TopicStart, TopicExit}, " ")
	for i := range procs {
		id := fmt.Sprintf("c%d", i)
		if got := strings.Join(seen[id], " "); got != want {
			t.Errorf("%s: containerd saw %s, want %s", id, got, want)
		}
	}
}

// How other packages use the Recorder: wait for the events a concurrent
// Outbox produced.
func TestOutboxWithRecorderWaitFor(t *testing.T) {
	t.Parallel()
	rec := &eventstest.Recorder{}
	o := NewOutbox(rec, testLogger(t))
	o.ExpectStart()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { o.Exit(TopicExit, exitEv()) })
	wg.Go(func() { o.Started(TopicStart, startEv()) })
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	evs, err := rec.WaitFor(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if evs[0].Topic != TopicStart || evs[1].Topic != TopicExit {
		t.Errorf("published %s then %s", evs[0].Topic, evs[1].Topic)
	}
}

// TestRegressionOutboxWarnsToDefault: the outbox's warnings went to
// slog.Default, which goes nowhere in the server; they go to the logger it
// is given.
func TestRegressionOutboxWarnsToDefault(t *testing.T) {
	log, logger := testutil.NewLog(t)
	o := NewOutbox(&eventstest.Recorder{}, logger)
	o.Exit(TopicExit, exitEv())
	o.Exit(TopicExit, exitEv())
	if _, ok := log.Find(slog.LevelWarn, "second exit event dropped"); !ok {
		t.Fatalf("the dropped second exit was not logged through the given logger: %v", log.Records())
	}
}

func TestNewOutboxRefusesNilLogger(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewOutbox(sink, nil) did not panic")
		}
	}()
	NewOutbox(&eventstest.Recorder{}, nil)
}
