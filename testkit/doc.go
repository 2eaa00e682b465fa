// Package testkit is the harness code shared by Tether's end-to-end tests
// (test/e2e) and its benchmark (bench): a busybox root filesystem and OCI
// image builder, a private containerd daemon (config, start, stop, log), and
// helpers that read processes, sockets, mounts and cgroups from /proc and
// /sys.
//
// It depends on the standard library only, and it is Linux-only.
package testkit
