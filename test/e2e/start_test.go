package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/tether-shim/tether/testkit"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// plainAddress is the plain answer of start: a filesystem socket in /run/containerd/s.
var plainAddress = regexp.MustCompile(`^unix:///run/containerd/s/[0-9a-f]{64}$`)

// The shim prints a version line for -v.
func TestShimVersionFlag(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := run(ctx, shimBin, "-v")
	t.Logf("%s -v: %s", shimBin, r)
	if r.code != 0 {
		t.Fatalf("-v: %s", r)
	}
	first := strings.SplitN(strings.TrimSpace(r.stdout), "\n", 2)[0]
	if !strings.Contains(first, shimBinaryName) {
		t.Errorf("the first line of -v is %q; want it to name %s", first, shimBinaryName)
	}
	if !regexp.MustCompile(`(?i)version|\d+\.\d+`).MatchString(r.stdout) {
		t.Errorf("-v prints no version: %q", r.stdout)
	}
}

// startCase is one dialect of the start command, run straight, without containerd.
type startCase struct {
	name string
	// publish is the -publish-binary flag: containerd passes its own path.
	publish string
	stdin   func(ns, id string) []byte
	// check checks stdout and returns the address it announces.
	check func(t *testing.T, stdout []byte) string
}

func TestShimStartDialects(t *testing.T) {
	const ns = "e2e-start"
	checkPlain := func(t *testing.T, stdout []byte) string {
		t.Helper()
		if !plainAddress.Match(stdout) {
			t.Fatalf("stdout %q, want exactly unix:///run/containerd/s/<64 hex> with no newline", stdout)
		}
		return string(stdout)
	}
	cases := []startCase{
		{
			// containerd 1.6 to 2.2 without runtime options: nothing on stdin.
			name:  "empty-stdin",
			stdin: func(string, string) []byte { return nil },
			check: checkPlain,
		},
		{
			// containerd 1.6 to 2.2 with runtime options: the options as an Any.
			// The shim cannot tell 1.6 from 2.2, so the answer must be plain.
			name: "legacy-options-any",
			stdin: func(string, string) []byte {
				opts, err := anypb.New(&runcoptions.Options{BinaryName: "runc", Root: "/run/containerd/runc"})
				if err != nil {
					t.Fatal(err)
				}
				opts.TypeUrl = "containerd.runc.v1.Options"
				data, err := proto.Marshal(opts)
				if err != nil {
					t.Fatal(err)
				}
				return data
			},
			check: checkPlain,
		},
		{
			// containerd 2.3+: BootstrapParams in, BootstrapResult out.
			name: "bootstrap-protobuf",
			stdin: func(ns, id string) []byte {
				params := &bootapi.BootstrapParams{
					InstanceID:             id,
					Namespace:              ns,
					ContainerdVersion:      "v2.4.2",
					ContainerdGrpcAddress:  startAddress(id),
					ContainerdTtrpcAddress: startAddress(id) + ".ttrpc",
					ContainerdBinary:       "/bin/true",
				}
				data, err := proto.Marshal(params)
				if err != nil {
					t.Fatal(err)
				}
				return data
			},
			check: func(t *testing.T, stdout []byte) string {
				t.Helper()
				var res bootapi.BootstrapResult
				if err := proto.Unmarshal(stdout, &res); err != nil {
					t.Fatalf("stdout %q is not a protobuf BootstrapResult: %v", stdout, err)
				}
				if u := res.ProtoReflect().GetUnknown(); len(u) > 0 {
					t.Fatalf("stdout %q parses as BootstrapResult only with unknown fields %q", stdout, u)
				}
				if res.Version != 2 && res.Version != 3 {
					t.Errorf("BootstrapResult.version %d, want 2 or 3", res.Version)
				}
				if res.Protocol != "ttrpc" {
					t.Errorf("BootstrapResult.protocol %q, want ttrpc", res.Protocol)
				}
				if !plainAddress.MatchString(res.Address) {
					t.Fatalf("BootstrapResult.address %q, want unix:///run/containerd/s/<64 hex>", res.Address)
				}
				t.Logf("BootstrapResult: %v", &res)
				return res.Address
			},
		},
	}
	// What containerd 1.6 to 2.2 really pass: nothing on stdin (no runtime
	// options), and their own binary as -publish-binary. The answer must be
	// one that version parses: 1.6 only the plain address; 1.7 plain or JSON
	// version 2; 2.0 to 2.2 plain or JSON version 2 or 3.
	for _, v := range versions {
		if !sendsLegacyStdin(v) {
			continue
		}
		v := v
		cases = append(cases, startCase{
			name:    "containerd-" + v.name,
			publish: v.containerd,
			stdin:   func(string, string) []byte { return nil },
			check: func(t *testing.T, stdout []byte) string {
				t.Helper()
				if plainAddress.Match(stdout) {
					t.Logf("containerd %s: plain answer", v.name)
					return string(stdout)
				}
				var res struct {
					Version  int    `json:"version"`
					Address  string `json:"address"`
					Protocol string `json:"protocol"`
				}
				if err := json.Unmarshal(stdout, &res); err != nil {
					t.Fatalf("containerd %s: stdout %q is neither the plain address nor JSON: %v", v.name, stdout, err)
				}
				okVersions := map[string][]int{"1.6": nil, "1.7": {2}}[v.name[:3]]
				if v.major >= 2 {
					okVersions = []int{2, 3}
				}
				ok := false
				for _, want := range okVersions {
					ok = ok || res.Version == want
				}
				if !ok {
					t.Errorf("containerd %s: JSON answer %q; this version accepts JSON versions %v only", v.name, stdout, okVersions)
				}
				if res.Protocol != "ttrpc" || !plainAddress.MatchString(res.Address) {
					t.Fatalf("containerd %s: JSON answer %q: want protocol ttrpc and a unix:///run/containerd/s/<64 hex> address", v.name, stdout)
				}
				t.Logf("containerd %s: JSON answer, version %d", v.name, res.Version)
				return res.Address
			},
		})
	}
	for _, c := range cases {
		if c.publish == "" {
			c.publish = "/bin/true"
		}
		t.Run(c.name, func(t *testing.T) {
			id := fmt.Sprintf("%s-%d", c.name, os.Getpid())
			bundle := startBundle(t)
			stdin := c.stdin(ns, id)

			stdout := runStart(t, bundle, ns, id, c.publish, stdin)
			address := c.check(t, stdout)
			path := strings.TrimPrefix(address, "unix://")
			sum := sha256.Sum256([]byte(filepath.Join(startAddress(id), ns, id)))
			if want := "/run/containerd/s/" + hex.EncodeToString(sum[:]); path != want {
				t.Errorf("socket %s, want %s = hex(sha256(<address>/<ns>/<group id>))", path, want)
			}
			pid := startServer(t, path, id)

			data, err := os.ReadFile(filepath.Join(bundle, "address"))
			if err != nil {
				t.Fatalf("the bundle's address file: %v", err)
			}
			if string(data) != address {
				t.Errorf("<bundle>/address holds %q, want the plain address %q", data, address)
			}
			st, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want a socket with permissions 0600", path, st.Mode())
			}
			if dst, err := os.Stat(filepath.Dir(path)); err != nil || dst.Mode().Perm() != 0o700 {
				t.Errorf("%s: %v (%v), want a directory with permissions 0700", filepath.Dir(path), dst.Mode(), err)
			}

			// The same start again answers the same address, from the same server.
			again := runStart(t, bundle, ns, id, c.publish, stdin)
			if !bytes.Equal(again, stdout) {
				t.Errorf("the second start printed %q, the first %q", again, stdout)
			}
			waitFor(t, 10*time.Second, "a single server", func() (bool, string) {
				servers := startServers(id)
				return len(servers) == 1 && servers[0] == pid, fmt.Sprintf("servers %v, first server %d", servers, pid)
			})

			// Shutdown over ttrpc ends the server and removes its socket.
			client := dialShim(t, path)
			ctx, cancel := nsContext(ns)
			_, err = client.Shutdown(ctx, &taskapi.ShutdownRequest{ID: id})
			cancel()
			t.Logf("Shutdown: %v", err)
			waitFor(t, 20*time.Second, "the server to exit after Shutdown", func() (bool, string) {
				return !alive(pid), fmt.Sprintf("pid %d alive", pid)
			})
			waitFor(t, 10*time.Second, "the socket to be removed after Shutdown", func() (bool, string) {
				_, err := os.Lstat(path)
				return os.IsNotExist(err), fmt.Sprintf("lstat %s: %v", path, err)
			})
		})
	}
}

// startAddress is the (fake) containerd address passed to start for a case.
// Being under runBase, leftovers of a killed run are found and cleaned up.
func startAddress(id string) string { return filepath.Join(runBase, "start-"+id+".sock") }

// startBundle makes a bundle with a minimal config.json and the log fifo,
// which the test holds open for reading as containerd does.
func startBundle(t *testing.T) string {
	t.Helper()
	bundle := t.TempDir()
	spec, _ := json.Marshal(map[string]any{
		"ociVersion": "1.0.2",
		"process":    map[string]any{"args": []string{"/bin/true"}, "cwd": "/", "user": map[string]int{"uid": 0, "gid": 0}},
		"root":       map[string]any{"path": rootfsDir},
		"linux":      map[string]any{"namespaces": []map[string]string{{"type": "pid"}, {"type": "mount"}}},
	})
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), spec, 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(bundle, "log")
	if err := syscall.Mkfifo(logPath, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(logPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 4096)
		for {
			n, err := f.Read(b)
			mu.Lock()
			buf.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		f.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		if buf.Len() > 0 {
			t.Logf("shim log fifo:\n%s", buf.String())
		}
	})
	return bundle
}

// runStart runs the shim's start command in bundle as containerd does and
// returns its stdout, failing the test on a non-zero exit or any stderr.
func runStart(t *testing.T, bundle, ns, id, publish string, stdin []byte) []byte {
	t.Helper()
	return runStartOf(t, shimBin, bundle, ns, id, publish, stdin)
}

// runStartOf is runStart of the shim binary bin.
func runStartOf(t *testing.T, bin, bundle, ns, id, publish string, stdin []byte) []byte {
	t.Helper()
	addr := startAddress(id)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-namespace", ns, "-id", id, "-address", addr, "-publish-binary", publish, "start")
	cmd.Dir = bundle
	cmd.Env = append(testkit.FilterEnv(os.Environ(), "TTRPC_ADDRESS", "GRPC_ADDRESS", "NAMESPACE", "MAX_SHIM_VERSION", "GOMAXPROCS"),
		"TTRPC_ADDRESS="+addr+".ttrpc", "GRPC_ADDRESS="+addr, "NAMESPACE="+ns, "MAX_SHIM_VERSION=2", "GOMAXPROCS=2")
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// If the detached server kept start's stdout or stderr, Wait would not
	// return: containerd would hang the same way.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	t.Cleanup(func() { killStartServers(t, id) })
	if errors.Is(err, exec.ErrWaitDelay) {
		t.Fatalf("start exited but its stdout/stderr stayed open: the server inherited them (stdout %q)", stdout.String())
	}
	if err != nil {
		t.Fatalf("start: %v\nstdout: %q\nstderr: %q", err, stdout.String(), stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("start wrote to stderr (containerd reads stdout and stderr combined): %q", stderr.String())
	}
	t.Logf("start -publish-binary %s (stdin %d bytes) -> %q", publish, len(stdin), stdout.String())
	return stdout.Bytes()
}

// startServer waits for the one process that listens on path and checks that it is the shim.
func startServer(t *testing.T, path, id string) int {
	t.Helper()
	var pids []int
	waitFor(t, 10*time.Second, "a process listening on "+path, func() (bool, string) {
		pids = listeners(path)
		return len(pids) == 1, fmt.Sprintf("listeners %v", pids)
	})
	pid := pids[0]
	t.Cleanup(func() {
		killStartServers(t, id)
		for deadline := time.Now().Add(10 * time.Second); alive(pid) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		removeStaleSocket(path)
	})
	if name := procName(pids[0]); name != shimBinaryName {
		t.Fatalf("the process %d listening on %s is %q, want %s", pids[0], path, name, shimBinaryName)
	}
	if servers := startServers(id); len(servers) != 1 || servers[0] != pids[0] {
		t.Logf("note: shim processes of this case: %v, the listener is %d", servers, pids[0])
	}
	return pids[0]
}

// startServers lists the shim processes started for id: they have the
// case's TTRPC_ADDRESS in their environment.
func startServers(id string) []int {
	var pids []int
	for _, p := range testkit.AllProcesses() {
		if testkit.IsShim(p) && testkit.Getenv(testkit.Environ(p.Pid), "TTRPC_ADDRESS") == startAddress(id)+".ttrpc" {
			pids = append(pids, p.Pid)
		}
	}
	return pids
}

func killStartServers(t *testing.T, id string) {
	for _, pid := range startServers(id) {
		t.Logf("cleanup: killing shim %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// sendsLegacyStdin tells whether containerd v passes the runtime options Any
// (or nothing) to start, as 1.x and 2.0 to 2.2 do; 2.3+ sends BootstrapParams.
func sendsLegacyStdin(v *cdVersion) bool {
	if v.major < 2 {
		return true
	}
	var major, minor int
	if _, err := fmt.Sscanf(v.name, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major == 2 && minor <= 2
}
