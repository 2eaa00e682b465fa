package bundle

import (
	"errors"
	"os"
)

// MarkDeleted records in the bundle that the server deleted the container:
// the runtime forgot it and its rootfs is unmounted. containerd runs
// `delete` after every server it disconnects from, dead or not; the marker
// lets that cleanup skip a runtime call that would find nothing.
func (b Bundle) MarkDeleted() error {
	return os.WriteFile(b.path(deletedMarker), nil, 0o600)
}

// ClearDeleted removes a marker left from an earlier container of the same
// bundle path, so that it never speaks for a new one.
func (b Bundle) ClearDeleted() error {
	err := os.Remove(b.path(deletedMarker))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// WasDeleted reports whether the server deleted the container of the
// bundle: the runtime no longer knows it and its rootfs is unmounted. False
// means "unknown", never "alive".
func (b Bundle) WasDeleted() bool {
	st, err := os.Lstat(b.path(deletedMarker))
	return err == nil && st.Mode().IsRegular()
}
