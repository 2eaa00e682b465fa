package events

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/internal/testutil"
)

// handedRequest decodes the ForwardRequest of h, failing the test if it
// does not decode.
func handedRequest(t *testing.T, h HandedEvent) *eventsapi.ForwardRequest {
	t.Helper()
	req, err := h.decode()
	if err != nil {
		t.Fatalf("handed event: %v", err)
	}
	return req
}

// throughJSON returns v as the state document carries it: encoded to JSON
// and decoded strictly (unknown fields refused), as upgrade.Decode does.
func throughJSON[T any](t testing.TB, v T) T {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	var back T
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&back); err != nil {
		t.Fatalf("unmarshal %s: %v", data, err)
	}
	return back
}

// Pause -> HandOver -> Adopt into a second Publisher, over a real ttrpc
// server: every event reaches containerd in the original order, with the
// timestamp and namespace of its original Publish, then the events the
// second Publisher publishes itself.
//
// Event 3 is in flight when Pause is called. With its acknowledgement
// received ("acknowledged"), containerd sees every event exactly once. With
// the acknowledgement lost (containerd dies after recording it, "ack lost"),
// event 3 stays queued, is handed over and is sent again by the second
// Publisher: containerd then sees exactly that one event twice, right after
// itself, and every other exactly once. That is the only duplicate allowed
// (delivery is at least once).
func TestPublisherHandOverAdopt(t *testing.T) {
	for _, ackLost := range []bool{false, true} {
		t.Run(map[bool]string{false: "acknowledged", true: "ack lost"}[ackLost], func(t *testing.T) {
			testutil.CheckLeaks(t)
			const inFlight, beforePause, whilePaused, afterAdopt = 3, 6, 4, 5
			f := newFakeContainerd(t)
			entered, release := make(chan struct{}), make(chan struct{})
			f.after = func(call int, _ *types.Envelope) {
				if call != inFlight+1 {
					return
				}
				close(entered)
				select {
				case <-release:
				case <-time.After(waitLimit):
				}
				if ackLost {
					f.kill() // recorded, but the reply cannot go out
				}
			}
			f.start()
			// The old image's Publisher: abandoned after the hand-over, as
			// execve would end it; never closed.
			p1 := newPublisher(f.path, testNamespace, testLogger(t), fastConfig())
			seq := 0
			for ; seq < beforePause; seq++ {
				p1.Publish(TopicExit, exitEvent(seq))
			}
			select {
			case <-entered:
			case <-time.After(waitLimit):
				t.Fatalf("event %d not forwarded within %v", inFlight, waitLimit)
			}
			ctx := pauseCtx(t)
			paused := make(chan error, 1)
			go func() { paused <- p1.Pause(ctx) }()
			waitUntil(t, "paused", p1.isPaused)
			close(release)
			select {
			case err := <-paused:
				if err != nil {
					t.Fatalf("Pause: %v", err)
				}
			case <-time.After(waitLimit):
				t.Fatalf("Pause did not return within %v", waitLimit)
			}
			for ; seq < beforePause+whilePaused; seq++ {
				p1.Publish(TopicExit, exitEvent(seq))
			}

			evs, err := p1.HandOver()
			if err != nil {
				t.Fatalf("HandOver: %v", err)
			}
			first := inFlight + 1
			if ackLost {
				first = inFlight
			}
			if len(evs) != seq-first {
				t.Fatalf("%d events handed over, want %d (from event %d)", len(evs), seq-first, first)
			}
			stamps := make(map[int]*timestamppb.Timestamp)
			for i, h := range evs {
				env := handedRequest(t, h).GetEnvelope()
				if s := seqOf(t, env); s != first+i {
					t.Fatalf("handed event %d is event %d, want %d", i, s, first+i)
				}
				if env.GetNamespace() != testNamespace || env.GetTopic() != TopicExit {
					t.Fatalf("handed event %d: namespace %q topic %q", i, env.GetNamespace(), env.GetTopic())
				}
				stamps[first+i] = env.GetTimestamp()
			}
			evs = throughJSON(t, evs)

			if ackLost {
				f.stop()
				f.start()
			}
			p1.abandon()
			adoptedAt := time.Now()
			p2, _ := startPublisher(t, f.path, fastConfig())
			if err := p2.Adopt(evs); err != nil {
				t.Fatalf("Adopt: %v", err)
			}
			for ; seq < beforePause+whilePaused+afterAdopt; seq++ {
				p2.Publish(TopicExit, exitEvent(seq))
			}
			want := make([]int, 0, seq+1)
			for i := range seq {
				want = append(want, i)
				if ackLost && i == inFlight {
					want = append(want, i)
				}
			}
			envs := f.waitRecorded(len(want))
			closePublisher(t, p2)
			envs, nss := f.recorded()
			if got := seqs(t, envs); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("containerd saw %v, want %v", got, want)
			}
			for i, env := range envs {
				s := seqOf(t, env)
				if nss[i] != testNamespace || env.GetNamespace() != testNamespace {
					t.Errorf("event %d: namespace %q (metadata %q)", s, env.GetNamespace(), nss[i])
				}
				if ts, ok := stamps[s]; ok {
					if !proto.Equal(env.GetTimestamp(), ts) {
						t.Errorf("event %d stamped %v, handed over with %v", s, env.GetTimestamp().AsTime(), ts.AsTime())
					}
					if !env.GetTimestamp().AsTime().Before(adoptedAt) {
						t.Errorf("event %d stamped %v, not before the adoption at %v", s, env.GetTimestamp().AsTime(), adoptedAt)
					}
				}
				if i > 0 && env.GetTimestamp().AsTime().Before(envs[i-1].GetTimestamp().AsTime()) {
					t.Errorf("event %d stamped before the event ahead of it", s)
				}
			}
			st := p2.Stats(0)
			if n := uint64(len(evs) + afterAdopt); st.Published != n || st.Delivered != n || st.Queued != 0 {
				t.Errorf("second publisher: %+v, want %d published and delivered", st, n)
			}
		})
	}
}

// After a hand-over that failed (Unpause instead of execve), the Publisher
// goes on as if nothing happened: HandOver took nothing off the queue.
func TestPublisherHandOverThenUnpause(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t) // not up yet: everything stays queued
	p, _ := startPublisher(t, f.path, fastConfig())
	for i := range 5 {
		p.Publish(TopicExit, exitEvent(i))
	}
	if err := p.Pause(pauseCtx(t)); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	evs, err := p.HandOver()
	if err != nil {
		t.Fatalf("HandOver: %v", err)
	}
	again, err := p.HandOver()
	if err != nil {
		t.Fatalf("second HandOver: %v", err)
	}
	if len(evs) != 5 || len(again) != 5 {
		t.Fatalf("handed over %d then %d events, want 5 both times", len(evs), len(again))
	}
	for i := range evs {
		if !bytes.Equal(evs[i].ForwardRequest, again[i].ForwardRequest) {
			t.Fatalf("event %d differs between two hand-overs", i)
		}
	}
	p.Unpause()
	if _, err := p.HandOver(); err == nil {
		t.Error("HandOver after Unpause succeeded")
	}
	f.start()
	envs := f.waitRecorded(5)
	closePublisher(t, p)
	checkExactly(t, seqs(t, envs), 5)
}

func TestPublisherHandOverRefusedUnlessPaused(t *testing.T) {
	testutil.CheckLeaks(t)
	p, _ := startPublisher(t, newFakeContainerd(t).path, fastConfig())
	if _, err := p.HandOver(); err == nil || !strings.Contains(err.Error(), "not paused") {
		t.Errorf("HandOver of a running publisher = %v, want refused", err)
	}
}

// A Publisher without an address has no sender: it pauses at once, hands
// over nothing (what it is given while paused is discarded as ever), and
// discards what it adopts (after checking it), saying so.
func TestPublisherHandOverWithoutAddress(t *testing.T) {
	testutil.CheckLeaks(t)
	p, logs := startPublisher(t, "", defaultConfig())
	if err := p.Pause(pauseCtx(t)); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	p.Publish(TopicExit, exitEvent(0))
	evs, err := p.HandOver()
	if err != nil || len(evs) != 0 {
		t.Fatalf("HandOver = %v, %v; want nothing", evs, err)
	}
	good := HandedEvent{ForwardRequest: marshalRequest(t, goodRequest(t))}
	if err := p.Adopt([]HandedEvent{{}}); err == nil {
		t.Error("Adopt of an empty event succeeded")
	}
	if err := p.Adopt([]HandedEvent{good}); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if w := logs.Matching(slog.LevelWarn, "events: handed-over events discarded, no containerd address"); len(w) != 1 {
		t.Errorf("discard logged %d times, want once", len(w))
	}
}

// goodRequest is a ForwardRequest as Publish builds it.
func goodRequest(t testing.TB) *eventsapi.ForwardRequest {
	a, err := typeurl.MarshalAnyToProto(exitEvent(1))
	if err != nil {
		t.Fatal(err)
	}
	return &eventsapi.ForwardRequest{Envelope: &types.Envelope{
		Namespace: testNamespace,
		Topic:     TopicExit,
		Timestamp: timestamppb.New(time.Date(2026, 12, 7, 17, 0, 0, 0, time.UTC)),
		Event:     a,
	}}
}

func marshalRequest(t testing.TB, req *eventsapi.ForwardRequest) []byte {
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// badHandedEvents are handed events Adopt must refuse, with a word of the
// error each must get.
func badHandedEvents(t testing.TB) []struct {
	name, want string
	h          HandedEvent
} {
	edit := func(change func(*eventsapi.ForwardRequest)) HandedEvent {
		req := goodRequest(t)
		change(req)
		return HandedEvent{ForwardRequest: marshalRequest(t, req)}
	}
	// A request with an unknown field and nothing else: it decodes, with
	// no envelope.
	noEnvelope := protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1)
	return []struct {
		name, want string
		h          HandedEvent
	}{
		{"empty", "empty forward_request", HandedEvent{}},
		{"garbage", "forward_request", HandedEvent{ForwardRequest: []byte{0xff, 0xff, 0xff}}},
		{"no envelope", "no envelope", HandedEvent{ForwardRequest: noEnvelope}},
		{"no topic", "empty topic", edit(func(r *eventsapi.ForwardRequest) { r.Envelope.Topic = "" })},
		{"no timestamp", "timestamp", edit(func(r *eventsapi.ForwardRequest) { r.Envelope.Timestamp = nil })},
		{"bad timestamp", "timestamp", edit(func(r *eventsapi.ForwardRequest) { r.Envelope.Timestamp.Nanos = 2e9 })},
		{"no event", "no event", edit(func(r *eventsapi.ForwardRequest) { r.Envelope.Event = nil })},
		{"unknown type", "payload", edit(func(r *eventsapi.ForwardRequest) { r.Envelope.Event.TypeUrl = "example.com/no.such.Event" })},
		{"bad payload", "payload", edit(func(r *eventsapi.ForwardRequest) { r.Envelope.Event.Value = []byte{0xff, 0xff} })},
	}
}

// Adopt checks every event before it queues any; an error names the event
// and what is wrong with it.
func TestPublisherAdoptRefuses(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	good := HandedEvent{ForwardRequest: marshalRequest(t, goodRequest(t))}
	cases := badHandedEvents(t)
	otherNS := goodRequest(t)
	otherNS.Envelope.Namespace = "elsewhere"
	cases = append(cases, struct {
		name, want string
		h          HandedEvent
	}{"other namespace", `namespace "elsewhere"`, HandedEvent{ForwardRequest: marshalRequest(t, otherNS)}})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.h.Validate(); err == nil && tc.name != "other namespace" {
				t.Errorf("Validate accepted it")
			}
			p, _ := startPublisher(t, f.path, fastConfig())
			err := p.Adopt([]HandedEvent{good, tc.h})
			if err == nil || !strings.Contains(err.Error(), "event 1") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Adopt = %v, want an error about event 1 saying %q", err, tc.want)
			}
			if st := p.Stats(0); st.Queued != 0 || st.Published != 0 {
				t.Fatalf("a refused Adopt queued something: %+v", st)
			}
			if err := p.Adopt([]HandedEvent{good}); err != nil {
				t.Fatalf("Adopt after a refused one: %v", err)
			}
		})
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate of a good event: %v", err)
	}
}

// Adopt comes first: not after an event was published or adopted, nor after
// Close.
func TestPublisherAdoptOnlyFirst(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t)
	f.start()
	good := []HandedEvent{{ForwardRequest: marshalRequest(t, goodRequest(t))}}

	p, _ := startPublisher(t, f.path, fastConfig())
	p.Publish(TopicExit, exitEvent(0))
	if err := p.Adopt(good); err == nil {
		t.Error("Adopt after Publish succeeded")
	}
	p2, _ := startPublisher(t, f.path, fastConfig())
	if err := p2.Adopt(good); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if err := p2.Adopt(good); err == nil {
		t.Error("a second Adopt succeeded")
	}
	p3, _ := startPublisher(t, f.path, fastConfig())
	closePublisher(t, p3)
	if err := p3.Adopt(good); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Adopt after Close = %v, want refused", err)
	}
	f.waitRecorded(2)
}

// What abandon leaves: no sender, nothing reported, Close returns nil and
// Publish drops.
func TestPublisherAbandon(t *testing.T) {
	testutil.CheckLeaks(t)
	f := newFakeContainerd(t) // never up
	p, logs := startPublisher(t, f.path, fastConfig())
	p.Publish(TopicExit, exitEvent(0))
	p.abandon()
	if err := p.Close(context.Background()); err != nil {
		t.Errorf("Close after abandon = %v", err)
	}
	if e := logs.Matching(slog.LevelError, "events: publisher stopped with undelivered events"); len(e) != 0 {
		t.Errorf("abandon reported the queue: %v", e)
	}
}

// FuzzHandedEvent: what HandedEvent's decoding accepts has a topic, a valid
// timestamp and an event of a registered type that decodes, and survives
// the state document's JSON and a re-encoding unchanged. Nothing panics.
func FuzzHandedEvent(f *testing.F) {
	for _, ev := range []proto.Message{
		exitEvent(1), &apievents.TaskCreate{ContainerID: "c", Bundle: "/b", Pid: 2},
		&apievents.TaskStart{ContainerID: "c", Pid: 2}, &apievents.TaskOOM{ContainerID: "c"},
		&apievents.TaskDelete{ContainerID: "c", Pid: 2, ExitStatus: 1},
	} {
		a, err := typeurl.MarshalAnyToProto(ev)
		if err != nil {
			f.Fatal(err)
		}
		req := goodRequest(f)
		req.Envelope.Event = a
		f.Add(marshalRequest(f, req))
	}
	for _, tc := range badHandedEvents(f) {
		f.Add(tc.h.ForwardRequest)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h := HandedEvent{ForwardRequest: b}
		req, err := h.decode()
		if (err == nil) != (h.Validate() == nil) {
			t.Fatalf("decode and Validate disagree on %x", b)
		}
		if err != nil {
			return
		}
		env := req.GetEnvelope()
		if env.GetTopic() == "" || env.GetTimestamp().CheckValid() != nil || env.GetEvent() == nil {
			t.Fatalf("accepted %v", req)
		}
		if _, err := anypb.UnmarshalNew(env.GetEvent(), proto.UnmarshalOptions{}); err != nil {
			t.Fatalf("accepted a payload that does not decode: %v", err)
		}
		again := throughJSON(t, []HandedEvent{{ForwardRequest: marshalRequest(t, req)}})
		req2, err := again[0].decode()
		if err != nil {
			t.Fatalf("re-encoded event refused: %v", err)
		}
		if !proto.Equal(req, req2) {
			t.Fatalf("round trip changed %v into %v", req, req2)
		}
	})
}
