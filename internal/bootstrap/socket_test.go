package bootstrap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/testutil"
)

// boundedWait bounds the waits of these tests; reaching it fails the test.
// It only turns a hang into a failure.
const boundedWait = 30 * time.Second

func writeConfig(t *testing.T, bundleDir, content string) {
	t.Helper()
	if err := os.WriteFile(bundle.New(bundleDir).Config(), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestGroupID(t *testing.T) {
	tests := []struct {
		name   string
		config string
		want   string
	}{
		{"group beats sandbox", `{"annotations":{"io.containerd.runc.v2.group":"g1","io.kubernetes.cri.sandbox-id":"sb1"}}`, "g1"},
		{"group only", `{"annotations":{"io.containerd.runc.v2.group":"g1"}}`, "g1"},
		{"sandbox beats id", `{"annotations":{"io.kubernetes.cri.sandbox-id":"sb1","other":"x"}}`, "sb1"},
		{"empty group falls through", `{"annotations":{"io.containerd.runc.v2.group":"","io.kubernetes.cri.sandbox-id":"sb1"}}`, "sb1"},
		{"other annotations", `{"annotations":{"io.kubernetes.cri.container-type":"container"}}`, "c1"},
		{"no annotations", `{"ociVersion":"1.1.0","process":{"args":["sh"]}}`, "c1"},
		{"null annotations", `{"annotations":null}`, "c1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bundleDir := t.TempDir()
			writeConfig(t, bundleDir, tt.config)
			got, err := GroupID(bundle.New(bundleDir), "c1")
			if err != nil || got != tt.want {
				t.Fatalf("GroupID = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestGroupIDErrors(t *testing.T) {
	t.Run("missing config.json", func(t *testing.T) {
		_, err := GroupID(bundle.New(t.TempDir()), "c1")
		if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("GroupID = %v, want ErrNotExist", err)
		}
	})
	for name, config := range map[string]string{
		"malformed":              `{"annotations":`,
		"annotations not object": `{"annotations":["g1"]}`,
		"annotation not string":  `{"annotations":{"io.containerd.runc.v2.group":7}}`,
	} {
		t.Run(name, func(t *testing.T) {
			bundleDir := t.TempDir()
			writeConfig(t, bundleDir, config)
			if g, err := GroupID(bundle.New(bundleDir), "c1"); err == nil {
				t.Fatalf("GroupID(%s) = %q, want an error", config, g)
			}
		})
	}
}

func TestSocketPath(t *testing.T) {
	const (
		dir  = "/run/containerd/s"
		addr = "/run/containerd/containerd.sock"
	)
	got, err := SocketPath(dir, addr, "default", "g1")
	if err != nil {
		t.Fatal(err)
	}
	// sha256("/run/containerd/containerd.sock/default/g1")
	const pinned = "/run/containerd/s/d654df5fe313cf9367de7519df2c0462fe0a304e98692432f956c2177ad4f4d4"
	if got != pinned {
		t.Fatalf("SocketPath = %q, want %q", got, pinned)
	}
	again, err := SocketPath(dir, addr, "default", "g1")
	if err != nil || again != got {
		t.Fatalf("SocketPath is not deterministic: %q then %q (%v)", got, again, err)
	}

	inputs := []struct{ addr, ns, group string }{
		{addr, "default", "g2"},
		{addr, "k8s.io", "g1"},
		{"/run/other/containerd.sock", "default", "g1"},
		{"unix:///run/containerd/containerd.sock", "default", "g1"},
	}
	seen := map[string]bool{got: true}
	for _, in := range inputs {
		p, err := SocketPath(dir, in.addr, in.ns, in.group)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(filepath.Join(in.addr, in.ns, in.group)))
		if want := filepath.Join(dir, hex.EncodeToString(sum[:])); p != want {
			t.Errorf("SocketPath(%q) = %q, want %q", in, p, want)
		}
		if filepath.Dir(p) != dir {
			t.Errorf("SocketPath(%q) = %q is not in %s", in, p, dir)
		}
		if seen[p] {
			t.Errorf("SocketPath(%q) = %q collides", in, p)
		}
		seen[p] = true
	}

	if SocketAddress(got) != "unix://"+got || socketPathOf(SocketAddress(got)) != got {
		t.Errorf("SocketAddress/socketPathOf do not round trip: %q", SocketAddress(got))
	}
}

func TestSocketPathLength(t *testing.T) {
	// The path is dir + "/" + 64 hex digits; 107 bytes is the limit.
	fits := "/" + strings.Repeat("d", 41)
	p, err := SocketPath(fits, "/a", "ns", "g")
	if err != nil || len(p) != 107 {
		t.Fatalf("SocketPath in a %d-byte dir = %q (%d bytes), %v; want 107 bytes", len(fits), p, len(p), err)
	}
	tooLong := fits + "d"
	if p, err := SocketPath(tooLong, "/a", "ns", "g"); err == nil {
		t.Fatalf("SocketPath in a %d-byte dir = %q (%d bytes), want an error", len(tooLong), p, len(p))
	}
	if p, err := SocketPath("/"+strings.Repeat("x", 200), "/a", "ns", "g"); err == nil {
		t.Fatalf("SocketPath in a long dir = %q, want an error", p)
	}
}

// shortDir returns a directory with a short path, for unix sockets.
// deadSocket leaves a socket file at path that nothing listens on, as a
// server that died leaves it.
func deadSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tsk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestLockDirMode(t *testing.T) {
	testutil.CheckLeaks(t)
	t.Run("created", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "s")
		old := syscall.Umask(0)
		unlock, err := lockDir(dir)
		syscall.Umask(old)
		if err != nil {
			t.Fatalf("lockDir: %v", err)
		}
		defer unlock()
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
			t.Fatalf("socket dir = %v, %v; want a 0700 directory", st.Mode(), err)
		}
	})
	t.Run("existing loose dir", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "s")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		unlock, err := lockDir(dir)
		if err != nil {
			t.Fatalf("lockDir: %v", err)
		}
		defer unlock()
		st, err := os.Stat(dir)
		if err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("socket dir mode = %v, %v; want 0700", st.Mode().Perm(), err)
		}
	})
	t.Run("not a directory", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if unlock, err := lockDir(file); err == nil {
			unlock()
			t.Fatal("lockDir on a file succeeded")
		}
	})
}

// tryFlock reports whether an exclusive flock on dir can be taken at once,
// through a descriptor of its own.
func tryFlock(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false
	}
	if err != nil {
		t.Fatalf("flock: %v", err)
	}
	return true
}

// openCount counts the descriptors of the process open on path.
func openCount(t *testing.T, path string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == path {
			n++
		}
	}
	return n
}

func TestLockDirExclusive(t *testing.T) {
	testutil.CheckLeaks(t)
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	unlock1, err := lockDir(dir)
	if err != nil {
		t.Fatalf("lockDir: %v", err)
	}
	if tryFlock(t, dir) {
		unlock1()
		t.Fatal("the directory is not locked while lockDir's lock is held")
	}

	var (
		mu     sync.Mutex
		events []string
	)
	record := func(e string) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}
	type result struct {
		unlock func()
		err    error
	}
	acquired := make(chan result, 1)
	go func() {
		unlock, err := lockDir(dir)
		if err == nil {
			record("second acquired")
		}
		acquired <- result{unlock, err}
	}()

	// Wait until the second lockDir has the directory open, i.e. is
	// trying to take the lock; it must not have it.
	deadline := time.Now().Add(boundedWait)
	for openCount(t, dir) < 2 {
		if time.Now().After(deadline) {
			unlock1()
			t.Fatal("the second lockDir never opened the directory")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case r := <-acquired:
		unlock1()
		if r.unlock != nil {
			r.unlock()
		}
		t.Fatalf("the second lockDir returned (%v) while the first lock was held", r.err)
	default:
	}

	record("first released")
	unlock1()

	var r result
	select {
	case r = <-acquired:
	case <-time.After(boundedWait):
		t.Fatal("the second lockDir did not take the lock after the first was released")
	}
	if r.err != nil {
		t.Fatalf("second lockDir: %v", r.err)
	}
	mu.Lock()
	got := strings.Join(events, ", ")
	mu.Unlock()
	if got != "first released, second acquired" {
		t.Fatalf("events: %s", got)
	}
	if tryFlock(t, dir) {
		t.Fatal("the second lock is not held")
	}
	r.unlock()
	if !tryFlock(t, dir) {
		t.Fatal("the lock is still held after both releases")
	}
}

// TestLockDirGivesUp checks that lockDir fails, without leaking its
// descriptor, when the lock is never released.
func TestLockDirGivesUp(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	done := make(chan error, 1)
	go func() {
		unlock2, err := lockDir(dir)
		if err == nil {
			unlock2()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("lockDir took a lock that is held")
		}
	case <-time.After(lockWaitTimeout + boundedWait):
		t.Fatal("lockDir did not give up")
	}
}

func TestListen(t *testing.T) {
	testutil.CheckLeaks(t)
	t.Run("fresh", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "sock")
		old := syscall.Umask(0)
		ln, err := listen(path)
		syscall.Umask(old)
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		defer ln.Close()
		st, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Type() != os.ModeSocket || st.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode = %v, want a 0600 socket", st.Mode())
		}
		if !serving(path) {
			t.Fatal("nothing serves on the new socket")
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "sock")
		deadSocket(t, path)
		if st, err := os.Lstat(path); err != nil || st.Mode().Type() != os.ModeSocket {
			t.Fatalf("precondition: stale socket file: %v", err)
		}
		if serving(path) {
			t.Fatal("precondition: the stale socket serves")
		}
		ln, err := listen(path)
		if err != nil {
			t.Fatalf("listen over a stale socket: %v", err)
		}
		defer ln.Close()
		st, err := os.Lstat(path)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("socket mode = %v, %v; want 0600", st.Mode(), err)
		}
		if !serving(path) {
			t.Fatal("nothing serves on the replaced socket")
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		if ln, err := listen(filepath.Join(shortDir(t), "missing", "sock")); err == nil {
			ln.Close()
			t.Fatal("listen in a missing directory succeeded")
		}
	})
}

func TestServing(t *testing.T) {
	testutil.CheckLeaks(t)
	dir := shortDir(t)
	live := filepath.Join(dir, "live")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: live, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dead := filepath.Join(dir, "dead")
	deadSocket(t, dead)
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want bool
	}{
		{"live listener", live, true},
		{"dead socket", dead, false},
		{"regular file", file, false},
		{"missing", filepath.Join(dir, "missing"), false},
	}
	for _, tt := range tests {
		if got := serving(tt.path); got != tt.want {
			t.Errorf("serving(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestSocketPathRefusesRelativeDir: a BootstrapParams socket_dir that is
// relative or unclean would put the socket under the bundle and hand
// containerd a relative address.
func TestSocketPathRefusesRelativeDir(t *testing.T) {
	for _, dir := range []string{"s", "./s", "/run/containerd/../s", "/run/s/", ""} {
		if p, err := SocketPath(dir, "/run/containerd/containerd.sock", "default", "g1"); !errdefs.IsInvalidArgument(err) {
			t.Errorf("SocketPath(%q) = %q, %v; want InvalidArgument", dir, p, err)
		}
	}
}
