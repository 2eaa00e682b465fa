package stdio

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tether-shim/tether/internal/paths"
)

// FuzzValidate: stdio endpoints that pass Validate name clean absolute
// paths, with no ".." and no host, in one of the supported kinds.
func FuzzValidate(f *testing.F) {
	f.Add("/run/c/stdin", "/run/c/stdout", "/run/c/stderr", false)
	f.Add("", "binary:///usr/bin/log?a=b&c", "binary:///usr/bin/log", false)
	f.Add("", "file:///var/log/c.log", "", false)
	f.Add("", "fifo:///run/c/out", "", true)
	f.Add("../x", "file://host/x", "binary:///../x", false)
	f.Fuzz(func(t *testing.T, stdin, stdout, stderr string, terminal bool) {
		c := Config{Stdin: stdin, Stdout: stdout, Stderr: stderr, Terminal: terminal}
		if c.Validate() != nil {
			return
		}
		for _, s := range []string{stdout, stderr} {
			o, err := parseOutput(s)
			if err != nil {
				t.Fatalf("Validate accepted %q, which parseOutput refuses: %v", s, err)
			}
			if s == "" {
				continue
			}
			if !paths.CleanAbs(o.path) || slices.Contains(strings.Split(o.path, "/"), "..") {
				t.Fatalf("%q accepted with path %q", s, o.path)
			}
			if terminal && o.kind != kindFifo {
				t.Fatalf("%q accepted with a terminal", s)
			}
		}
		if stdin != "" && !paths.CleanAbs(stdin) {
			t.Fatalf("stdin %q accepted", stdin)
		}
	})
}

// FuzzHandedValidate: a hand-over description, decoded strictly as the
// state document is, is refused with errBadHanded or holds together: every
// descriptor 0 or a handed-over number, none twice, and every descriptor
// Adopt will use for the copies it resumes present (so Adopt never
// dereferences a missing one).
func FuzzHandedValidate(f *testing.F) {
	for _, s := range []string{
		`{"config":{"stdin":"/r/in","stdout":"/r/out","stderr":"/r/err"},"stdin_fifo":3,"stdin_pipe":4,"stdout_pipe":5,"stderr_pipe":6,"stdout_fifo":7,"stderr_fifo":8,"copies":{"out":"reading","err":"reading","in":"reading"},"progress":10,"dropped":0}`,
		`{"config":{"stdout":"file:///l/c.log","stderr":"file:///l/c.log"},"stdout_pipe":5,"stderr_pipe":6,"file":9,"container_stdout":10,"container_stderr":11,"copies":{"out":"pending","err":"pending"},"progress":0,"dropped":0}`,
		`{"config":{"stdout":"binary:///bin/log?a=b"},"container_stdout":3,"container_stderr":4,"logger_pid":42,"copies":{},"progress":0,"dropped":0}`,
		`{"config":{"stdin":"/r/in","stdout":"/r/out","terminal":true},"stdin_fifo":3,"stdout_fifo":4,"console":{"master":5},"copies":{"out":"reading","in":"reading"},"progress":1,"dropped":0,"partial_line":true}`,
		`{"config":{"stdout":"/r/out","terminal":true},"stdout_fifo":4,"console":{"dir":"/tmp/tether-pty-1","listener":5},"copies":{"out":"pending"},"progress":0,"dropped":0}`,
		`{"config":{"stdout":"/r/out"},"stdout_fifo":4,"copies":{"out":"closing"},"progress":0,"dropped":0,"stopping":false}`,
		`{"config":{},"copies":{},"progress":0,"dropped":0}`,
		`{"config":{"terminal":true},"console":{"dir":"/","listener":3},"copies":{"out":"pending"}}`,
		`{"stdout_pipe":2,"copies":{"out":"x"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var h Handed
		if dec.Decode(&h) != nil {
			return
		}
		err := h.validate()
		if err != nil {
			if !errors.Is(err, errBadHanded) {
				t.Fatalf("refused without errBadHanded: %v", err)
			}
			return
		}
		if h.Config.Validate() != nil {
			t.Fatalf("accepted a bad config %+v", h.Config)
		}
		seen := map[int]bool{}
		for _, d := range h.fds() {
			if d.fd == 0 {
				continue
			}
			if d.fd < 3 || d.fd > maxHandedFD || seen[d.fd] {
				t.Fatalf("accepted %s = %d in %+v", d.name, d.fd, h)
			}
			seen[d.fd] = true
		}
		// What resumeCopies and StartOutput use, stated again.
		con := h.Console
		if h.Config.Terminal != (con != nil) {
			t.Fatalf("terminal %v with console %+v", h.Config.Terminal, con)
		}
		out, _ := parseOutput(h.Config.Stdout)
		errOut, _ := parseOutput(h.Config.Stderr)
		for _, s := range []struct {
			o          output
			st         string
			pipe, fifo int
		}{{out, h.Copies.Out, h.StdoutPipe, h.StdoutFifo}, {errOut, h.Copies.Err, h.StderrPipe, h.StderrFifo}} {
			switch {
			case con != nil:
			case s.st == "pending" || s.st == "reading":
				if s.pipe == 0 || s.o.kind == kindFifo && s.fifo == 0 || s.o.kind == kindFile && h.File == 0 || s.o.kind != kindFifo && s.o.kind != kindFile {
					t.Fatalf("a %s copy without its descriptors: %+v", s.st, h)
				}
			case s.st == "closing":
				if s.fifo == 0 {
					t.Fatalf("a closing copy without its fifo: %+v", h)
				}
			}
		}
		if con != nil {
			if h.Copies.Out == "pending" && (con.Listener == 0 || !strings.HasPrefix(filepath.Base(con.Dir), consoleDirPrefix)) ||
				h.Copies.Out == "reading" && con.Master == 0 ||
				h.Copies.In == "reading" && (con.Master == 0 || h.StdinFifo == 0) {
				t.Fatalf("a console copy without its descriptors: %+v, %+v", h, con)
			}
		} else if h.Copies.In == "reading" && (h.StdinFifo == 0 || h.StdinPipe == 0) {
			t.Fatalf("a stdin copy without its descriptors: %+v", h)
		}
	})
}
