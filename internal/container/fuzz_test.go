package container

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzValidateBundle: an id and bundle path that pass validation are safe
// to join into paths: no separator or ".." in the id, and a bundle that is
// absolute, clean, named after the id and inside parent.
func FuzzValidateBundle(f *testing.F) {
	f.Add("c1", "/run/containerd/io.containerd.runtime.v2.task/default/c1", "/run/containerd/io.containerd.runtime.v2.task/default")
	f.Add("..", "/run/..", "")
	f.Add("a/b", "/x/a/b", "/x/a")
	f.Add("c1", "/x/../c1", "/")
	f.Fuzz(func(t *testing.T, id, bundle, parent string) {
		if ValidateID("container", id) != nil || ValidateBundle(id, bundle, parent) != nil {
			return
		}
		if strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
			t.Fatalf("id %q accepted", id)
		}
		if !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle || slices.Contains(strings.Split(bundle, "/"), "..") {
			t.Fatalf("bundle %q accepted", bundle)
		}
		if filepath.Base(bundle) != id || (parent != "" && filepath.Dir(bundle) != parent) {
			t.Fatalf("bundle %q accepted for id %q in %q", bundle, id, parent)
		}
	})
}
