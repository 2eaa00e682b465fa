package testutil

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// Log records what is logged through the logger NewLog returns, so that a
// test can check that a component's warnings reach the logger it was given.
type Log struct {
	// mu guards records and changed.
	mu      sync.Mutex
	records []LogRecord
	// changed is closed by the next record; nil when nobody waits.
	changed chan struct{}
}

// LogRecord is one record: level, message and attributes, both as
// "key=value" and as values by key (a group's keys prefixed "group.").
type LogRecord struct {
	Level  slog.Level
	Msg    string
	Attrs  []string
	Values map[string]any
}

// NewLog returns a Log and a logger (level Debug) writing into it. The
// records are printed if the test fails.
func NewLog(t testing.TB) (*Log, *slog.Logger) {
	l := &Log{}
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range l.Records() {
				t.Logf("log: %s %q %v", r.Level, r.Msg, r.Attrs)
			}
		}
	})
	return l, slog.New(&logHandler{l: l})
}

// Records returns a copy of every record so far.
func (l *Log) Records() []LogRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]LogRecord(nil), l.records...)
}

// Matching returns the records at level whose message is msg.
func (l *Log) Matching(level slog.Level, msg string) []LogRecord {
	var out []LogRecord
	for _, r := range l.Records() {
		if r.Level == level && r.Msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// WaitFor waits up to within for a record that pred accepts and returns
// it; the test fails, naming what, if none comes.
func (l *Log) WaitFor(t testing.TB, within time.Duration, what string, pred func(LogRecord) bool) LogRecord {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		for _, r := range l.records {
			if pred(r) {
				l.mu.Unlock()
				return r
			}
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no log record %s within %v", what, within)
		}
	}
}

// Find returns the first record at level whose message contains msg.
func (l *Log) Find(level slog.Level, msg string) (LogRecord, bool) {
	for _, r := range l.Records() {
		if r.Level == level && strings.Contains(r.Msg, msg) {
			return r, true
		}
	}
	return LogRecord{}, false
}

type logHandler struct {
	l      *Log
	attrs  []string
	values []slog.Attr // keys prefixed with their group
	group  string
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	rec := LogRecord{Level: r.Level, Msg: r.Message, Attrs: append([]string(nil), h.attrs...), Values: make(map[string]any)}
	for _, a := range h.values {
		rec.Values[a.Key] = a.Value.Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs = append(rec.Attrs, h.group+a.Key+"="+a.Value.String())
		rec.Values[h.group+a.Key] = a.Value.Any()
		return true
	})
	h.l.mu.Lock()
	h.l.records = append(h.l.records, rec)
	if h.l.changed != nil {
		close(h.l.changed)
		h.l.changed = nil
	}
	h.l.mu.Unlock()
	return nil
}

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &logHandler{l: h.l, group: h.group, attrs: append([]string(nil), h.attrs...), values: append([]slog.Attr(nil), h.values...)}
	for _, a := range attrs {
		n.attrs = append(n.attrs, h.group+a.Key+"="+a.Value.String())
		n.values = append(n.values, slog.Attr{Key: h.group + a.Key, Value: a.Value})
	}
	return n
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{l: h.l, attrs: h.attrs, values: h.values, group: h.group + name + "."}
}
