package container

import (
	"errors"
	"os"
	"path/filepath"
)

// deletedMarker is the file, in a container's bundle, that says the server
// deleted the container: the runtime forgot it and its rootfs is unmounted.
const deletedMarker = "tether-deleted"

// markDeleted records in bundle that the container is gone. containerd runs
// `delete` after every server it disconnects from, dead or not; the marker
// lets that cleanup skip a runtime call that would find nothing.
func markDeleted(bundle string) error {
	return os.WriteFile(filepath.Join(bundle, deletedMarker), nil, 0o600)
}

// clearDeleted removes a marker left from an earlier container of the same
// bundle path, so that it never speaks for a new one.
func clearDeleted(bundle string) error {
	err := os.Remove(filepath.Join(bundle, deletedMarker))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// WasDeleted reports whether the server deleted the container of bundle:
// the runtime no longer knows it and its rootfs is unmounted. False means
// "unknown", never "alive".
func WasDeleted(bundle string) bool {
	st, err := os.Lstat(filepath.Join(bundle, deletedMarker))
	return err == nil && st.Mode().IsRegular()
}
