package introspect

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"google.golang.org/protobuf/proto"
)

// discard is a Sink that drops everything.
type discard struct{}

func (discard) Publish(string, proto.Message) {}

// recorder is a Sink that keeps the topics it got, in order.
type recorder struct{ topics []string }

func (r *recorder) Publish(topic string, _ proto.Message) { r.topics = append(r.topics, topic) }

func exitEvent(id string) *eventsapi.TaskExit {
	return &eventsapi.TaskExit{ContainerID: id, ID: id}
}

func TestStdioMode(t *testing.T) {
	for _, tc := range []struct {
		stdin, stdout, stderr string
		terminal              bool
		want                  string
	}{
		{"", "", "", false, ModeNull},
		{"", "", "", true, ModeTerminal},
		{"/f/in", "/f/out", "", true, ModeTerminal},
		{"", "/run/f/out", "/run/f/err", false, ModeFifo},
		{"/run/f/in", "", "", false, ModeFifo},
		{"", "fifo:///run/f/out", "", false, ModeFifo},
		{"", "file:///var/log/c.log", "file:///var/log/c.log", false, ModeFile},
		{"", "", "file:///var/log/c.log", false, ModeFile},
		{"", "binary:///usr/bin/logger?a=b", "binary:///usr/bin/logger?a=b", false, ModeBinary},
	} {
		if got := StdioMode(tc.stdin, tc.stdout, tc.stderr, tc.terminal); got != tc.want {
			t.Errorf("StdioMode(%q, %q, %q, %v) = %s, want %s", tc.stdin, tc.stdout, tc.stderr, tc.terminal, got, tc.want)
		}
	}
}

func TestDecodeSnapshot(t *testing.T) {
	good := Snapshot{Schema: SchemaVersion, Containers: []Container{{ID: "c", Processes: []Process{{ID: "c"}}}},
		RPC: []RPCMethod{{Method: "/s/m", Count: 3, Buckets: []Bucket{{LE: 1, Count: 1}, {LE: 2, Count: 3}}}}}
	data, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := DecodeSnapshot(data); err != nil || s.Containers[0].ID != "c" {
		t.Fatalf("good snapshot: %+v, %v", s, err)
	}
	for name, tc := range map[string]struct {
		json string
		want string
	}{
		"not json":        {`{`, "decode snapshot"},
		"no schema":       {`{}`, "schema"},
		"future schema":   {`{"schema": 2}`, "version 2"},
		"container no id": {`{"schema":1,"containers":[{"id":""}]}`, "without an id"},
		"process no id":   {`{"schema":1,"containers":[{"id":"c","processes":[{"id":""}]}]}`, "process without an id"},
		"buckets down":    {`{"schema":1,"rpc":[{"method":"m","count":5,"buckets":[{"le":1,"count":3},{"le":2,"count":2}]}]}`, "not cumulative"},
		"bucket above":    {`{"schema":1,"rpc":[{"method":"m","count":1,"buckets":[{"le":1,"count":3}]}]}`, "not cumulative"},
	} {
		_, err := DecodeSnapshot([]byte(tc.json))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
	if _, err := DecodeSnapshot([]byte(`{"schema": 9}`)); !errors.Is(err, ErrSchema) {
		t.Errorf("schema 9: %v, want ErrSchema", err)
	}
}

// FuzzDecodeSnapshot: whatever a peer answers, DecodeSnapshot returns a
// snapshot that keeps its own invariants, or an error; never panics.
func FuzzDecodeSnapshot(f *testing.F) {
	f.Add([]byte(`{"schema":1,"containers":[{"id":"c","processes":[{"id":"c","exit_status":0}]}],"rpc":[{"method":"m","count":2,"buckets":[{"le":0.1,"count":1},{"le":1,"count":2}]}]}`))
	f.Add([]byte(`{"schema":1}`))
	f.Add([]byte(`{"schema":1,"shim":{"started_at":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeSnapshot(data)
		if err != nil {
			return
		}
		if s.Schema != SchemaVersion {
			t.Fatalf("schema %d accepted", s.Schema)
		}
		for _, c := range s.Containers {
			if c.ID == "" {
				t.Fatal("container without id accepted")
			}
		}
		if _, err := json.Marshal(s); err != nil {
			t.Fatalf("a decoded snapshot does not encode: %v", err)
		}
	})
}

func TestRPCStats(t *testing.T) {
	var s RPCStats
	if got := s.Snapshot(); len(got) != 0 {
		t.Fatalf("zero RPCStats: %+v", got)
	}
	s.Observe("/b/M", 300*time.Microsecond, false)
	s.Observe("/b/M", 3*time.Millisecond, true)
	s.Observe("/b/M", time.Minute, false) // above every bucket
	s.Observe("/a/M", 0, false)
	got := s.Snapshot()
	if len(got) != 2 || got[0].Method != "/a/M" || got[1].Method != "/b/M" {
		t.Fatalf("methods %+v, want /a/M then /b/M", got)
	}
	b := got[1]
	if b.Count != 3 || b.Errors != 1 {
		t.Errorf("/b/M count %d errors %d, want 3 and 1", b.Count, b.Errors)
	}
	if want := (60*time.Second + 3300*time.Microsecond).Seconds(); b.SumSeconds < want-1e-9 || b.SumSeconds > want+1e-9 {
		t.Errorf("sum %v, want %v", b.SumSeconds, want)
	}
	// Cumulative: 1 at or below 0.5 ms, 2 from 5 ms on; the minute-long
	// one is in no bucket (the +Inf bucket is Count).
	for _, bk := range b.Buckets {
		want := uint64(0)
		switch {
		case bk.LE >= 0.005:
			want = 2
		case bk.LE >= 0.0005:
			want = 1
		}
		if bk.Count != want {
			t.Errorf("bucket le=%v: %d, want %d", bk.LE, bk.Count, want)
		}
	}
}

// TestCountingSink: exits, OOMs and exec starts are counted per container,
// every event is forwarded in order, and a container's TaskDelete (not an
// exec's) forgets its counters.
func TestCountingSink(t *testing.T) {
	rec := &recorder{}
	s := NewCountingSink(rec)
	s.Publish("/tasks/create", &eventsapi.TaskCreate{ContainerID: "c"})
	s.Publish("/tasks/create", &eventsapi.TaskCreate{ContainerID: "d"})
	s.Publish("/tasks/exec-started", &eventsapi.TaskExecStarted{ContainerID: "c", ExecID: "e"})
	s.Publish("/tasks/exit", &eventsapi.TaskExit{ContainerID: "c", ID: "e"})
	s.Publish("/tasks/oom", &eventsapi.TaskOOM{ContainerID: "c"})
	s.Publish("/tasks/exit", exitEvent("c"))
	s.Publish("/tasks/exit", exitEvent("d"))
	s.Publish("/tasks/start", &eventsapi.TaskStart{ContainerID: "c"})
	if got := s.Counters("c"); got != (ContainerCounters{Exits: 2, OOMs: 1, Execs: 1}) {
		t.Errorf("c: %+v", got)
	}
	s.Publish("/tasks/delete", &eventsapi.TaskDelete{ContainerID: "c", ID: "c"})
	if got := s.Counters("c"); got != (ContainerCounters{}) {
		t.Errorf("c after its delete: %+v, want none", got)
	}
	if got := s.Counters("d"); got.Exits != 1 {
		t.Errorf("d: %+v", got)
	}
	want := "/tasks/create /tasks/create /tasks/exec-started /tasks/exit /tasks/oom /tasks/exit /tasks/exit /tasks/start /tasks/delete"
	if got := strings.Join(rec.topics, " "); got != want {
		t.Errorf("forwarded %s, want %s", got, want)
	}
}

// TestRegressionCountersOutlivedTheirContainer: an event of a container
// that comes after its TaskDelete (an exit collected after Delete stopped
// waiting for it) made a new entry that nothing removed, one more per such
// container for the life of a group shim. Only TaskCreate makes one now.
func TestRegressionCountersOutlivedTheirContainer(t *testing.T) {
	s := NewCountingSink(&recorder{})
	s.Publish("/tasks/create", &eventsapi.TaskCreate{ContainerID: "c"})
	s.Publish("/tasks/delete", &eventsapi.TaskDelete{ContainerID: "c", ID: "c"})
	s.Publish("/tasks/exit", exitEvent("c"))
	s.Publish("/tasks/oom", &eventsapi.TaskOOM{ContainerID: "c"})
	s.Publish("/tasks/exec-started", &eventsapi.TaskExecStarted{ContainerID: "c", ExecID: "e"})
	s.mu.Lock()
	n := len(s.byID)
	s.mu.Unlock()
	if n != 0 {
		t.Errorf("%d entries after the container's delete, want 0", n)
	}
}
