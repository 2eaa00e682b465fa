package bootstrap

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/internal/testutil"
	"github.com/tether-shim/tether/internal/trim"
)

// dialChildEnv makes the test binary, run as a child, dial the unix socket
// it names and wait for the server to hang up (see TestMain).
const dialChildEnv = "TETHER_TEST_DIAL"

// dialChild connects to the socket in dialChildEnv and reads until EOF.
func dialChild() int {
	c, err := net.Dial("unix", os.Getenv(dialChildEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			return 0
		}
	}
}

// TestRegressionTTRPCWarningsLost: the warning about a peer of another uid,
// refused by ttrpc's handshake, went to slog.Default, which goes nowhere in
// the server. The server's listener now refuses such a peer itself, and
// says so through the shim's logger, and so in containerd's log. Needs
// root, to run the peer as another uid.
func TestRegressionTTRPCWarningsLost(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs a peer as uid 65534 and needs root")
	}
	rec, logger := testutil.NewLog(t)
	dir := t.TempDir()
	// t.TempDir is <private parent>/<n>: the peer must get through both.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sock, 0o777); err != nil {
		t.Fatal(err)
	}
	server, err := newTTRPCServer(logger, trim.New(), false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	gl := newGuardedListener(ln.(*net.UnixListener), logger, func() {})
	go func() { served <- serveTTRPC(ctx, server, gl, logger) }()
	defer func() {
		server.Close()
		<-served
	}()

	// The test binary's own directory is private to root: the peer runs
	// a copy.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	peerBin := filepath.Join(dir, "peer")
	if err := os.WriteFile(peerBin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	peer := exec.Command(peerBin, "-test.run=^$")
	peer.Env = append(os.Environ(), dialChildEnv+"="+sock)
	peer.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := peer.CombinedOutput(); err != nil {
		t.Fatalf("peer as uid 65534: %v: %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r, ok := rec.Find(slog.LevelWarn, "refusing a connection"); ok {
			t.Logf("logged: %s %q %v", r.Level, r.Msg, r.Attrs)
			// And counted, for `tether inspect`.
			if got := gl.conns.snapshot(); got.Refused != 1 || got.Accepted != 0 {
				t.Errorf("connections %+v, want 1 refused and none accepted", got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the refused peer was not logged through the shim's logger; records: %v", rec.Records())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
