package paths

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"/", true},
		{"/run/containerd/c1", true},
		{"/a.b/..c/c..", true}, // dots inside a name are names
		{"/a b/c", true},
		{"/a/c\x00d", false}, // no path of the kernel's holds a NUL
		{"/\x00", false},
		{"", false},
		{"relative", false},
		{"./x", false},
		{"../x", false},
		{"/x/", false},
		{"//x", false},
		{"/x//y", false},
		{"/x/./y", false},
		{"/x/../y", false},
		{"/..", false},
		{"/.", false},
		{"/x/..", false},
		{"/x/.", false},
	}
	for _, tt := range tests {
		if got := CleanAbs(tt.path); got != tt.ok {
			t.Errorf("CleanAbs(%q) = %v, want %v", tt.path, got, tt.ok)
		}
		err := Check("stdin path", tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("Check(%q) = %v, want ok %v", tt.path, err, tt.ok)
			continue
		}
		if err == nil {
			continue
		}
		if !errdefs.IsInvalidArgument(err) {
			t.Errorf("Check(%q) = %v, want class InvalidArgument", tt.path, err)
		}
		if !strings.HasPrefix(err.Error(), "stdin path ") {
			t.Errorf("Check(%q) = %q, want it to name what the path is", tt.path, err)
		}
	}
}
