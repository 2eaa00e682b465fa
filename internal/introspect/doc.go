// Package introspect is the shim's answer to the operator's `tether` tool:
// the ttrpc service tether.introspect.v1 (ServiceName), served on the
// shim's own socket beside the task API, and the client the tool calls it
// with.
//
// The service reports what only the shim knows: its containers and
// processes, the events it still has to deliver, its connections, its RPC
// counts and latencies and per-container counters (Snapshot), the stacks of
// all its goroutines (Stacks), and heap and CPU profiles (Profile). What
// /proc tells about the shim process (RSS, PSS, threads, fds) the tool
// reads itself, for shims of every version (package procfs).
//
// Invariants:
//   - An idle shim pays nothing for it: no listener of its own, no timer,
//     no goroutine. Everything is computed when a request comes; the
//     counters it reports are plain atomics owned by what they count,
//     bumped on paths that run anyway (an RPC, an event, a copy).
//   - Only the shim's own uid reaches it: it is served on the shim's
//     socket, whose listener admits peers of that uid only (SO_PEERCRED).
//   - The wire format is JSON (encoding/json) carried in the value of a
//     google.protobuf.Any of type BytesType, both ways; the JSON is the
//     documented schema of `tether inspect -o json` (docs/operators.md),
//     versioned by Snapshot.Schema. Decoders reject a schema they do not
//     know.
package introspect
