package bootstrap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/paths"
)

// DefaultSocketDir is where shim sockets live unless containerd 2.3+ names
// another directory in BootstrapParams.socket_dir.
const DefaultSocketDir = "/run/containerd/s"

// maxSocketPath is the longest unix socket path the kernel accepts
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// Annotations naming a container's group, in order of precedence.
const (
	GroupLabel      = "io.containerd.runc.v2.group"
	SandboxIDLabel  = "io.kubernetes.cri.sandbox-id"
	lockWaitTimeout = 10 * time.Second
	dialTimeout     = time.Second
)

// GroupID returns the group of the container whose bundle is b: the
// io.containerd.runc.v2.group annotation, else io.kubernetes.cri.sandbox-id,
// else id.
func GroupID(b bundle.Bundle, id string) (string, error) {
	annotations, err := b.Annotations()
	if err != nil {
		return "", fmt.Errorf("bundle config: %w", err)
	}
	for _, k := range []string{GroupLabel, SandboxIDLabel} {
		if g := annotations[k]; g != "" {
			return g, nil
		}
	}
	return id, nil
}

// SocketPath is the socket of a group's server:
// <dir>/hex(sha256(<containerd address>/<namespace>/<group>)).
func SocketPath(dir, containerdAddress, ns, group string) (string, error) {
	if err := paths.Check("socket dir", dir); err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(filepath.Join(containerdAddress, ns, group)))
	p := filepath.Join(dir, hex.EncodeToString(sum[:]))
	if len(p) > maxSocketPath {
		return "", fmt.Errorf("socket path %s is longer than %d bytes", p, maxSocketPath)
	}
	return p, nil
}

// SocketAddress is the address containerd dials for a socket path.
func SocketAddress(path string) string { return "unix://" + path }

// isSocketName reports whether name has the form SocketPath gives a socket:
// 64 lowercase hex digits.
func isSocketName(name string) bool {
	if len(name) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil && strings.ToLower(name) == name
}

// socketPathOf strips the unix:// scheme.
func socketPathOf(address string) string { return strings.TrimPrefix(address, "unix://") }

// lockDir creates dir (0700) if needed and takes an exclusive flock on it,
// waiting at most lockWaitTimeout. The returned func releases it.
func lockDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("chmod socket dir: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open socket dir: %w", err)
	}
	deadline := time.Now().Add(lockWaitTimeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock socket dir: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serving reports whether a server accepts connections on the socket.
func serving(path string) bool {
	conn, err := net.DialTimeout("unix", path, dialTimeout)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// listen creates the socket with mode 0600, removing a stale one first.
// The caller holds the directory lock and has checked that no server
// answers on it.
func listen(path string) (*net.UnixListener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return ln, nil
}
