package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// stressScale multiplies the amount of abuse: 1 in `make test`,
// TETHER_STRESS_SCALE (make stress sets 10) otherwise.
func stressScale(t *testing.T) int {
	t.Helper()
	s := os.Getenv("TETHER_STRESS_SCALE")
	if s == "" {
		return 1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("TETHER_STRESS_SCALE=%q: want a positive integer", s)
	}
	return n
}

// memKB reads Rss and Anonymous (kB) of pid from smaps_rollup.
func memKB(t *testing.T, pid int) (rss, anon int) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		n, _ := strconv.Atoi(fields[1])
		switch fields[0] {
		case "Rss:":
			rss = n
		case "Anonymous:":
			anon = n
		}
	}
	return rss, anon
}

// memoryReport describes where process pid's anonymous memory is: its
// mappings with more than 256 kB of it, and, for a shim started with
// -debug, the Go runtime's own account, which such a shim writes to
// <bundle>/tether-metrics.txt on SIGUSR1.
func memoryReport(pid int, bundle string) string {
	var b strings.Builder
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid)); err == nil {
		var head string
		for line := range strings.Lines(string(data)) {
			f := strings.Fields(line)
			if len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
				head = strings.TrimSpace(line)
				continue
			}
			if len(f) >= 2 && f[0] == "Anonymous:" {
				if n, _ := strconv.Atoi(f[1]); n > 256 {
					fmt.Fprintf(&b, "%6d kB anonymous in %s\n", n, head)
				}
			}
		}
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || !strings.Contains(string(cmdline), "-debug\x00") {
		return b.String()
	}
	metrics := filepath.Join(bundle, "tether-metrics.txt")
	_ = os.Remove(metrics)
	if err := syscall.Kill(pid, syscall.SIGUSR1); err == nil {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if data, err := os.ReadFile(metrics); err == nil && len(data) > 0 {
				b.WriteString("Go runtime (tether-metrics.txt):\n")
				b.Write(data)
				b.WriteString(goroutineSummary(filepath.Join(bundle, "tether-goroutines.txt")))
				break
			}
		}
	}
	return b.String()
}

// goroutineSummary counts the goroutines of a debug=2 goroutine dump by
// their state, the function they are in and the one that created them, and
// shows one stack of each kind.
func goroutineSummary(file string) string {
	var data []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if d, err := os.ReadFile(file); err == nil && len(d) > 0 {
			data = d
			break
		}
	}
	funcName := func(l string) string {
		if i := strings.LastIndexByte(l, '('); i > 0 {
			return l[:i]
		}
		return l
	}
	counts := map[string]int{}
	example := map[string]string{}
	var keys []string
	for _, g := range strings.Split(string(data), "\n\n") {
		lines := strings.Split(strings.TrimSpace(g), "\n")
		if len(lines) < 2 {
			continue
		}
		state := lines[0]
		if i, j := strings.IndexByte(state, '['), strings.IndexByte(state, ','); i >= 0 {
			if j < 0 {
				j = strings.IndexByte(state, ']')
			}
			if j > i {
				state = state[i+1 : j]
			}
		}
		created := ""
		for _, l := range lines {
			if c, ok := strings.CutPrefix(l, "created by "); ok {
				created, _, _ = strings.Cut(c, " in goroutine")
			}
		}
		k := state + " " + funcName(lines[1]) + " <- " + created
		if counts[k] == 0 {
			keys = append(keys, k)
			example[k] = g
		}
		counts[k]++
	}
	var b strings.Builder
	b.WriteString("goroutines (tether-goroutines.txt):\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%5d %s\n", counts[k], k)
	}
	for _, k := range keys {
		if counts[k] > 5 {
			fmt.Fprintf(&b, "one of the %d %s:\n%s\n", counts[k], k, example[k])
		}
	}
	return b.String()
}

// frame is one ttrpc message as it goes on the wire: a 10-byte header
// (length, stream id, type, flags; big-endian) and the payload.
func frame(length uint32, stream uint32, typ, flags byte, payload []byte) []byte {
	b := make([]byte, 10, 10+len(payload))
	binary.BigEndian.PutUint32(b[0:], length)
	binary.BigEndian.PutUint32(b[4:], stream)
	b[8], b[9] = typ, flags
	return append(b, payload...)
}

// abuseConn dials path, writes data, reads whatever comes back for a
// moment, and hangs up. It reports whether the shim answered anything.
func abuseConn(path string, data []byte) (answered bool, err error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return false, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write(data); err != nil {
		return false, nil // the shim hung up first: fine
	}
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	return n > 0, nil
}

// TestTTRPCAbuse drives a running shim with what a hostile or broken peer
// sends over its socket: raw garbage, frames with lying or huge lengths,
// requests to unknown services and methods, random payloads for every task
// method, and hostile but well-formed Creates and Execs (ids with "..", NUL
// and 10 kB lengths, bundles and stdio outside, at directories, sockets and
// symlinks, garbage Anys), over hundreds of connections, some at once.
// The shim must neither crash nor hang, accept none of the hostile
// requests, keep serving its container, and give the memory back: its
// anonymous memory once idle again within 1 MiB of before.
func TestTTRPCAbuse(t *testing.T) {
	scale := stressScale(t)
	// What is abused is the shim, not containerd or runc: `make test` runs
	// it under the first and the last containerd with the first runc;
	// `make stress` under every pair.
	each := forEachVersion
	if scale == 1 {
		each = func(t *testing.T, short string, f func(t *testing.T, d *daemon, ns string)) {
			t.Helper()
			if len(versions) == 0 {
				t.Fatal("no containerd versions selected")
			}
			forOne(t, short, versions[0], runcs[0], f)
			if len(versions) > 1 {
				forOne(t, short, versions[len(versions)-1], runcs[0], f)
			}
		}
	}
	each(t, "abuse", func(t *testing.T, d *daemon, ns string) {
		// The shim as operators run it: a shim under a debug containerd
		// samples its heap, and the profile's records are memory too.
		d.atLogLevel(t, "info")
		d.runDetached(t, ns, "a1")
		s := d.shimOf(t, ns, "a1")
		client := dialShim(t, s.path)
		call := func(f func(ctx context.Context) error) error {
			ctx, cancel := nsContext(ns)
			defer cancel()
			return f(ctx)
		}
		state := func() error {
			return call(func(ctx context.Context) error {
				_, err := client.State(ctx, &taskapi.StateRequest{ID: "a1"})
				return err
			})
		}
		if err := state(); err != nil {
			t.Fatalf("State before: %v", err)
		}

		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
		randBytes := func(n int) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(rng.IntN(256))
			}
			return b
		}
		methods := []string{"State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint", "Kill",
			"Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect", "Nope", ""}
		request := func(service, method string, payload []byte) []byte {
			req, err := proto.Marshal(&ttrpc.Request{Service: service, Method: method, Payload: payload,
				TimeoutNano: int64(time.Second),
				Metadata:    []*ttrpc.KeyValue{{Key: nsHeader, Value: ns}}})
			if err != nil {
				t.Fatal(err)
			}
			return req
		}

		// Hostile but well-formed requests, sent in each round: every one refused.
		outside := t.TempDir()
		dir := filepath.Join(outside, "dir")
		link := filepath.Join(outside, "link")
		sock := filepath.Join(outside, "sock")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/passwd", link); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		bundle := d.bundle(ns, "a1")
		other := filepath.Join(filepath.Dir(bundle), "hostile1")
		hostile := []struct {
			what string
			req  *taskapi.CreateTaskRequest
		}{
			{"id with ..", &taskapi.CreateTaskRequest{ID: "..", Bundle: filepath.Join(filepath.Dir(bundle), "..")}},
			{"id with NUL", &taskapi.CreateTaskRequest{ID: "a\x00b", Bundle: bundle}},
			{"10 kB id", &taskapi.CreateTaskRequest{ID: strings.Repeat("a", 10<<10), Bundle: bundle}},
			{"bundle outside", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: filepath.Join(outside, "hostile1")}},
			{"bundle with ..", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: filepath.Dir(bundle) + "/../hostile1"}},
			{"stdin a directory", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Stdin: dir}},
			{"stdout a socket", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Stdout: sock}},
			{"stdout a symlink", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Stdout: link}},
			{"stdout relative", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Stdout: "../out"}},
			{"stdout a host", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Stdout: "file://host/x"}},
			{"garbage options", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: randBytes(64)}}},
			{"unknown options", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Options: &anypb.Any{TypeUrl: "x.y", Value: []byte("z")}}},
			{"huge rootfs list", &taskapi.CreateTaskRequest{ID: "hostile1", Bundle: other, Rootfs: hugeMounts(5000)}},
		}
		spec, err := os.ReadFile(filepath.Join(bundle, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(other, 0o711); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(other)
		if err := os.WriteFile(filepath.Join(other, "config.json"), spec, 0o644); err != nil {
			t.Fatal(err)
		}
		// round is one burst of abuse: the connections, then the hostile
		// requests. It returns how many hostile requests were accepted.
		round := func() (accepted int) {
			// Each connection gets one kind of abuse; 40 of them at a time.
			var conns [][]byte
			for range 100 * scale {
				conns = append(conns, randBytes(rng.IntN(4096)))                                               // garbage
				conns = append(conns, frame(1<<31, 1, 1, 0, randBytes(64)))                                    // a 2 GiB frame, never sent
				conns = append(conns, frame(5<<20, 1, 1, 0, nil))                                              // above ttrpc's 4 MiB limit
				conns = append(conns, frame(100, 2, 1, 0, randBytes(100)))                                     // an even stream id
				conns = append(conns, frame(100, 1, byte(rng.IntN(256)), byte(rng.IntN(256)), randBytes(100))) // any type and flags
				m := methods[rng.IntN(len(methods))]
				svc := []string{"containerd.task.v2.Task", "containerd.task.v3.Task", "x.y.Z"}[rng.IntN(3)]
				p := request(svc, m, randBytes(rng.IntN(512)))
				conns = append(conns, frame(uint32(len(p)), 1, 1, 0, p))
			}
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				dialErr error
				sem     = make(chan struct{}, 40)
			)
			start := time.Now()
			for _, data := range conns {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					if _, err := abuseConn(s.path, data); err != nil {
						mu.Lock()
						dialErr = err
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if dialErr != nil {
				t.Errorf("the shim stopped accepting connections: %v", dialErr)
			}
			t.Logf("%d abusive connections in %v", len(conns), time.Since(start).Round(time.Millisecond))

			for _, h := range hostile {
				err := call(func(ctx context.Context) error { _, err := client.Create(ctx, h.req); return err })
				if err == nil {
					accepted++
					t.Errorf("hostile Create (%s) was accepted", h.what)
					_ = call(func(ctx context.Context) error {
						_, _ = client.Kill(ctx, &taskapi.KillRequest{ID: h.req.ID, Signal: 9})
						_, err := client.Delete(ctx, &taskapi.DeleteRequest{ID: h.req.ID})
						return err
					})
					continue
				}
				expectCode(t, "hostile Create ("+h.what+")", err, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.ResourceExhausted)
			}
			for _, e := range []struct{ what, id, stdout string }{
				{"exec id with ..", "..", ""},
				{"exec stdout a socket", "x1", sock},
				{"exec 10 kB id", strings.Repeat("e", 10<<10), ""},
			} {
				err := call(func(ctx context.Context) error {
					_, err := client.Exec(ctx, &taskapi.ExecProcessRequest{ID: "a1", ExecID: e.id, Stdout: e.stdout,
						Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: []byte(`{"args":["/bin/true"],"cwd":"/"}`)}})
					if err == nil {
						_, err = client.Start(ctx, &taskapi.StartRequest{ID: "a1", ExecID: e.id})
						if err != nil {
							// An exec whose Start failed stays, created, as
							// under the stock shim; clients delete it.
							_, _ = client.Delete(ctx, &taskapi.DeleteRequest{ID: "a1", ExecID: e.id})
						}
					}
					return err
				})
				if err == nil {
					accepted++
					t.Errorf("hostile Exec (%s) was accepted", e.what)
					continue
				}
				expectCode(t, "hostile Exec ("+e.what+")", err, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition)
			}
			return accepted
		}

		// idle waits up to 30 s for the shim's anonymous memory to come
		// within limit kB of base once idle, and returns its memory then.
		idle := func(base, limit int) (rss, anon int) {
			for deadline := time.Now().Add(30 * time.Second); ; {
				time.Sleep(3 * time.Second) // idle: the trimmer has run
				if !alive(s.pid) {
					crash, _ := os.ReadFile(filepath.Join(bundle, "tether-crash.log"))
					t.Fatalf("the shim %d died once idle; its crash log:\n%s", s.pid, crash)
				}
				rss, anon = memKB(t, s.pid)
				if anon <= base+limit || time.Now().After(deadline) {
					return rss, anon
				}
			}
		}

		// The baseline is a shim in service: one that has served each task
		// method and been through its first collections (warmUp). What the
		// Go runtime takes for those (span-set metadata for both sweep
		// generations, the protobuf tables of each message type) it keeps
		// for good, and ordinary traffic pays it as much as abuse does.
		warmUp(t, call, client, "a1")
		time.Sleep(3 * time.Second) // idle: the trimmer has run
		rss0, anon0 := memKB(t, s.pid)
		accepted := round()
		if err := state(); err != nil {
			t.Fatalf("State after the first round: %v", err)
		}
		rssWarm, anonWarm := idle(anon0, 1024)
		t.Logf("shim %d after the first round: RSS %d -> %d kB, anonymous %d -> %d kB (%+d kB, limit 1024)", s.pid, rss0, rssWarm, anon0, anonWarm, anonWarm-anon0)
		if anonWarm > anon0+1024 {
			t.Errorf("the shim holds %d kB anonymous memory once idle after its first abuse, %d kB more than before (limit 1024)\n%s", anonWarm, anonWarm-anon0, memoryReport(s.pid, bundle))
		}
		for range 2 {
			accepted += round()
		}

		// Still the same shim, still serving its container.
		if !alive(s.pid) {
			crash, _ := os.ReadFile(filepath.Join(bundle, "tether-crash.log"))
			t.Fatalf("the shim %d died; its crash log:\n%s", s.pid, crash)
		}
		if err := state(); err != nil {
			t.Fatalf("State after the abuse: %v", err)
		}
		rss1, anon1 := idle(anonWarm, 1024)
		t.Logf("shim %d after two more rounds: RSS %d -> %d kB, anonymous %d -> %d kB (%+d kB, limit 1024); %d hostile requests accepted", s.pid, rssWarm, rss1, anonWarm, anon1, anon1-anonWarm, accepted)
		if anon1 > anonWarm+1024 {
			t.Errorf("the shim holds %d kB anonymous memory once idle after more abuse, %d kB more than after the first round (limit 1024)\n%s", anon1, anon1-anonWarm, memoryReport(s.pid, bundle))
		}
		if _, err := os.Stat(filepath.Join(outside, "hostile1")); err == nil {
			t.Error("a hostile Create made a bundle outside")
		}
	})
}

// hugeMounts is a rootfs list of n overlay mounts with long options.
func hugeMounts(n int) []*apitypes.Mount {
	ms := make([]*apitypes.Mount, n)
	for i := range ms {
		ms[i] = &apitypes.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + strings.Repeat("/l", 100)}}
	}
	return ms
}

// warmUpRequests is how many well-formed State requests warmUp sends: about
// 40 MB of allocation, a dozen collections.
const warmUpRequests = 20000

// warmUp brings a shim where one in service is: it serves each task method
// once (well-formed requests for a task that does not exist), so that what a
// method costs the first time it is decoded (its protobuf tables) is part of
// the baseline; then warmUpRequests State requests for its task id, so that
// the Go runtime's metadata of its first collections is too. Without the
// State requests a shim's first abusive round left +1.2 to 1.7 MB, of which
// ~1 MB the same requests alone leave, and with them +0.0 to 0.6 MB
// (docs/performance.md, "After abuse"). containerd's State calls and
// kubelet's exec probes bring a shim there within its first hours.
func warmUp(t *testing.T, call func(func(context.Context) error) error, c taskapi.TTRPCTaskService, task string) {
	t.Helper()
	const id = "warm-up-none"
	calls := []func(ctx context.Context) error{
		func(ctx context.Context) error { _, err := c.State(ctx, &taskapi.StateRequest{ID: id}); return err },
		func(ctx context.Context) error {
			_, err := c.Create(ctx, &taskapi.CreateTaskRequest{ID: id, Bundle: "/nonexistent/" + id})
			return err
		},
		func(ctx context.Context) error { _, err := c.Start(ctx, &taskapi.StartRequest{ID: id}); return err },
		func(ctx context.Context) error { _, err := c.Delete(ctx, &taskapi.DeleteRequest{ID: id}); return err },
		func(ctx context.Context) error { _, err := c.Pids(ctx, &taskapi.PidsRequest{ID: id}); return err },
		func(ctx context.Context) error { _, err := c.Pause(ctx, &taskapi.PauseRequest{ID: id}); return err },
		func(ctx context.Context) error { _, err := c.Resume(ctx, &taskapi.ResumeRequest{ID: id}); return err },
		func(ctx context.Context) error {
			_, err := c.Checkpoint(ctx, &taskapi.CheckpointTaskRequest{ID: id, Path: "/nonexistent"})
			return err
		},
		func(ctx context.Context) error {
			_, err := c.Kill(ctx, &taskapi.KillRequest{ID: id, Signal: 9})
			return err
		},
		func(ctx context.Context) error {
			_, err := c.Exec(ctx, &taskapi.ExecProcessRequest{ID: id, ExecID: "e"})
			return err
		},
		func(ctx context.Context) error {
			_, err := c.ResizePty(ctx, &taskapi.ResizePtyRequest{ID: id, Width: 80, Height: 24})
			return err
		},
		func(ctx context.Context) error { _, err := c.CloseIO(ctx, &taskapi.CloseIORequest{ID: id}); return err },
		func(ctx context.Context) error {
			_, err := c.Update(ctx, &taskapi.UpdateTaskRequest{ID: id})
			return err
		},
		func(ctx context.Context) error { _, err := c.Wait(ctx, &taskapi.WaitRequest{ID: id}); return err },
		func(ctx context.Context) error { _, err := c.Stats(ctx, &taskapi.StatsRequest{ID: id}); return err },
		func(ctx context.Context) error { _, err := c.Connect(ctx, &taskapi.ConnectRequest{ID: id}); return err },
	}
	for _, f := range calls {
		_ = call(f) // refused, but decoded and answered
	}
	for range warmUpRequests {
		if err := call(func(ctx context.Context) error {
			_, err := c.State(ctx, &taskapi.StateRequest{ID: task})
			return err
		}); err != nil {
			t.Fatalf("State during the warm-up: %v", err)
		}
	}
}
