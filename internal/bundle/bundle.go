// Package bundle owns the layout of a container's bundle directory: the OCI
// config containerd wrote (config.json), the files the runtime writes there
// (init.pid and the exec pid files, its JSON log log.json), and the files
// the shim keeps there (tether-runtime.json, the address file, the log fifo,
// the crash log, the debug profiles, the deleted marker, the rootfs mount
// point).
//
// Invariant: no other package joins a file name onto a bundle path; every
// package asks a Bundle for the path or the content it needs. A Bundle holds
// only its directory, so it is a value that any goroutine may copy and use.
// It does not validate the directory: callers check the path containerd sent
// (container.ValidateBundle) before they make a Bundle of it.
package bundle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// The files of a bundle.
const (
	configFile    = "config.json"
	initPidFile   = "init.pid"
	runtimeLog    = "log.json"
	runtimeConfig = "tether-runtime.json"
	addressFile   = "address"
	logFifo       = "log"
	crashLog      = "tether-crash.log"
	deletedMarker = "tether-deleted"
	rootfsDir     = "rootfs"
	cpuProfile    = "tether-cpu.pprof"
	heapProfile   = "tether-heap.pprof"
	goroutines    = "tether-goroutines.txt"
	metrics       = "tether-metrics.txt"
)

// Bundle is a container's bundle directory.
type Bundle struct {
	dir string
}

// New returns the Bundle in dir.
func New(dir string) Bundle { return Bundle{dir: dir} }

// Dir returns the bundle directory.
func (b Bundle) Dir() string { return b.dir }

func (b Bundle) path(name string) string { return filepath.Join(b.dir, name) }

// Config returns the path of the OCI config, config.json.
func (b Bundle) Config() string { return b.path(configFile) }

// Rootfs returns the directory the container's rootfs is mounted on.
func (b Bundle) Rootfs() string { return b.path(rootfsDir) }

// InitPid returns the pid file the runtime writes the init's pid to.
func (b Bundle) InitPid() string { return b.path(initPidFile) }

// ExecPid returns the pid file of exec process execID, which must be a
// valid id (container.ValidateID), so that it is one path component.
func (b Bundle) ExecPid(execID string) string { return b.path(execID + ".pid") }

// RuntimeLog returns the runtime's JSON log (its --log).
func (b Bundle) RuntimeLog() string { return b.path(runtimeLog) }

// RuntimeConfig returns the file in which Create records which runtime
// binary, root and cgroup driver the container uses (runtime.Config.Save),
// so that `delete` after a dead server runs the same ones.
func (b Bundle) RuntimeConfig() string { return b.path(runtimeConfig) }

// RemoveRuntimeConfig removes the RuntimeConfig file; a missing one is not
// an error.
func (b Bundle) RemoveRuntimeConfig() error {
	if err := os.Remove(b.RuntimeConfig()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove runtime config: %w", err)
	}
	return nil
}

// Log returns the log fifo containerd reads the server's log from.
func (b Bundle) Log() string { return b.path(logFifo) }

// CrashLog returns the file that receives the Go runtime's output of a fatal
// error or an unrecovered panic of the server.
func (b Bundle) CrashLog() string { return b.path(crashLog) }

// CPUProfile, HeapProfile, Goroutines and Metrics are the files a server
// started with -debug writes its profiles to (see docs/performance.md).
func (b Bundle) CPUProfile() string { return b.path(cpuProfile) }

// HeapProfile: see CPUProfile.
func (b Bundle) HeapProfile() string { return b.path(heapProfile) }

// Goroutines: see CPUProfile.
func (b Bundle) Goroutines() string { return b.path(goroutines) }

// Metrics: see CPUProfile.
func (b Bundle) Metrics() string { return b.path(metrics) }

// WriteAddress writes the server's plain address to the address file, where
// containerd 1.x reads it to reconnect after a restart. The file is
// replaced atomically.
func (b Bundle) WriteAddress(address string) error {
	tmp := b.path("." + addressFile + ".tmp")
	if err := os.WriteFile(tmp, []byte(address), 0o600); err != nil {
		return fmt.Errorf("write address: %w", err)
	}
	if err := os.Rename(tmp, b.path(addressFile)); err != nil {
		return fmt.Errorf("write address: %w", err)
	}
	return nil
}

// ReadAddress returns the content of the address file.
func (b Bundle) ReadAddress() (string, error) {
	data, err := os.ReadFile(b.path(addressFile))
	if err != nil {
		return "", fmt.Errorf("read address: %w", err)
	}
	return string(data), nil
}
