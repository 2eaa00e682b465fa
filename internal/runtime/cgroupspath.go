package runtime

import (
	"os"
	"strings"
)

// IsSystemdCgroupsPath reports whether a spec's linux.cgroupsPath is in the
// form of the systemd cgroup driver, "slice:prefix:name" (runc's syntax):
// three parts, none with a '/', the slice empty or a unit name ending in
// ".slice", prefix and name not empty. Docker under systemd writes
// "system.slice:docker:<id>" and containerd's CRI plugin writes
// "kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>", and neither
// necessarily tells the shim SystemdCgroup; runc given such a path without
// --systemd-cgroup would make a cgroupfs directory of that name, outside the
// pod's cgroup. A cgroupfs path always has a '/' or no ':'.
func IsSystemdCgroupsPath(p string) bool {
	if strings.ContainsRune(p, '/') {
		return false
	}
	parts := strings.Split(p, ":")
	if len(parts) != 3 {
		return false
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	return (slice == "" || (strings.HasSuffix(slice, ".slice") && len(slice) > len(".slice"))) &&
		prefix != "" && name != ""
}

// SystemdRunning reports whether systemd runs the host, as sd_booted(3)
// tells it: /run/systemd/system exists. runc's systemd cgroup driver
// fails without it ("systemd not running on this host").
func SystemdRunning() bool {
	_, err := os.Stat("/run/systemd/system")
	return err == nil
}
