package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// ctr task exec runs a process in a running container: its output reaches
// ctr, ctr exits with its exit code, and the shim publishes exec-added,
// exec-started and exit for it, in that order.
func TestExecExitCode(t *testing.T) {
	forEachVersion(t, "execcode", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "c1")
		ev := d.watchEvents(t)
		r := d.ctr(t, ns, "task", "exec", "--exec-id", "e1", "c1", "/bin/sh", "-c", "echo hi; exit 5")
		if r.code != 5 {
			t.Errorf("ctr task exec exit code %d, want 5: %s", r.code, r)
		}
		if r.stdout != "hi\n" {
			t.Errorf("ctr task exec stdout %q, want %q", r.stdout, "hi\n")
		}
		var exit taskEvent
		waitFor(t, 30*time.Second, "the /tasks/exit event of exec e1", func() (bool, string) {
			var ok bool
			exit, ok = ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("c1", "e1") })
			return ok, "events so far:\n" + ev.String()
		})
		if got := exit.exitStatus(); got != 5 {
			t.Errorf("exit_status %d in the /tasks/exit event of e1, want 5: %s", got, exit.line)
		}
		added, okA := ev.find(ns, 0, func(e taskEvent) bool {
			return e.topic == "/tasks/exec-added" && e.str("container_id") == "c1" && e.str("exec_id") == "e1"
		})
		started, okS := ev.find(ns, 0, func(e taskEvent) bool {
			return e.topic == "/tasks/exec-started" && e.str("container_id") == "c1" && e.str("exec_id") == "e1"
		})
		switch {
		case !okA || !okS:
			t.Errorf("missing /tasks/exec-added (%v) or /tasks/exec-started (%v) for e1; events:\n%s", okA, okS, ev.String())
		case !(added.index < started.index && started.index < exit.index):
			t.Errorf("events of e1 out of order: exec-added #%d, exec-started #%d, exit #%d; events:\n%s",
				added.index, started.index, exit.index, ev.String())
		case started.num("pid") <= 0:
			t.Errorf("/tasks/exec-started of e1 has no pid: %s", started.line)
		}
		// The init is untouched.
		d.waitStatus(t, ns, "c1", "RUNNING")
		if _, ok := ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("c1", "c1") }); ok {
			t.Errorf("a /tasks/exit of the init after an exec; events:\n%s", ev.String())
		}
	})
}

// A second exec with the id of an exec that still exists is refused and does
// not disturb the first; once the first is deleted the id can be used again.
func TestExecDuplicateID(t *testing.T) {
	forEachVersion(t, "execdup", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "c1")
		ev := d.watchEvents(t)
		// -d: ctr returns once the exec started and does not delete it.
		d.mustCtr(t, ns, "task", "exec", "-d", "--exec-id", "e1", "c1", "/bin/sleep", "1000000")
		var started taskEvent
		waitFor(t, 30*time.Second, "the /tasks/exec-started event of e1", func() (bool, string) {
			var ok bool
			started, ok = ev.find(ns, 0, func(e taskEvent) bool {
				return e.topic == "/tasks/exec-started" && e.str("exec_id") == "e1"
			})
			return ok, "events so far:\n" + ev.String()
		})
		pid := started.num("pid")
		if pid <= 0 || !alive(pid) {
			t.Fatalf("exec e1: pid %d from %s is not alive", pid, started.line)
		}
		// runc exec -d returns once the process runs, possibly before its
		// execve: for a moment its name is still runc's (seen under load).
		waitFor(t, 10*time.Second, fmt.Sprintf("exec e1 (pid %d) to be sleep", pid), func() (bool, string) {
			return alive(pid) && procName(pid) == "sleep", fmt.Sprintf("alive %v, name %q", alive(pid), procName(pid))
		})

		r := d.ctr(t, ns, "task", "exec", "--exec-id", "e1", "c1", "/bin/echo", "second")
		if r.code == 0 {
			t.Errorf("a second exec with the id e1 of a live exec succeeded: %s", r)
		}
		if !strings.Contains(strings.ToLower(r.stderr), "already exists") {
			t.Errorf("the refusal of a duplicate exec id does not say \"already exists\": %s", r)
		}
		if strings.Contains(r.stdout, "second") {
			t.Errorf("the refused exec ran: stdout %q", r.stdout)
		}
		if !alive(pid) {
			t.Errorf("the first e1 (pid %d) died when a second exec with its id was refused", pid)
		}
		if _, ok := ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("c1", "e1") }); ok {
			t.Errorf("a /tasks/exit for e1 after the refused exec; events:\n%s", ev.String())
		}

		// Kill and delete the first e1; then the id is free again.
		d.mustCtr(t, ns, "task", "kill", "--exec-id", "e1", "-s", "SIGKILL", "c1")
		var exit taskEvent
		waitFor(t, 30*time.Second, "the /tasks/exit event of e1", func() (bool, string) {
			var ok bool
			exit, ok = ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("c1", "e1") })
			return ok, "events so far:\n" + ev.String()
		})
		if got := exit.exitStatus(); got != 137 {
			t.Errorf("exit_status %d for the SIGKILLed e1, want 137: %s", got, exit.line)
		}
		// ctr task rm --exec-id exits with the deleted process's exit code.
		if r := d.ctr(t, ns, "task", "rm", "--exec-id", "e1", "c1"); r.code != 137 || strings.Contains(r.stderr, "ctr:") {
			t.Errorf("ctr task rm --exec-id e1: %s; want exit 137 (e1's exit code) and no error", r)
		}
		r = d.ctr(t, ns, "task", "exec", "--exec-id", "e1", "c1", "/bin/sh", "-c", "echo again")
		if r.code != 0 || r.stdout != "again\n" {
			t.Errorf("an exec with the id e1 after the first e1 was deleted: %s; want exit 0 and %q", r, "again\n")
		}
	})
}

// When the init is killed while five execs run, the shim publishes every
// exec's /tasks/exit before the init's.
func TestExecExitsBeforeInitExit(t *testing.T) {
	forEachVersion(t, "execorder", func(t *testing.T, d *daemon, ns string) {
		d.runDetached(t, ns, "c1")
		ev := d.watchEvents(t)
		ids := []string{"x1", "x2", "x3", "x4", "x5"}
		for _, id := range ids {
			d.mustCtr(t, ns, "task", "exec", "-d", "--exec-id", id, "c1", "/bin/sleep", "1000000")
		}
		waitFor(t, 30*time.Second, "a /tasks/exec-started event for each of "+strings.Join(ids, " "), func() (bool, string) {
			var missing []string
			for _, id := range ids {
				if _, ok := ev.find(ns, 0, func(e taskEvent) bool {
					return e.topic == "/tasks/exec-started" && e.str("container_id") == "c1" && e.str("exec_id") == id
				}); !ok {
					missing = append(missing, id)
				}
			}
			return len(missing) == 0, fmt.Sprintf("missing %v; events so far:\n%s", missing, ev.String())
		})

		d.mustCtr(t, ns, "task", "kill", "-s", "SIGKILL", "c1")
		var initExit taskEvent
		waitFor(t, 60*time.Second, "the /tasks/exit event of the init", func() (bool, string) {
			var ok bool
			initExit, ok = ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("c1", "c1") })
			return ok, "events so far:\n" + ev.String()
		})
		if got := initExit.exitStatus(); got != 137 {
			t.Errorf("exit_status %d for the SIGKILLed init, want 137: %s", got, initExit.line)
		}
		for _, id := range ids {
			e, ok := ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("c1", id) })
			switch {
			case !ok:
				// Look again a little later, to tell "late" from "never".
				time.Sleep(2 * time.Second)
				if e, ok = ev.find(ns, 0, func(e taskEvent) bool { return e.isExit("c1", id) }); ok {
					t.Errorf("the /tasks/exit of exec %s (#%d) came after the init's (#%d)", id, e.index, initExit.index)
				} else {
					t.Errorf("no /tasks/exit for exec %s at all", id)
				}
			case e.index > initExit.index:
				t.Errorf("the /tasks/exit of exec %s (#%d) came after the init's (#%d)", id, e.index, initExit.index)
			case e.exitStatus() != 137:
				t.Errorf("exec %s: exit_status %d, want 137 (killed with the pid namespace): %s", id, e.exitStatus(), e.line)
			}
		}
		if t.Failed() {
			t.Logf("events:\n%s", ev.String())
		}
		d.waitStatus(t, ns, "c1", "STOPPED")
		d.mustCtr(t, ns, "task", "rm", "c1")
		d.mustCtr(t, ns, "container", "rm", "c1")
	})
}

// taskEvent is a line of ctr events: "<time> <namespace> <topic> <JSON>".
type taskEvent struct {
	index     int // line number among all events
	ns, topic string
	fields    map[string]any
	line      string
}

func (e taskEvent) str(key string) string {
	s, _ := e.fields[key].(string)
	return s
}

func (e taskEvent) num(key string) int {
	f, _ := e.fields[key].(float64)
	return int(f)
}

// exitStatus is exit_status, which JSON leaves out when it is 0.
func (e taskEvent) exitStatus() int { return e.num("exit_status") }

// isExit tells whether e is the /tasks/exit of process id of container cid
// (the init's id is the container id).
func (e taskEvent) isExit(cid, id string) bool {
	return e.topic == "/tasks/exit" && e.str("container_id") == cid && e.str("id") == id
}

// parsed returns the events of namespace ns, in the order ctr printed them.
func (ev *events) parsed(ns string) []taskEvent {
	var out []taskEvent
	for i, line := range strings.Split(ev.String(), "\n") {
		j := strings.Index(line, " {")
		if j < 0 {
			continue
		}
		f := strings.Fields(line[:j])
		if len(f) < 2 || f[len(f)-2] != ns {
			continue
		}
		e := taskEvent{index: i, ns: ns, topic: f[len(f)-1], line: line}
		if err := json.Unmarshal([]byte(line[j+1:]), &e.fields); err != nil {
			continue
		}
		out = append(out, e)
	}
	return out
}

// find returns the first event of ns at or after line from that matches.
func (ev *events) find(ns string, from int, match func(taskEvent) bool) (taskEvent, bool) {
	for _, e := range ev.parsed(ns) {
		if e.index >= from && match(e) {
			return e, true
		}
	}
	return taskEvent{}, false
}
