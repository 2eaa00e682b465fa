package container

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{"empty", "", false},
		{"dotdot", "..", false},
		{"dot", ".", false},
		{"parent path", "../x", false},
		{"slash", "a/b", false},
		{"leading dot", ".hidden", false},
		{"double dot inside", "a..b", false},
		{"trailing separator", "abc-", false},
		{"leading separator", "-abc", false},
		{"77 characters", strings.Repeat("a", 77), false},
		{"unicode", "caf\u00e9", false},
		{"NUL", "a\x00b", false},
		{"space", "a b", false},
		{"newline", "abc\n", false},
		{"simple", "abc", true},
		{"separators", "a-b_c.d", true},
		{"digits", "0123", true},
		{"mixed case", "ABCdef", true},
		{"76 characters", strings.Repeat("a", 76), true},
		{"containerd style", "k8s_pod-1.2_default", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateID("container", tt.id)
			if tt.ok {
				if err != nil {
					t.Fatalf("ValidateID(%q) = %v, want nil", tt.id, err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ValidateID(%q) = %v, want InvalidArgument", tt.id, err)
			}
			if !strings.Contains(err.Error(), "container id") {
				t.Errorf("error %q does not name the kind of id", err)
			}
		})
	}
}

func TestValidateBundle(t *testing.T) {
	const parent = "/run/containerd/io.containerd.runtime.v2.task/default"
	tests := []struct {
		name   string
		id     string
		bundle string
		parent string
		ok     bool
	}{
		{"empty", "c1", "", "", false},
		{"relative", "c1", "default/c1", "", false},
		{"relative dot", "c1", "./c1", "", false},
		{"unclean dotdot", "b", "/a/../b", "", false},
		{"unclean double slash", "c1", "/run//c1", "", false},
		{"trailing slash", "c1", "/run/c1/", "", false},
		{"base is not the id", "c1", parent + "/c2", "", false},
		{"base is not the id under parent", "c1", parent + "/c2", parent, false},
		{"outside parent", "c1", "/run/other/c1", parent, false},
		{"nested under parent", "c1", parent + "/sub/c1", parent, false},
		{"escape with dotdot", "c1", parent + "/../c1", parent, false},
		{"good without parent", "c1", parent + "/c1", "", true},
		{"good with parent", "c1", parent + "/c1", parent, true},
		{"good elsewhere without parent", "my-ctr.1", "/var/lib/bundles/my-ctr.1", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateBundle(tt.id, tt.bundle, tt.parent)
			if tt.ok {
				if err != nil {
					t.Fatalf("ValidateBundle(%q, %q, %q) = %v, want nil", tt.id, tt.bundle, tt.parent, err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ValidateBundle(%q, %q, %q) = %v, want InvalidArgument", tt.id, tt.bundle, tt.parent, err)
			}
		})
	}
}
