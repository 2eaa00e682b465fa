package upgrade

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func validState() State {
	return State{Version: StateVersion, Generation: 1, From: "a", Exe: "/usr/bin/containerd-shim-tether-v2", ListenerFD: 7,
		Conns: []Conn{{FD: 8, PeerPID: 100}, {FD: 9, PeerPID: 101}}}
}

func TestStateRoundTrip(t *testing.T) {
	s := validState()
	data, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != s.Version || got.Generation != s.Generation || got.From != s.From || got.Exe != s.Exe ||
		got.ListenerFD != s.ListenerFD || len(got.Conns) != 2 || got.Conns[1].FD != s.Conns[1].FD || got.Conns[1].PeerPID != s.Conns[1].PeerPID {
		t.Fatalf("Decode(Encode(%+v)) = %+v", s, got)
	}
	if d := got.Descriptors(); len(d) != 3 || d[0] != 7 || d[1] != 8 || d[2] != 9 {
		t.Fatalf("Descriptors() = %v, want [7 8 9]", d)
	}
}

func TestDecodeRefusesOtherVersions(t *testing.T) {
	for _, v := range []string{"0", "3", "-1", "1000"} {
		doc := `{"version":` + v + `,"generation":1,"exe":"/x","listener_fd":3}`
		_, err := Decode([]byte(doc))
		if !errors.Is(err, ErrVersion) {
			t.Fatalf("Decode(version %s) = %v, want ErrVersion", v, err)
		}
	}
	if err := CanTake(StateVersion); err != nil {
		t.Fatalf("CanTake(%d) = %v", StateVersion, err)
	}
}

func TestVersion1HasNoShimDescription(t *testing.T) {
	// A version 1 document (a shim with no container, before version 2)
	// is still taken over.
	v1 := `{"version":1,"generation":1,"exe":"/x","listener_fd":3,"conns":[{"fd":4,"peer_pid":1}]}`
	if s, err := Decode([]byte(v1)); err != nil || len(s.Shim) != 0 || len(s.Descriptors()) != 2 {
		t.Fatalf("Decode(version 1) = %+v, %v", s, err)
	}
	for _, doc := range []string{
		`{"version":1,"generation":1,"exe":"/x","listener_fd":3,"shim":{"containers":[]}}`,
		`{"version":1,"generation":1,"exe":"/x","listener_fd":3,"fds":[5]}`,
	} {
		if _, err := Decode([]byte(doc)); err == nil || !strings.Contains(err.Error(), "no shim description") {
			t.Errorf("Decode(%s) = %v, want a refusal", doc, err)
		}
	}
}

func TestShimDescriptorsChecked(t *testing.T) {
	s := validState()
	s.Shim = json.RawMessage(`{"containers":[{"id":"c1"}]}`)
	s.FDs = []int{10, 11}
	data, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if d := got.Descriptors(); len(d) != 5 || d[3] != 10 || d[4] != 11 || string(got.Shim) != string(s.Shim) {
		t.Fatalf("round trip: %+v, descriptors %v", got, d)
	}
	for name, fds := range map[string][]int{"repeated": {10, 10}, "a connection's": {8}, "stdio": {2}, "huge": {1 << 21}} {
		bad := s
		bad.FDs = fds
		if _, err := Encode(bad); err == nil {
			t.Errorf("%s descriptors %v accepted", name, fds)
		}
	}
	bad := s
	bad.Shim = json.RawMessage(`{"containers":`)
	if _, err := Encode(bad); err == nil {
		t.Error("a shim description that is not JSON was accepted")
	}
}

func TestDecodeRefusesBadDocuments(t *testing.T) {
	tests := map[string]string{
		"not json":         `nope`,
		"no version":       `{"generation":1}`,
		"version string":   `{"version":"1"}`,
		"unknown field":    `{"version":1,"generation":1,"exe":"/x","listener_fd":3,"pidfds":[4]}`,
		"stdio descriptor": `{"version":1,"generation":1,"exe":"/x","listener_fd":2}`,
		"descriptor twice": `{"version":1,"generation":1,"exe":"/x","listener_fd":3,"conns":[{"fd":3}]}`,
		"relative exe":     `{"version":1,"generation":1,"exe":"x","listener_fd":3}`,
		"generation 0":     `{"version":1,"generation":0,"exe":"/x","listener_fd":3}`,
		"trailing data":    `{"version":1,"generation":1,"exe":"/x","listener_fd":3} {}`,
		"too large":        `{"version":1,"from":"` + strings.Repeat("a", maxState) + `"}`,
	}
	for name, doc := range tests {
		if _, err := Decode([]byte(doc)); err == nil {
			t.Errorf("%s: Decode(%.60q) succeeded", name, doc)
		}
	}
}

func TestRunCheck(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		ok     bool
		reason string
	}{
		{[]string{"1", "old"}, 0, true, ""},
		{[]string{"2", "old"}, 0, true, ""},
		{[]string{"3", "new"}, 1, false, "unsupported upgrade state version"},
		{[]string{"x", "old"}, 1, false, "not a number"},
		{[]string{"1"}, 2, false, "arguments"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		code := RunCheck(tt.args, "v9", &out)
		var a Answer
		if err := json.Unmarshal(out.Bytes(), &a); err != nil {
			t.Fatalf("RunCheck(%v) printed %q: %v", tt.args, out.String(), err)
		}
		if code != tt.code || a.OK != tt.ok || a.Shim != shimName || a.Version != "v9" || !strings.Contains(a.Reason, tt.reason) {
			t.Errorf("RunCheck(%v) = %d, %+v; want %d, ok %v, reason containing %q", tt.args, code, a, tt.code, tt.ok, tt.reason)
		}
	}
}

func TestFrameScanner(t *testing.T) {
	// Two frames, a response on stream 3 (5 payload bytes) and a data frame
	// closing stream 5, fed a byte at a time and then at once.
	frame := func(id uint32, typ, flags byte, payload string) []byte {
		b := []byte{0, 0, 0, byte(len(payload)), 0, 0, 0, byte(id), typ, flags}
		return append(b, payload...)
	}
	stream := append(frame(3, typeResp, 0, "hello"), frame(5, typeData, flagRemoteClosed, "")...)
	for _, step := range []int{1, len(stream)} {
		var s frameScanner
		var seen []uint32
		for i := 0; i < len(stream); i += step {
			s.scan(stream[i:min(i+step, len(stream))], func(id uint32, typ, flags byte) { seen = append(seen, id) })
			fed := min(i+step, len(stream))
			if want := fed == 15 || fed == len(stream); s.atBoundary() != want {
				t.Fatalf("step %d: at a boundary after %d bytes: %v, want %v", step, fed, s.atBoundary(), want)
			}
		}
		if !s.atBoundary() || len(seen) != 2 || seen[0] != 3 || seen[1] != 5 {
			t.Fatalf("step %d: boundary %v, frames %v", step, s.atBoundary(), seen)
		}
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := Encode(validState())
	f.Add(good)
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"generation":1,"exe":"/x","listener_fd":3,"conns":[{"fd":4,"peer_pid":1}]}`))
	f.Add([]byte(`{"version":1e3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(data)
		if err != nil {
			return
		}
		// What Decode accepts, Encode writes and Decode reads back the same.
		again, err := Encode(s)
		if err != nil {
			t.Fatalf("Encode of a decoded state: %v", err)
		}
		s2, err := Decode(again)
		if err != nil {
			t.Fatalf("Decode of a re-encoded state: %v", err)
		}
		if len(s2.Descriptors()) != len(s.Descriptors()) || s2.Exe != s.Exe || s2.Generation != s.Generation {
			t.Fatalf("round trip changed %+v into %+v", s, s2)
		}
		seen := map[int]bool{}
		for _, fd := range s.Descriptors() {
			if fd < 3 || seen[fd] {
				t.Fatalf("Decode accepted descriptor %d in %+v", fd, s)
			}
			seen[fd] = true
		}
	})
}

func TestReplayFramesChecked(t *testing.T) {
	frame := func(id uint32, typ byte, payload string) []byte {
		f := make([]byte, frameHeader, frameHeader+len(payload))
		binary.BigEndian.PutUint32(f[:4], uint32(len(payload)))
		binary.BigEndian.PutUint32(f[4:8], id)
		f[8] = typ
		return append(f, payload...)
	}
	s := validState()
	s.Conns[0].Replay = [][]byte{frame(3, typeRequest, "wait c1"), frame(7, typeRequest, "wait c2")}
	data, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil || len(got.Conns[0].Replay) != 2 || !bytes.Equal(got.Conns[0].Replay[1], s.Conns[0].Replay[1]) {
		t.Fatalf("round trip of the frames to replay: %+v, %v", got.Conns[0], err)
	}
	bad := map[string][][]byte{
		"short":           {[]byte("abc")},
		"length mismatch": {append(frame(3, typeRequest, "x"), 'y')},
		"a response":      {frame(3, typeResp, "x")},
		"even stream":     {frame(4, typeRequest, "x")},
		"out of order":    {frame(7, typeRequest, "x"), frame(3, typeRequest, "y")},
		"repeated":        {frame(3, typeRequest, "x"), frame(3, typeRequest, "y")},
	}
	for name, frames := range bad {
		b := validState()
		b.Conns[0].Replay = frames
		if _, err := Encode(b); err == nil {
			t.Errorf("%s: frames to replay accepted", name)
		}
	}
	v1 := validState()
	v1.Version = 1
	v1.Conns[0].Replay = [][]byte{frame(3, typeRequest, "x")}
	if _, err := Encode(v1); err == nil {
		t.Error("version 1 with frames to replay accepted")
	}
}
