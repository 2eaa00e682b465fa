package paths

import (
	"strings"
	"testing"
)

// FuzzCheck compares Check with a definition written out element by
// element: a path is accepted exactly when it starts with "/" and is "/" or
// "/" followed by names joined by single "/", none of them empty, "." or
// "..", and none holding a NUL byte.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"/", "/a/b", "", "a", "/a/", "//", "/a//b", "/./a", "/a/..", "/...", "/a/.b", "/a\x00b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := Check("path", p)
		if want := byElements(p); (err == nil) != want {
			t.Fatalf("Check(%q) = %v, want ok %v", p, err, want)
		}
		if (err == nil) != CleanAbs(p) {
			t.Fatalf("Check(%q) = %v but CleanAbs = %v", p, err, CleanAbs(p))
		}
	})
}

// byElements is the reference definition of an absolute, clean path.
func byElements(p string) bool {
	if p == "/" {
		return true
	}
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for _, e := range strings.Split(p[1:], "/") {
		if e == "" || e == "." || e == ".." || strings.IndexByte(e, 0) >= 0 {
			return false
		}
	}
	return true
}
