package runtime

import (
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// TestLoadConfigFileRefusesNonRegularFiles: a config path naming a fifo
// used to block the shim in open(2) forever, and /dev/zero was read until
// memory ran out; both are now refused at once as InvalidArgument.
func TestLoadConfigFileRefusesNonRegularFiles(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "config.toml")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, "/dev/zero", t.TempDir()} {
		if _, err := LoadConfigFile(path); !errdefs.IsInvalidArgument(err) {
			t.Errorf("LoadConfigFile(%s) = %v, want InvalidArgument", path, err)
		}
	}
}
