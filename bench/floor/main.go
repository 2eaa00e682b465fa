// Command floor is the memory floor of a Go shim with Tether's
// dependencies: a ttrpc server of the task API that links every package
// Tether's server imports from outside the repository, runs the Go runtime
// the way Tether's server does (one P, no heap profiling, SIGCHLD notified)
// and frees heap and drops its read-only pages once idle as Tether does
// (not Tether's thread shedding or collector pause). It answers Connect and
// State and nothing else; it runs no container.
//
// The bench starts it (floor serve SOCKET), calls it (floor call SOCKET:
// three Connect and three State requests) and samples it like a shim
// server: the "floor" column of the memory rows. Whatever Tether holds above
// it is Tether's own; what the floor holds no Go shim with these
// dependencies can avoid.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	// Every package outside the repository that Tether's server imports
	// (go list -f '{{join .Imports "\n"}}' ./internal/... ./cmd/...).
	_ "github.com/containerd/cgroups/v3/cgroup1/stats"
	_ "github.com/containerd/cgroups/v3/cgroup2/stats"
	_ "github.com/containerd/containerd/api/events"
	_ "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	_ "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	_ "github.com/containerd/containerd/api/types"
	_ "github.com/containerd/containerd/api/types/runc/options"
	_ "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	_ "github.com/containerd/containerd/api/types/task"
	_ "github.com/containerd/errdefs"
	_ "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	_ "github.com/containerd/typeurl/v2"
	_ "github.com/opencontainers/runtime-spec/specs-go"
	_ "golang.org/x/sys/unix"
	_ "google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/status"
	_ "google.golang.org/protobuf/encoding/protowire"
	_ "google.golang.org/protobuf/proto"
	_ "google.golang.org/protobuf/types/known/anypb"
	_ "google.golang.org/protobuf/types/known/emptypb"
	_ "google.golang.org/protobuf/types/known/timestamppb"
)

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "serve" && os.Args[1] != "call") {
		fmt.Fprintln(os.Stderr, "usage: floor serve|call SOCKET")
		os.Exit(2)
	}
	var err error
	if os.Args[1] == "serve" {
		err = serve(os.Args[2])
	} else {
		err = call(os.Args[2])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

// service answers Connect and State; the other methods are never called.
type service struct {
	taskapi.TTRPCTaskService
	poke chan struct{}
}

func (s service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	return &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: 1}, nil
}

func (s service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	return &taskapi.StateResponse{ID: r.ID, Bundle: "/run/floor", Pid: 1}, nil
}

// serve runs until killed, trimming one second after the last request, as
// Tether's server does.
func serve(sock string) error {
	runtime.GOMAXPROCS(1)
	runtime.MemProfileRate = 0
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPIPE)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	poke := make(chan struct{}, 1)
	server, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(
		func(ctx context.Context, u ttrpc.Unmarshaler, _ *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
			select {
			case poke <- struct{}{}:
			default:
			}
			return m(ctx, u)
		}))
	if err != nil {
		return err
	}
	taskapi.RegisterTTRPCTaskService(server, service{})
	go server.Serve(context.Background(), ln)
	idle := time.NewTimer(time.Second)
	for {
		select {
		case <-sigs:
		case <-poke:
			idle.Reset(time.Second)
		case <-idle.C:
			trim()
		}
	}
}

// call makes three Connect and three State requests.
func call(sock string) error {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	task := taskapi.NewTTRPCTaskClient(client)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		if _, err := task.Connect(ctx, &taskapi.ConnectRequest{ID: "floor"}); err != nil {
			return err
		}
		if _, err := task.State(ctx, &taskapi.StateRequest{ID: "floor"}); err != nil {
			return err
		}
	}
	return nil
}

// trim is what Tether's trimmer does when idle (internal/trim/trim.go):
// free heap back to the kernel, then drop the executable's read-only pages
// from the page tables, all mappings read first and the text last, with raw
// system calls, so that little code runs after the drop to fault pages
// back in. The floor binary is built static and non-PIE, as Tether is.
func trim() {
	debug.FreeOSMemory()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	data, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	var text, other [][2]uintptr
	for line := range strings.Lines(string(data)) {
		fields := strings.Fields(line)
		if len(fields) < 6 || fields[5] != exe || len(fields[1]) < 3 || fields[1][0] != 'r' || fields[1][1] == 'w' {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if fields[1][2] == 'x' {
			text = append(text, [2]uintptr{uintptr(start), uintptr(end)})
		} else {
			other = append(other, [2]uintptr{uintptr(start), uintptr(end)})
		}
	}
	for _, r := range append(other, text...) {
		_, _, _ = syscall.RawSyscall(syscall.SYS_MADVISE, r[0], r[1]-r[0], syscall.MADV_DONTNEED)
	}
}
