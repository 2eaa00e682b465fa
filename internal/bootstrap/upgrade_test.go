package bootstrap

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tether-shim/tether/internal/upgrade"
)

// A description the old image writes, as far as the containers go.
const goodShim = `{"reaper":{},"containers":[{"id":"c1","bundle":"/run/b/c1",
 "init":{"state":"running","pid":42,"stdio":{"Stdin":"","Stdout":"","Stderr":"","Terminal":false},"outbox":{}},
 "execs":[{"id":"e1","spec":{"args":["sh"],"cwd":"/"},"state":"stopped","pid":43,"exit":{"pid":43,"status":7,"at":"2026-12-07T16:00:00Z"},"stdio":{"Stdin":"","Stdout":"","Stderr":"","Terminal":false},"outbox":{}}]}],
 "counters":{"c1":{"exits":1,"ooms":0,"execs":1}}}`

func TestCheckShimState(t *testing.T) {
	if err := CheckShimState(upgrade.State{Shim: json.RawMessage(goodShim)}); err != nil {
		t.Fatalf("a good description: %v", err)
	}
	if err := CheckShimState(upgrade.State{}); err != nil {
		t.Fatalf("no description (state version 1): %v", err)
	}
	bad := map[string]struct{ from, to, want string }{
		"unknown field":     {`"reaper":{}`, `"reaper":{},"future":1`, "unknown field"},
		"bad container id":  {`"id":"c1","bundle":"/run/b/c1"`, `"id":"../c1","bundle":"/run/b/c1"`, "container"},
		"bundle not its id": {`"bundle":"/run/b/c1"`, `"bundle":"/run/b/other"`, "not named after"},
		"relative bundle":   {`"bundle":"/run/b/c1"`, `"bundle":"run/b/c1"`, "absolute"},
		"transient state":   {`"state":"running","pid":42`, `"state":"starting","pid":42`, "cannot be handed over"},
		"running, no pid":   {`"state":"running","pid":42`, `"state":"running","pid":0`, "pid 0"},
		"stopped, no exit":  {`,"exit":{"pid":43,"status":7,"at":"2026-12-07T16:00:00Z"}`, ``, "with exit"},
		"exec without spec": {`"spec":{"args":["sh"],"cwd":"/"},`, ``, "no process spec"},
		"exec id escapes":   {`"id":"e1"`, `"id":"e/1"`, "exec"},
	}
	for name, b := range bad {
		doc := strings.Replace(goodShim, b.from, b.to, 1)
		if doc == goodShim {
			t.Fatalf("%s: the replacement did not apply", name)
		}
		err := CheckShimState(upgrade.State{Shim: json.RawMessage(doc)})
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: CheckShimState = %v, want an error containing %q", name, err, b.want)
		}
	}
	twice := strings.Replace(goodShim, `"containers":[{`, `"containers":[{"id":"c1","bundle":"/run/b/c1","init":{"state":"created","pid":9,"stdio":{"Stdin":"","Stdout":"","Stderr":"","Terminal":false},"outbox":{}}},{`, 1)
	if err := CheckShimState(upgrade.State{Shim: json.RawMessage(twice)}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a container twice: %v", err)
	}
}

// FuzzDecodeShimState: the new image decodes what another build wrote; no
// input makes it panic, and what it accepts has valid containers.
func FuzzDecodeShimState(f *testing.F) {
	f.Add([]byte(goodShim))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"containers":[{"id":"x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeShimState(data)
		if err != nil {
			return
		}
		for _, c := range st.Containers {
			if c.Validate() != nil {
				t.Fatalf("accepted an invalid container %+v", c)
			}
		}
	})
}
