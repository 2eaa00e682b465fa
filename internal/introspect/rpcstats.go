package introspect

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/ttrpc"
)

// latencyBuckets are the upper bounds, in seconds, of the RPC latency
// histogram; never written. Wait requests last as long as the process they
// wait for and land in the last bucket or above.
var latencyBuckets = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// methodStats are the counters of one method. All fields are atomics,
// bumped by the request that counts; never reset.
type methodStats struct {
	count   atomic.Uint64
	errors  atomic.Uint64
	nanos   atomic.Uint64
	buckets [len(latencyBuckets)]atomic.Uint64 // not cumulative: one bucket per request
}

// RPCStats counts the requests of a ttrpc server, per method. Its zero
// value is ready to use. Observe is called by the server's interceptor
// on every request; the first request of a method adds its entry, under
// mu, and later ones only bump atomics. It holds one entry per method
// ever called (a fixed set: the server refuses unknown methods before any
// interceptor runs).
type RPCStats struct {
	mu      sync.Mutex
	methods map[string]*methodStats // guarded by mu; entries never removed
}

// Observe counts one request of method that took d and failed if failed.
func (s *RPCStats) Observe(method string, d time.Duration, failed bool) {
	m := s.entry(method)
	m.count.Add(1)
	if failed {
		m.errors.Add(1)
	}
	m.nanos.Add(uint64(max(d, 0)))
	secs := d.Seconds()
	for i, le := range latencyBuckets {
		if secs <= le {
			m.buckets[i].Add(1)
			break
		}
	}
}

func (s *RPCStats) entry(method string) *methodStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.methods == nil {
		s.methods = make(map[string]*methodStats)
	}
	m, ok := s.methods[method]
	if !ok {
		m = &methodStats{}
		s.methods[method] = m
	}
	return m
}

// Snapshot returns the counters of every method called, in method order,
// with cumulative buckets.
func (s *RPCStats) Snapshot() []RPCMethod {
	s.mu.Lock()
	names := make([]string, 0, len(s.methods))
	for name := range s.methods {
		names = append(names, name)
	}
	entries := make(map[string]*methodStats, len(names))
	for _, n := range names {
		entries[n] = s.methods[n]
	}
	s.mu.Unlock()
	slices.Sort(names)
	out := make([]RPCMethod, 0, len(names))
	for _, n := range names {
		m := entries[n]
		r := RPCMethod{
			Method:     n,
			Errors:     m.errors.Load(),
			SumSeconds: time.Duration(m.nanos.Load()).Seconds(),
			Buckets:    make([]Bucket, len(latencyBuckets)),
		}
		var cum uint64
		for i, le := range latencyBuckets {
			cum += m.buckets[i].Load()
			r.Buckets[i] = Bucket{LE: le, Count: cum}
		}
		// Read last, so that Count is never below a bucket even while
		// requests are counted concurrently.
		r.Count = max(m.count.Load(), cum)
		out = append(out, r)
	}
	return out
}

// Interceptor returns a ttrpc server interceptor that counts every request
// in s.
func (s *RPCStats) Interceptor() ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
		start := time.Now()
		resp, err := m(ctx, u)
		s.Observe(info.FullMethod, time.Since(start), err != nil)
		return resp, err
	}
}
