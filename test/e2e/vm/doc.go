// Package vm holds the cgroup v2 + systemd end-to-end tests of Tether. They
// run only inside the test VM (scripts/vm/run.sh: Debian bookworm, systemd as
// PID 1, the unified cgroup hierarchy), against real containerd 1.6 (Debian's)
// and 2.4.2 with runc, each with the cgroupfs and the systemd cgroup driver,
// and pods through containerd's CRI plugin (crictl) under the systemd driver.
//
// The test files carry the build tag tethervm, so that `go test ./...` of the
// e2e module on a host (cgroup v1, no systemd) compiles none of them; build
// them with `go test -c -race -tags tethervm ./vm` (make test-vm does). Run
// outside such a VM, the binary fails at once. See README.md.
package vm
