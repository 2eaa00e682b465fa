package bootstrap

import "context"

// What `tether doctor` shares with the shim, so that it removes a socket
// and asks a server to leave exactly as the shim's own `start` and
// `delete` do.

// LockSocketDir takes the lock `start` takes on a socket directory while it
// looks for a group's server and starts one (waiting a bounded time); the
// returned func releases it. A socket removed under it cannot be one a
// server is being started on.
func LockSocketDir(dir string) (func(), error) { return lockDir(dir) }

// ShutdownIfIdle asks the server on the socket at path to leave, with the
// task API's Shutdown for namespace ns and task id: the server leaves only
// if it serves no container and creates none.
func ShutdownIfIdle(ctx context.Context, path, ns, id string) error {
	return shutdownIfIdle(ctx, path, ns, id)
}
