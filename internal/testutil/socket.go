package testutil

import (
	"net"
	"os"
	"testing"
)

// DeadSocket leaves a unix socket file at path that nobody listens on, as
// a server killed without removing its socket does: a connect is refused.
func DeadSocket(t testing.TB, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// ForeignSocket listens on a unix socket at path whose file belongs to
// uid 65534 (needs root); the listener is closed when the test ends.
func ForeignSocket(t testing.TB, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Lchown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}
