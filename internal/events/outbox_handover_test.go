package events

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	apievents "github.com/containerd/containerd/api/events"

	"github.com/tether-shim/tether/internal/events/eventstest"
	"github.com/tether-shim/tether/internal/testutil"
)

// outboxOp is one call on an Outbox, as the container package makes them.
type outboxOp struct {
	name string
	do   func(*Outbox)
}

var outboxOps = []outboxOp{
	{"ExpectStart", func(o *Outbox) { o.ExpectStart() }},
	{"Started", func(o *Outbox) { o.Started(TopicStart, startEv()) }},
	{"AbortStart", func(o *Outbox) { o.AbortStart() }},
	{"Exit", func(o *Outbox) { o.Exit(TopicExit, exitEv()) }},
	{"Send", func(o *Outbox) { o.Send(TopicDelete, &apievents.TaskDelete{ContainerID: "c"}) }},
	{"Abandon", func(o *Outbox) { o.Abandon() }},
}

// opSequences returns every sequence of outboxOps of length 0 to n.
func opSequences(n int) [][]outboxOp {
	seqs := [][]outboxOp{nil}
	last := [][]outboxOp{nil}
	for range n {
		var next [][]outboxOp
		for _, s := range last {
			for _, op := range outboxOps {
				next = append(next, append(append([]outboxOp(nil), s...), op))
			}
		}
		seqs = append(seqs, next...)
		last = next
	}
	return seqs
}

func opNames(ops []outboxOp) string {
	names := make([]string, len(ops))
	for i, op := range ops {
		names[i] = op.name
	}
	return "[" + strings.Join(names, " ") + "]"
}

// For every sequence of up to three Outbox calls before the hand-over and
// up to three after it, an Outbox handed over (HandOver, JSON, AdoptOutbox
// onto a new Sink) publishes, old and new Sink together, exactly what one
// Outbox given all the calls publishes: the one-exit rule and the start
// before the exit hold across the hand-over. HandOver refuses exactly when
// a start is pending, and then leaves the Outbox as it was. The combined
// stream never has two exits or a start after the exit.
func TestOutboxHandOverEquivalence(t *testing.T) {
	t.Parallel()
	logger := slog.New(slog.DiscardHandler)
	seqs := opSequences(3)
	handed, refused := 0, 0
	for _, before := range seqs {
		o := NewOutbox(&eventstest.Recorder{}, logger)
		for _, op := range before {
			op.do(o)
		}
		pending := o.startPending
		h, err := o.HandOver()
		if pending {
			if err == nil || !strings.Contains(err.Error(), "start is pending") {
				t.Fatalf("%s: HandOver with a start pending = %v, want refused", opNames(before), err)
			}
			refused++
			continue
		}
		if err != nil {
			t.Fatalf("%s: HandOver: %v", opNames(before), err)
		}
		h = throughJSON(t, h)
		handed++
		for _, after := range seqs {
			refRec := &eventstest.Recorder{}
			ref := NewOutbox(refRec, logger)
			oldRec, newRec := &eventstest.Recorder{}, &eventstest.Recorder{}
			old := NewOutbox(oldRec, logger)
			for _, op := range before {
				op.do(ref)
				op.do(old)
			}
			h2, err := old.HandOver()
			if err != nil || h2 != h {
				t.Fatalf("%s: HandOver = %+v, %v; was %+v", opNames(before), h2, err, h)
			}
			adopted, err := AdoptOutbox(newRec, logger, h)
			if err != nil {
				t.Fatalf("%s: AdoptOutbox(%+v): %v", opNames(before), h, err)
			}
			for _, op := range after {
				op.do(ref)
				op.do(adopted)
			}
			got := append(oldRec.Topics(), newRec.Topics()...)
			want := refRec.Topics()
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Fatalf("%s | hand-over | %s: published %v, want %v", opNames(before), opNames(after), got, want)
			}
			exits := 0
			for _, topic := range got {
				switch topic {
				case TopicExit:
					exits++
				case TopicStart:
					if exits > 0 {
						t.Fatalf("%s | %s: start after the exit: %v", opNames(before), opNames(after), got)
					}
				}
			}
			if exits > 1 {
				t.Fatalf("%s | %s: %d exits: %v", opNames(before), opNames(after), exits, got)
			}
		}
	}
	if handed == 0 || refused == 0 {
		t.Fatalf("%d outboxes handed over, %d refused: the sequences miss a case", handed, refused)
	}
	t.Logf("%d sequences: %d handed over (each followed by %d), %d refused", len(seqs), handed, len(seqs), refused)
}

// An exit published before the hand-over stays the only one: the adopted
// Outbox drops a second exit and a start, with a Warn to its own logger,
// and still publishes the TaskDelete.
func TestOutboxHandOverAfterExit(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.Started(TopicStart, startEv())
	o.Exit(TopicExit, exitEv())
	h, err := o.HandOver()
	if err != nil {
		t.Fatalf("HandOver: %v", err)
	}
	if h != (OutboxHanded{ExitSeen: true, ExitPublished: true}) {
		t.Errorf("handed %+v", h)
	}
	newRec := &eventstest.Recorder{}
	logs, logger := testutil.NewLog(t)
	adopted, err := AdoptOutbox(newRec, logger, throughJSON(t, h))
	if err != nil {
		t.Fatalf("AdoptOutbox: %v", err)
	}
	adopted.Exit(TopicExit, exitEv())
	adopted.Started(TopicStart, startEv())
	adopted.Send(TopicDelete, &apievents.TaskDelete{ContainerID: "c"})
	checkTopics(t, rec, TopicStart, TopicExit)
	checkTopics(t, newRec, TopicDelete)
	if w := logs.Matching(slog.LevelWarn, "events: second exit event dropped"); len(w) != 1 {
		t.Errorf("second exit logged %d times, want once", len(w))
	}
	if w := logs.Matching(slog.LevelWarn, "events: start event after the exit dropped"); len(w) != 1 {
		t.Errorf("late start logged %d times, want once", len(w))
	}
}

// A process started before the hand-over and exiting after it: the adopted
// Outbox publishes its exit, once.
func TestOutboxHandOverBeforeExit(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.Send(TopicCreate, &apievents.TaskCreate{ContainerID: "c"})
	o.Started(TopicStart, startEv())
	h, err := o.HandOver()
	if err != nil {
		t.Fatalf("HandOver: %v", err)
	}
	if h != (OutboxHanded{}) {
		t.Errorf("handed %+v, want nothing set", h)
	}
	newRec := &eventstest.Recorder{}
	adopted, err := AdoptOutbox(newRec, testLogger(t), throughJSON(t, h))
	if err != nil {
		t.Fatalf("AdoptOutbox: %v", err)
	}
	adopted.Exit(TopicExit, exitEv())
	adopted.Exit(TopicExit, exitEv())
	checkTopics(t, rec, TopicCreate, TopicStart)
	checkTopics(t, newRec, TopicExit)
}

// With a start pending (inside a Start request) HandOver refuses and leaves
// the Outbox as it was: the held exit still follows the start.
func TestOutboxHandOverRefusesPendingStart(t *testing.T) {
	t.Parallel()
	o, rec, _ := newTestOutbox(t)
	o.ExpectStart()
	o.Exit(TopicExit, exitEv())
	_, err := o.HandOver()
	if err == nil || !strings.Contains(err.Error(), "start is pending") || !strings.Contains(err.Error(), "1 event(s) held") {
		t.Fatalf("HandOver = %v, want refused with the held exit", err)
	}
	checkTopics(t, rec)
	o.Started(TopicStart, startEv())
	checkTopics(t, rec, TopicStart, TopicExit)
	if _, err := o.HandOver(); err != nil {
		t.Fatalf("HandOver once the start resolved: %v", err)
	}
}

// Validate accepts exactly the flags an Outbox with no start pending can
// have; AdoptOutbox refuses the others, and a nil sink or logger.
func TestOutboxHandedValidate(t *testing.T) {
	t.Parallel()
	for _, seen := range []bool{false, true} {
		for _, published := range []bool{false, true} {
			for _, abandoned := range []bool{false, true} {
				h := OutboxHanded{ExitSeen: seen, ExitPublished: published, Abandoned: abandoned}
				valid := (!published || seen) && (!seen || published || abandoned)
				err := h.Validate()
				if (err == nil) != valid {
					t.Errorf("Validate(%+v) = %v, want valid=%v", h, err, valid)
				}
				_, aerr := AdoptOutbox(&eventstest.Recorder{}, testLogger(t), h)
				if (aerr == nil) != valid {
					t.Errorf("AdoptOutbox(%+v) = %v, want valid=%v", h, aerr, valid)
				}
			}
		}
	}
	if _, err := AdoptOutbox(nil, testLogger(t), OutboxHanded{}); err == nil {
		t.Error("AdoptOutbox with a nil sink succeeded")
	}
	if _, err := AdoptOutbox(&eventstest.Recorder{}, nil, OutboxHanded{}); err == nil {
		t.Error("AdoptOutbox with a nil logger succeeded")
	}
}

// FuzzOutboxHanded: a description that decodes strictly and that
// AdoptOutbox accepts is handed over again unchanged; nothing panics.
func FuzzOutboxHanded(f *testing.F) {
	f.Add([]byte(`{"exit_seen":true,"exit_published":true,"abandoned":false}`))
	f.Add([]byte(`{"exit_seen":true,"exit_published":false,"abandoned":true}`))
	f.Add([]byte(`{"exit_seen":false,"exit_published":true}`))
	f.Add([]byte(`{"exit_seen":true}`))
	f.Add([]byte(`{"start_pending":true}`))
	f.Add([]byte(`{}`))
	logger := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, data []byte) {
		var h OutboxHanded
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if dec.Decode(&h) != nil {
			return
		}
		o, err := AdoptOutbox(&eventstest.Recorder{}, logger, h)
		if (err == nil) != (h.Validate() == nil) {
			t.Fatalf("AdoptOutbox and Validate disagree on %+v", h)
		}
		if err != nil {
			return
		}
		again, err := o.HandOver()
		if err != nil || again != h {
			t.Fatalf("adopted %+v, handed over %+v, %v", h, again, err)
		}
		if throughJSON(t, again) != h {
			t.Fatalf("JSON round trip changed %+v", h)
		}
	})
}
