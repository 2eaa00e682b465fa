// Package paths is the one check of the paths that clients, containerd and
// the operator hand the shim: a path is accepted only if it is absolute and
// clean (filepath.Clean leaves it as it is), so that it has no "." or ".."
// element, no repeated or trailing separator, and names the same file
// wherever it is joined or compared; and only if it holds no NUL byte,
// which no path of the kernel's can hold (a system call given one fails
// with EINVAL, an error of no class). Every package that takes such a path
// asks CleanAbs or Check; none writes the test again.
//
// The package is a leaf: it imports nothing of the shim, so every package
// can use it.
package paths

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// CleanAbs reports whether p is absolute and clean and holds no NUL byte.
// The empty path is neither.
func CleanAbs(p string) bool {
	return filepath.IsAbs(p) && filepath.Clean(p) == p && !strings.ContainsRune(p, 0)
}

// Check returns nil if p is absolute and clean, else an error of class
// errdefs.ErrInvalidArgument that names p as what (e.g. "bundle path").
func Check(what, p string) error {
	if CleanAbs(p) {
		return nil
	}
	return fmt.Errorf("%s %q must be absolute and clean: %w", what, p, errdefs.ErrInvalidArgument)
}
