// Package log is Tether's stand-in for github.com/containerd/log. It provides
// exactly the API surface that github.com/containerd/ttrpc uses (G, Fields and
// an Entry with WithError, WithField, WithFields and the level methods) and
// forwards every record to the logger stored in the context by WithLogger,
// else to slog.Default(). It exists so that the shim binary does not link
// logrus; see docs/design.md, "Dependencies".
package log

import (
	"context"
	"fmt"
	"log/slog"
)

// Fields is a set of key-value pairs attached to an Entry.
type Fields = map[string]any

type loggerKey struct{}

// WithLogger returns a context whose G entries log through l.
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// Entry is an immutable set of attributes bound to a slog.Logger.
type Entry struct {
	l     *slog.Logger
	attrs []any
}

// G returns an Entry that logs through the context's logger.
func G(ctx context.Context) *Entry {
	if ctx != nil {
		if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok && l != nil {
			return &Entry{l: l}
		}
	}
	return &Entry{l: slog.Default()}
}

func (e *Entry) with(kv ...any) *Entry {
	attrs := make([]any, 0, len(e.attrs)+len(kv))
	attrs = append(attrs, e.attrs...)
	return &Entry{l: e.l, attrs: append(attrs, kv...)}
}

// WithError adds err under the key "error".
func (e *Entry) WithError(err error) *Entry { return e.with("error", err) }

// WithField adds one key-value pair.
func (e *Entry) WithField(k string, v any) *Entry { return e.with(k, v) }

// WithFields adds every pair of f.
func (e *Entry) WithFields(f Fields) *Entry {
	kv := make([]any, 0, 2*len(f))
	for k, v := range f {
		kv = append(kv, k, v)
	}
	return e.with(kv...)
}

func (e *Entry) log(level slog.Level, msg string) {
	e.l.Log(context.Background(), level, msg, e.attrs...)
}

// Debug logs at debug level.
func (e *Entry) Debug(args ...any) { e.log(slog.LevelDebug, fmt.Sprint(args...)) }

// Debugf logs at debug level.
func (e *Entry) Debugf(f string, args ...any) { e.log(slog.LevelDebug, fmt.Sprintf(f, args...)) }

// Info logs at info level.
func (e *Entry) Info(args ...any) { e.log(slog.LevelInfo, fmt.Sprint(args...)) }

// Infof logs at info level.
func (e *Entry) Infof(f string, args ...any) { e.log(slog.LevelInfo, fmt.Sprintf(f, args...)) }

// Warn logs at warn level.
func (e *Entry) Warn(args ...any) { e.log(slog.LevelWarn, fmt.Sprint(args...)) }

// Warnf logs at warn level.
func (e *Entry) Warnf(f string, args ...any) { e.log(slog.LevelWarn, fmt.Sprintf(f, args...)) }

// Error logs at error level.
func (e *Entry) Error(args ...any) { e.log(slog.LevelError, fmt.Sprint(args...)) }

// Errorf logs at error level.
func (e *Entry) Errorf(f string, args ...any) { e.log(slog.LevelError, fmt.Sprintf(f, args...)) }
