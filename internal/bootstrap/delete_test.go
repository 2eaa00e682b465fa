package bootstrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/runtime"
	"github.com/tether-shim/tether/internal/taskservice"
	"github.com/tether-shim/tether/internal/testutil"
)

const runcBinary = "/usr/sbin/runc"

var deleteSeq atomic.Int64

// deleteBundle returns a bundle for container id whose runtime config names
// runc with a fresh state directory, in which the runtime knows no
// container, and the flags of a `delete` for it.
func deleteBundle(t *testing.T) (string, Flags) {
	t.Helper()
	if _, err := os.Stat(runcBinary); err != nil {
		t.Fatalf("%s is required: %v", runcBinary, err)
	}
	id := fmt.Sprintf("tether-delete-%d-%d", os.Getpid(), deleteSeq.Add(1))
	bundleDir := filepath.Join(t.TempDir(), id)
	if err := os.Mkdir(bundleDir, 0o700); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "runc")
	if err := (runtime.Config{Binary: runcBinary, Root: root}).Save(bundle.New(bundleDir).RuntimeConfig()); err != nil {
		t.Fatal(err)
	}
	return bundleDir, Flags{Namespace: "tether-test", ID: id, Bundle: bundleDir, Action: ActionDelete}
}

// runDelete runs Delete and decodes its DeleteResponse.
func runDelete(t *testing.T, f Flags) (*taskapi.DeleteResponse, string) {
	t.Helper()
	var stdout, warn bytes.Buffer
	if err := Delete(context.Background(), f, &stdout, &warn); err != nil {
		t.Fatalf("Delete: %v (warnings: %s)", err, warn.String())
	}
	var resp taskapi.DeleteResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		t.Fatalf("stdout %q is not a DeleteResponse: %v", stdout.Bytes(), err)
	}
	return &resp, warn.String()
}

func TestDeleteResponse(t *testing.T) {
	testutil.CheckLeaks(t)
	tests := []struct {
		name    string
		pidFile string // "-": none
		wantPid uint32
	}{
		{"pid from init.pid", "4242\n", 4242},
		{"no init.pid", "-", 0},
		{"garbage init.pid", "nope", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bundleDir, f := deleteBundle(t)
			if tt.pidFile != "-" {
				if err := os.WriteFile(bundle.New(bundleDir).InitPid(), []byte(tt.pidFile), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			resp, warn := runDelete(t, f)
			if resp.GetExitStatus() != 137 {
				t.Errorf("exit status = %d, want 137", resp.GetExitStatus())
			}
			if resp.GetPid() != tt.wantPid {
				t.Errorf("pid = %d, want %d", resp.GetPid(), tt.wantPid)
			}
			if resp.GetExitedAt() == nil || resp.GetExitedAt().AsTime().IsZero() {
				t.Errorf("exited_at = %v, want a time", resp.GetExitedAt())
			}
			if warn != "" {
				t.Errorf("warnings for a container the runtime does not know: %q", warn)
			}
		})
	}
}

func TestDeleteUnmountsRootfs(t *testing.T) {
	bundleDir, f := deleteBundle(t)
	rootfs := bundle.New(bundleDir).Rootfs()
	if err := os.Mkdir(rootfs, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", rootfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(rootfs, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(rootfs, "on-tmpfs"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	resp, warn := runDelete(t, f)
	if resp.GetExitStatus() != 137 || warn != "" {
		t.Fatalf("Delete = %v, warnings %q", resp, warn)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "on-tmpfs")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the rootfs is still mounted after delete: %v", err)
	}
}

func TestDeleteSockets(t *testing.T) {
	testutil.CheckLeaks(t)
	t.Run("dead socket removed", func(t *testing.T) {
		bundleDir, f := deleteBundle(t)
		path := tetherSocketPath(t)
		deadSocket(t, path)
		if err := bundle.New(bundleDir).WriteAddress(SocketAddress(path)); err != nil {
			t.Fatal(err)
		}
		runDelete(t, f)
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("dead socket still there: %v", err)
		}
	})
	t.Run("dead socket named without scheme", func(t *testing.T) {
		bundleDir, f := deleteBundle(t)
		path := tetherSocketPath(t)
		deadSocket(t, path)
		if err := bundle.New(bundleDir).WriteAddress(path + "\n"); err != nil {
			t.Fatal(err)
		}
		runDelete(t, f)
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("dead socket still there: %v", err)
		}
	})
	t.Run("live socket kept", func(t *testing.T) {
		bundleDir, f := deleteBundle(t)
		path := tetherSocketPath(t)
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if err := bundle.New(bundleDir).WriteAddress(SocketAddress(path)); err != nil {
			t.Fatal(err)
		}
		runDelete(t, f)
		if st, err := os.Lstat(path); err != nil || st.Mode().Type() != os.ModeSocket {
			t.Fatalf("live socket removed: %v", err)
		}
		if !serving(path) {
			t.Fatal("the live server no longer answers")
		}
	})
	t.Run("dead socket of another name kept", func(t *testing.T) {
		bundleDir, f := deleteBundle(t)
		path := filepath.Join(shortDir(t), "other.sock")
		deadSocket(t, path)
		if err := bundle.New(bundleDir).WriteAddress(SocketAddress(path)); err != nil {
			t.Fatal(err)
		}
		runDelete(t, f)
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("a socket not named like a Tether socket was removed: %v", err)
		}
	})
	t.Run("regular file kept", func(t *testing.T) {
		bundleDir, f := deleteBundle(t)
		path := filepath.Join(shortDir(t), "file")
		if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := bundle.New(bundleDir).WriteAddress(SocketAddress(path)); err != nil {
			t.Fatal(err)
		}
		runDelete(t, f)
		if data, err := os.ReadFile(path); err != nil || string(data) != "not a socket" {
			t.Fatalf("regular file named in the address touched: %q, %v", data, err)
		}
	})
	t.Run("no address file", func(t *testing.T) {
		_, f := deleteBundle(t)
		resp, warn := runDelete(t, f)
		if resp.GetExitStatus() != 137 || warn != "" {
			t.Fatalf("Delete = %v, warnings %q", resp, warn)
		}
	})
}

func TestDeleteRefusesBadFlags(t *testing.T) {
	bundleDir, good := deleteBundle(t)
	tests := []struct {
		name  string
		f     Flags
		class error // nil: any error
	}{
		{"no namespace", Flags{ID: good.ID, Bundle: bundleDir}, nil},
		{"no id", Flags{Namespace: "ns", Bundle: bundleDir}, nil},
		{"id with path", Flags{Namespace: "ns", ID: "../x", Bundle: bundleDir}, errdefs.ErrInvalidArgument},
		{"relative bundle", Flags{Namespace: "ns", ID: good.ID, Bundle: "state/" + good.ID}, errdefs.ErrInvalidArgument},
		{"bundle with ..", Flags{Namespace: "ns", ID: good.ID, Bundle: bundleDir + "/../" + good.ID}, errdefs.ErrInvalidArgument},
		{"bundle with a trailing slash", Flags{Namespace: "ns", ID: good.ID, Bundle: bundleDir + "/"}, errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, warn bytes.Buffer
			err := Delete(context.Background(), tt.f, &stdout, &warn)
			if err == nil {
				t.Fatal("Delete succeeded")
			}
			if tt.class != nil && !errors.Is(err, tt.class) {
				t.Fatalf("Delete = %v, want %v", err, tt.class)
			}
			if stdout.Len() != 0 {
				t.Fatalf("Delete printed %q on a refusal", stdout.Bytes())
			}
		})
	}
}

// writeScript writes an executable shell script that records its run by
// creating marker.
func writeScript(t *testing.T, path, marker string) {
	t.Helper()
	script := "#!/bin/sh\necho ran >'" + marker + "'\nexit 0\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestRegressionDeleteRunsRefusedRuntimeBinary: when the runtime config
// saved in the bundle fails validation, LoadConfig returns the error
// together with the config it refused, and Delete warns "<error>; using
// <binary>" and then runs that very binary. A binary LoadConfig calls
// unsafe ("../runc", resolved against the working directory, which is the
// bundle when containerd runs the shim) must not be run.
func TestRegressionDeleteRunsRefusedRuntimeBinary(t *testing.T) {
	bundleDir, f := deleteBundle(t)
	markers := t.TempDir()
	refused := filepath.Join(markers, "refused-binary-ran")
	fallback := filepath.Join(markers, "fallback-runc-ran")
	// "../runc" from the bundle.
	writeScript(t, filepath.Join(filepath.Dir(bundleDir), "runc"), refused)
	// "runc" on PATH, the default a refused config should fall back to.
	pathDir := t.TempDir()
	writeScript(t, filepath.Join(pathDir, "runc"), fallback)
	t.Setenv("PATH", pathDir)
	t.Chdir(bundleDir)
	root := filepath.Join(t.TempDir(), "root")
	cfg := `{"binary":"../runc","root":"` + root + `"}`
	if err := os.WriteFile(bundle.New(bundleDir).RuntimeConfig(), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	f.Bundle = "" // the working directory, as containerd runs it

	var stdout, warn bytes.Buffer
	if err := Delete(context.Background(), f, &stdout, &warn); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if !strings.Contains(warn.String(), "must be a name or a clean absolute path") {
		t.Errorf("warnings = %q, want the config error", warn.String())
	}
	var resp taskapi.DeleteResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil || resp.GetExitStatus() != 137 {
		t.Errorf("DeleteResponse = %v, %v", &resp, err)
	}
	if _, err := os.Stat(refused); err == nil {
		t.Fatalf("Delete ran the refused runtime binary ../runc (warnings: %q)", warn.String())
	}
}

// TestDeleteSkipsRuntimeAfterServerDelete: containerd runs `delete` after
// every server it disconnects from. When the server already deleted the
// container (the bundle is marked), the runtime is not run again; the
// response is the same.
func TestDeleteSkipsRuntimeAfterServerDelete(t *testing.T) {
	for _, marked := range []bool{false, true} {
		t.Run(fmt.Sprintf("marked=%v", marked), func(t *testing.T) {
			bundleDir, f := deleteBundle(t)
			ran := filepath.Join(t.TempDir(), "runtime-ran")
			script := filepath.Join(t.TempDir(), "runtime")
			writeScript(t, script, ran)
			if err := (runtime.Config{Binary: script, Root: t.TempDir()}).Save(bundle.New(bundleDir).RuntimeConfig()); err != nil {
				t.Fatal(err)
			}
			if marked {
				if err := bundle.New(bundleDir).MarkDeleted(); err != nil {
					t.Fatal(err)
				}
			}
			resp, warn := runDelete(t, f)
			if resp.GetExitStatus() != 137 || warn != "" {
				t.Fatalf("Delete = %v, warnings %q", resp, warn)
			}
			_, err := os.Stat(ran)
			if runs := err == nil; runs == marked {
				t.Fatalf("marked=%v: runtime ran = %v", marked, runs)
			}
		})
	}
}

// tetherSocketPath is a socket path of the form SocketPath gives, in a
// short directory of the test's.
func tetherSocketPath(t *testing.T) string {
	t.Helper()
	path, err := SocketPath(shortDir(t), "/run/containerd/containerd.sock", "tether-test", t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRegressionOrphanServerNeverShutDown: a server whose only task never
// reached it (containerd SIGKILLed between `start` and Create; containerd
// 2.4.2, restarting, found no such task in it and ran `delete`) served
// nothing until the node rebooted, its socket with it
// (TestStressContainerdKilled left one of each after 10 kills). `delete`
// now sends the live server a Shutdown, which it obeys only when it serves
// no container.
func TestRegressionOrphanServerNeverShutDown(t *testing.T) {
	bundleDir, f := deleteBundle(t)
	path := tetherSocketPath(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	svc := taskservice.New(taskservice.Config{
		Namespace: f.Namespace,
		Logger:    slog.New(slog.DiscardHandler),
		Shutdown:  func() { asked.Add(1) },
	})
	svc.Register(server)
	served := make(chan error, 1)
	go func() { served <- server.Serve(context.Background(), ln) }()
	defer func() {
		server.Close()
		<-served
	}()
	if err := bundle.New(bundleDir).WriteAddress(SocketAddress(path)); err != nil {
		t.Fatal(err)
	}
	_, warn := runDelete(t, f)
	if asked.Load() != 1 {
		t.Fatalf("delete did not ask the server that serves nothing to leave (warnings %q)", warn)
	}
	if st, err := os.Lstat(path); err != nil || st.Mode().Type() != os.ModeSocket {
		t.Fatalf("delete removed the socket of a live server: %v", err)
	}
}

// TestRegressionShutdownAnsweredByLeaving: a server that obeys Shutdown may
// close the connection before its answer is written; asking it to leave
// then succeeded, and `tether doctor --fix` reported "ttrpc: closed" as a
// failed fix (TestTetherCLI on containerd 2.2.1). A connection closed with
// no answer counts as done; a refusal is still an error.
func TestRegressionShutdownAnsweredByLeaving(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		// Read the request's header, then leave without answering.
		var header [10]byte
		_, _ = c.Read(header[:])
		c.Close()
	}()
	if err := shutdownIfIdle(context.Background(), path, "ns", "id"); err != nil {
		t.Errorf("asking a server that left at once: %v, want nil", err)
	}
	<-done

	// A server that refuses (it serves a container) is an error.
	refusing := filepath.Join(dir, "r")
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	taskapi.RegisterTTRPCTaskService(server, refuseShutdown{})
	rl, err := net.Listen("unix", refusing)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(context.Background(), rl) }()
	defer func() {
		server.Close()
		<-served
	}()
	if err := shutdownIfIdle(context.Background(), refusing, "ns", "id"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("asking a server that refuses: %v, want FailedPrecondition", err)
	}
}

// refuseShutdown is a task service whose Shutdown refuses, as a server
// with a container does.
type refuseShutdown struct{ taskapi.TTRPCTaskService }

func (refuseShutdown) Shutdown(context.Context, *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	return nil, status.Error(codes.FailedPrecondition, "serving a container")
}
