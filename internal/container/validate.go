package container

import (
	"fmt"
	"path/filepath"
	"regexp"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/paths"
)

// maxIDLength is containerd's limit for identifiers.
const maxIDLength = 76

// idPattern is containerd's identifier grammar: alphanumeric runs joined by
// single '.', '_' or '-'. It admits no '/', no ".." and no leading dot.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// ValidateID checks a container or exec id against containerd's identifier
// grammar, so that an id is always safe as a path component.
func ValidateID(kind, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s id must not be empty: %w", kind, errdefs.ErrInvalidArgument)
	case len(id) > maxIDLength:
		return fmt.Errorf("%s id %.20q... is longer than %d characters: %w", kind, id, maxIDLength, errdefs.ErrInvalidArgument)
	case !idPattern.MatchString(id):
		return fmt.Errorf("%s id %q must match %s: %w", kind, id, idPattern, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ValidateBundle checks the bundle path of container id: absolute, clean (no
// ".."), and named after the container, as containerd lays bundles out
// (<state>/io.containerd.runtime.v2.task/<ns>/<id>). When parent is not empty,
// the bundle must sit directly in it: a group shim serves only bundles beside
// its own.
func ValidateBundle(id, bundle, parent string) error {
	switch {
	case bundle == "":
		return fmt.Errorf("bundle path must not be empty: %w", errdefs.ErrInvalidArgument)
	case !paths.CleanAbs(bundle):
		return paths.Check("bundle path", bundle)
	case filepath.Base(bundle) != id:
		return fmt.Errorf("bundle path %q is not named after container %q: %w", bundle, id, errdefs.ErrInvalidArgument)
	case parent != "" && filepath.Dir(bundle) != parent:
		return fmt.Errorf("bundle path %q is outside %q: %w", bundle, parent, errdefs.ErrInvalidArgument)
	}
	return nil
}
