package runtime

import "testing"

func TestIsSystemdCgroupsPath(t *testing.T) {
	tests := []struct {
		path string
		want bool
	}{
		{"system.slice:docker:0123abcd", true},                              // Docker under systemd
		{"kubepods-besteffort-pod1f2e.slice:cri-containerd:0123abcd", true}, // CRI, SystemdCgroup
		{"kubepods-burstable-pod1f2e.slice:cri-containerd:c1", true},        //
		{":tether:c1", true}, // runc: empty slice means system.slice
		{"", false},          // no cgroup
		{"/kubepods/besteffort/pod1f2e/0123abcd", false}, // CRI, cgroupfs
		{"/default/c1", false},                           // ctr
		{"c1", false},                                    // relative cgroupfs
		{"/system.slice:docker:0123abcd", false},         // a cgroupfs path with colons
		{"system.slice:docker", false},                   // two parts
		{"system.slice:docker:id:x", false},              // four parts
		{"system:docker:id", false},                      // not a slice
		{".slice:docker:id", false},                      // no slice name
		{"system.slice::id", false},                      // no prefix
		{"system.slice:docker:", false},                  // no name
		{"a.slice/b.slice:docker:id", false},             // a path in the slice
		{"kubepods.slice:cri-containerd:../x", false},    // a path in the name
	}
	for _, tt := range tests {
		if got := IsSystemdCgroupsPath(tt.path); got != tt.want {
			t.Errorf("IsSystemdCgroupsPath(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}
}
