// Package e2e holds the end-to-end tests of the Tether shim. They build the
// shim, start private containerd daemons of several versions and drive them
// with their own ctr, and they talk to the shim directly over ttrpc. All of
// it lives in _test.go files; see README.md in this directory.
package e2e
