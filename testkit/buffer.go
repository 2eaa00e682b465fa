package testkit

import (
	"bytes"
	"sync"
)

// LockedBuffer is a bytes.Buffer that any number of goroutines may write to
// and read at once, such as the copying goroutines of a containerd client's
// cio. Its zero value is an empty buffer.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
