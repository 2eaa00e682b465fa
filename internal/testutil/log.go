package testutil

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Log records what is logged through the logger NewLog returns, so that a
// test can check that a component's warnings reach the logger it was given.
type Log struct {
	// mu guards records.
	mu      sync.Mutex
	records []LogRecord
}

// LogRecord is one record: level, message and attributes as "key=value".
type LogRecord struct {
	Level slog.Level
	Msg   string
	Attrs []string
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
	l     *Log
	attrs []string
	group string
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	rec := LogRecord{Level: r.Level, Msg: r.Message, Attrs: append([]string(nil), h.attrs...)}
	r.Attrs(func(a slog.Attr) bool {
		rec.Attrs = append(rec.Attrs, h.group+a.Key+"="+a.Value.String())
		return true
	})
	h.l.mu.Lock()
	h.l.records = append(h.l.records, rec)
	h.l.mu.Unlock()
	return nil
}

func (h *logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &logHandler{l: h.l, group: h.group, attrs: append([]string(nil), h.attrs...)}
	for _, a := range attrs {
		n.attrs = append(n.attrs, h.group+a.Key+"="+a.Value.String())
	}
	return n
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{l: h.l, attrs: h.attrs, group: h.group + name + "."}
}
