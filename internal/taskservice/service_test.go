package taskservice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/container"
	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/events/eventstest"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/testutil"
)

func TestMain(m *testing.M) {
	if code, ok := stubMain(); ok {
		os.Exit(code)
	}
	os.Setenv(stubRuntimeEnv, "1")
	os.Exit(m.Run())
}

// waitLimit bounds every wait of these tests; reaching it fails the test.
const waitLimit = 30 * time.Second

type harness struct {
	t      *testing.T
	svc    *Service
	rec    *eventstest.Recorder
	reaper *exits.Reaper
	root   string // the Root of the runtime options
	// noSystemd makes the service see a host without systemd; by default
	// it sees one with systemd.
	noSystemd bool
	bundles   string // the directory holding bundles
	options   *anypb.Any
	shutdown  chan struct{}
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(testLogOut(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	reaper, err := exits.New(logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reaper.Close() })
	h := &harness{
		t:        t,
		rec:      &eventstest.Recorder{},
		reaper:   reaper,
		root:     t.TempDir(),
		bundles:  t.TempDir(),
		shutdown: make(chan struct{}),
	}
	opts, err := proto.Marshal(&runcoptions.Options{BinaryName: self, Root: h.root})
	if err != nil {
		t.Fatal(err)
	}
	h.options = &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: opts}
	var once sync.Once
	h.svc = New(Config{
		Namespace:      "test",
		BundleParent:   h.bundles,
		Deps:           container.Deps{Monitor: reaper, Events: h.rec, Logger: logger},
		Logger:         logger,
		Shutdown:       func() { once.Do(func() { close(h.shutdown) }) },
		SystemdRunning: func() bool { return !h.noSystemd },
	})
	return h
}

// runRoot is where the stub runtime keeps its state: <Root>/<namespace>.
func (h *harness) runRoot() string { return filepath.Join(h.root, "test") }

// configKey is the key of a bundle's config.json in the files given to
// harness.bundle.
var configKey = filepath.Base(bundle.New("/").Config())

// bundle makes a bundle for id with the given stub control files.
func (h *harness) bundle(id string, files map[string]string) string {
	h.t.Helper()
	b := filepath.Join(h.bundles, id)
	if err := os.MkdirAll(b, 0o755); err != nil {
		h.t.Fatal(err)
	}
	if _, ok := files[configKey]; !ok {
		files[configKey] = "{}"
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(b, name), []byte(content), 0o644); err != nil {
			h.t.Fatal(err)
		}
	}
	return b
}

func (h *harness) create(ctx context.Context, id string, files map[string]string, stdout string) (*taskv2.CreateTaskResponse, error) {
	return h.svc.Create(ctx, &taskv2.CreateTaskRequest{
		ID:      id,
		Bundle:  h.bundle(id, files),
		Stdout:  stdout,
		Options: h.options,
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

func codeOfErr(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	return codeOf(err)
}

// TestLifecycleEventsInOrder runs a container whose init prints a line and
// exits 3: the output reaches the fifo, Wait reports 3, State follows the
// lifecycle and the events come as create, start, exit, delete.
func TestLifecycleEventsInOrder(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	ctx := ctxT(t)

	fifoPath := filepath.Join(t.TempDir(), "stdout")
	if err := syscall.Mkfifo(fifoPath, 0o600); err != nil {
		t.Fatal(err)
	}
	reader, err := os.OpenFile(fifoPath, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	created, err := h.create(ctx, "c1", map[string]string{"exit-code": "3"}, fifoPath)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if created.Pid == 0 {
		t.Fatal("create returned pid 0")
	}
	st, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "c1"})
	if err != nil || st.Status != tasktypes.Status_CREATED || st.Pid != created.Pid {
		t.Fatalf("state after create = %v, %v; want CREATED pid %d", st, err, created.Pid)
	}
	if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: "c1"}); err != nil {
		t.Fatalf("start: %v", err)
	}
	w, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 3 {
		t.Fatalf("wait = %v, %v; want exit status 3", w, err)
	}
	out, err := io.ReadAll(reader)
	if err != nil && !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("read stdout: %v", err)
	}
	if string(out) != "hello c1\n" {
		t.Fatalf("stdout = %q, want %q (all output must arrive before Wait returns)", out, "hello c1\n")
	}
	st, _ = h.svc.State(ctx, &taskv2.StateRequest{ID: "c1"})
	if st.Status != tasktypes.Status_STOPPED || st.ExitStatus != 3 {
		t.Fatalf("state after exit = %v %d, want STOPPED 3", st.Status, st.ExitStatus)
	}
	del, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "c1"})
	if err != nil || del.ExitStatus != 3 || del.Pid != created.Pid {
		t.Fatalf("delete = %v, %v", del, err)
	}
	got, err := h.rec.WaitFor(ctx, 4)
	if err != nil {
		t.Fatalf("events: %v (have %v)", err, h.rec.Topics())
	}
	want := []string{events.TopicCreate, events.TopicStart, events.TopicExit, events.TopicDelete}
	if topics := topicsOf(got); strings.Join(topics, " ") != strings.Join(want, " ") {
		t.Fatalf("events = %v, want %v", topics, want)
	}
	exit := got[2].Event.(*eventsapi.TaskExit)
	if exit.ContainerID != "c1" || exit.ID != "c1" || exit.ExitStatus != 3 || exit.Pid != created.Pid {
		t.Fatalf("TaskExit = %v", exit)
	}
	if _, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "c1"}); codeOfErr(err) != codes.NotFound {
		t.Fatalf("state after delete: %v, want NotFound", err)
	}
}

// TestRegressionFailedCreatePublishedExit: a Create whose runtime call
// succeeded but whose terminal never came failed, and its init, already
// watched, was killed; its TaskExit was then published for a task whose
// TaskCreate never was, which containerd does not know.
func TestRegressionFailedCreatePublishedExit(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	bundleDir := h.bundle("badcon", map[string]string{"stub-bad-console": ""})
	_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{
		ID:       "badcon",
		Bundle:   bundleDir,
		Terminal: true,
		Options:  h.options,
	})
	if err == nil {
		t.Fatal("Create without a terminal from the runtime succeeded")
	}
	data, err := os.ReadFile(bundle.New(bundleDir).InitPid())
	if err != nil {
		t.Fatalf("the stub wrote no init.pid: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	// The init was killed by the runtime's delete; once it is reaped, its
	// exit callback has run or is running, and Close waits for it.
	for syscall.Kill(pid, 0) == nil {
		select {
		case <-ctx.Done():
			t.Fatalf("init %d of the failed create is still there", pid)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := h.reaper.Close(); err != nil {
		t.Fatal(err)
	}
	if topics := h.rec.Topics(); len(topics) != 0 {
		t.Fatalf("events of a failed create: %v, want none", topics)
	}
}

func topicsOf(rs []eventstest.Recorded) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Topic)
	}
	return out
}

// TestStartBeforeExitWhenInitExitsAtOnce pins the order TaskStart, TaskExit
// for a process that exits before the runtime's start returns, many times.
func TestStartBeforeExitWhenInitExitsAtOnce(t *testing.T) {
	h := newHarness(t)
	const runs = 10
	for i := range runs {
		ctx := ctxT(t)
		id := fmt.Sprintf("fast%d", i)
		if _, err := h.create(ctx, id, map[string]string{"exit-code": "0"}, ""); err != nil {
			t.Fatalf("create: %v", err)
		}
		if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: id}); err != nil {
			t.Fatalf("start: %v", err)
		}
		if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: id}); err != nil {
			t.Fatalf("wait: %v", err)
		}
		if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: id}); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	got, err := h.rec.WaitFor(ctxT(t), 4*runs)
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]string{}
	for _, r := range got {
		var id string
		switch e := r.Event.(type) {
		case *eventsapi.TaskStart:
			id = e.ContainerID
		case *eventsapi.TaskExit:
			id = e.ContainerID
		default:
			continue
		}
		if r.Topic == events.TopicExit && last[id] != events.TopicStart {
			t.Fatalf("%s: TaskExit after %q, want after TaskStart", id, last[id])
		}
		last[id] = r.Topic
	}
}

// TestStateAnswersDuringSlowCreate: while one container's create is stuck
// in the runtime, State, Kill and Create of other containers answer.
func TestStateAnswersDuringSlowCreate(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	if _, err := h.create(ctx, "fast", map[string]string{}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: "fast"}); err != nil {
		t.Fatal(err)
	}
	block := filepath.Join(h.bundles, "slow", "stub-block")
	slowDone := make(chan error, 1)
	go func() {
		_, err := h.create(ctx, "slow", map[string]string{"stub-block": ""}, "")
		slowDone <- err
	}()
	// Wait until the slow create is inside the runtime.
	for h.svc.isCreating("slow") == false {
		select {
		case err := <-slowDone:
			t.Fatalf("slow create returned early: %v", err)
		case <-ctx.Done():
			t.Fatal("slow create never started")
		case <-time.After(time.Millisecond):
		}
	}
	st, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "fast"})
	if err != nil || st.Status != tasktypes.Status_RUNNING {
		t.Fatalf("state during slow create = %v, %v", st, err)
	}
	if _, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "slow"}); codeOfErr(err) != codes.NotFound {
		t.Fatalf("state of the container being created: %v, want NotFound", err)
	}
	if _, err := h.create(ctx, "slow", map[string]string{}, ""); codeOfErr(err) != codes.AlreadyExists {
		t.Fatalf("second create of a container being created: %v, want AlreadyExists", err)
	}
	select {
	case err := <-slowDone:
		t.Fatalf("slow create returned while blocked: %v", err)
	default:
	}
	if err := os.Remove(block); err != nil {
		t.Fatal(err)
	}
	if err := <-slowDone; err != nil {
		t.Fatalf("slow create: %v", err)
	}
	for _, id := range []string{"fast", "slow"} {
		if _, err := h.svc.Kill(ctx, &taskv2.KillRequest{ID: id, Signal: 9}); err != nil && codeOfErr(err) != codes.NotFound {
			t.Fatalf("kill %s: %v", id, err)
		}
		if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: id}); err != nil {
			t.Fatalf("wait %s: %v", id, err)
		}
		if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: id}); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
}

// TestBadInput sends every kind of bad request and checks the code, and
// that the service still serves a running container afterwards.
func TestBadInput(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	if _, err := h.create(ctx, "good", map[string]string{}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: "good"}); err != nil {
		t.Fatal(err)
	}
	garbage := &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{0xff, 0xff, 0xff}}
	unknownType := &anypb.Any{TypeUrl: "example.com/Unknown", Value: []byte{}}
	mkBundle := func(id string) string { return h.bundle(id, map[string]string{}) }
	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"state unknown id", func() error { _, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "nope"}); return err }, codes.NotFound},
		{"kill unknown id", func() error { _, err := h.svc.Kill(ctx, &taskv2.KillRequest{ID: "nope", Signal: 9}); return err }, codes.NotFound},
		{"delete unknown id", func() error { _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "nope"}); return err }, codes.NotFound},
		{"wait unknown id", func() error { _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: "nope"}); return err }, codes.NotFound},
		{"state unknown exec", func() error {
			_, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "good", ExecID: "e1"})
			return err
		}, codes.NotFound},
		{"state dotdot id", func() error { _, err := h.svc.State(ctx, &taskv2.StateRequest{ID: ".."}); return err }, codes.InvalidArgument},
		{"create empty id", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "", Bundle: h.bundles})
			return err
		}, codes.InvalidArgument},
		{"create id with dotdot", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "../x", Bundle: filepath.Join(h.bundles, "x")})
			return err
		}, codes.InvalidArgument},
		{"create id with slash", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "a/b", Bundle: filepath.Join(h.bundles, "a/b")})
			return err
		}, codes.InvalidArgument},
		{"create bundle with dotdot", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "x", Bundle: h.bundles + "/../x"})
			return err
		}, codes.InvalidArgument},
		{"create bundle outside the shim's", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "x", Bundle: "/tmp/x"})
			return err
		}, codes.InvalidArgument},
		{"create missing bundle", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "missing", Bundle: filepath.Join(h.bundles, "missing")})
			return err
		}, codes.NotFound},
		{"create malformed options", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "m1", Bundle: mkBundle("m1"), Options: garbage})
			return err
		}, codes.InvalidArgument},
		{"create unknown options type", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "m2", Bundle: mkBundle("m2"), Options: unknownType})
			return err
		}, codes.InvalidArgument},
		{"create relative stdout", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "m3", Bundle: mkBundle("m3"), Stdout: "out", Options: h.options})
			return err
		}, codes.InvalidArgument},
		{"create stdout that is no fifo", func() error {
			_, err := h.svc.Create(ctx, &taskv2.CreateTaskRequest{ID: "m4", Bundle: mkBundle("m4"), Stdout: "/etc/hostname", Options: h.options})
			return err
		}, codes.InvalidArgument},
		{"create duplicate", func() error {
			_, err := h.create(ctx, "good", map[string]string{}, "")
			return err
		}, codes.AlreadyExists},
		{"create failing in the runtime", func() error {
			_, err := h.create(ctx, "rtfail", map[string]string{"stub-fail": "container with given ID already exists"}, "")
			return err
		}, codes.AlreadyExists},
		{"delete running", func() error { _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "good"}); return err }, codes.FailedPrecondition},
		{"start running", func() error { _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: "good"}); return err }, codes.FailedPrecondition},
		{"checkpoint without an image path", func() error {
			_, err := h.svc.Checkpoint(ctx, &taskv2.CheckpointTaskRequest{ID: "good"})
			return err
		}, codes.InvalidArgument},
		{"stats", func() error {
			_, err := h.svc.Stats(ctx, &taskv2.StatsRequest{ID: "nope"})
			return err
		}, codes.NotFound},
		{"exec without spec", func() error {
			_, err := h.svc.Exec(ctx, &taskv2.ExecProcessRequest{ID: "good", ExecID: "e"})
			return err
		}, codes.InvalidArgument},
		{"exec with malformed spec", func() error {
			_, err := h.svc.Exec(ctx, &taskv2.ExecProcessRequest{ID: "good", ExecID: "e", Spec: &anypb.Any{Value: []byte("{not json")}})
			return err
		}, codes.InvalidArgument},
		{"exec with empty args", func() error {
			_, err := h.svc.Exec(ctx, &taskv2.ExecProcessRequest{ID: "good", ExecID: "e", Spec: &anypb.Any{Value: []byte(`{"args":[]}`)}})
			return err
		}, codes.InvalidArgument},
		{"exec with bad exec id", func() error {
			_, err := h.svc.Exec(ctx, &taskv2.ExecProcessRequest{ID: "good", ExecID: "../e", Spec: &anypb.Any{Value: []byte(`{"args":["x"]}`)}})
			return err
		}, codes.InvalidArgument},
		{"exec in unknown container", func() error {
			_, err := h.svc.Exec(ctx, &taskv2.ExecProcessRequest{ID: "nope", ExecID: "e", Spec: &anypb.Any{Value: []byte(`{"args":["x"]}`)}})
			return err
		}, codes.NotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if got := codeOfErr(err); got != tc.want {
				t.Fatalf("code %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	for _, id := range []string{"m1", "m2", "m3", "m4", "rtfail"} {
		if _, err := os.Stat(filepath.Join(h.runRoot(), id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed create %s left runtime state behind: %v", id, err)
		}
	}
	st, err := h.svc.State(ctx, &taskv2.StateRequest{ID: "good"})
	if err != nil || st.Status != tasktypes.Status_RUNNING {
		t.Fatalf("after bad input, state = %v, %v; want RUNNING", st, err)
	}
	if _, err := h.svc.Kill(ctx, &taskv2.KillRequest{ID: "good", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: "good"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Kill(ctx, &taskv2.KillRequest{ID: "good", Signal: 9}); codeOfErr(err) != codes.NotFound {
		t.Fatalf("kill after exit: %v, want NotFound", err)
	}
	if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "good"}); err != nil {
		t.Fatal(err)
	}
}

// TestShutdownOnlyWhenEmpty: a Shutdown while a container remains is a
// no-op; after the last delete it stops the shim.
func TestShutdownOnlyWhenEmpty(t *testing.T) {
	h := newHarness(t)
	ctx := ctxT(t)
	if _, err := h.create(ctx, "s1", map[string]string{"exit-code": "0"}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Shutdown(ctx, &taskv2.ShutdownRequest{ID: "s1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.shutdown:
		t.Fatal("shutdown with a container left")
	default:
	}
	if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "s1"}); err != nil {
		t.Fatalf("delete created container: %v", err)
	}
	if _, err := h.svc.Shutdown(ctx, &taskv2.ShutdownRequest{ID: "s1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.shutdown:
	default:
		t.Fatal("no shutdown after the last delete")
	}
	// A created container deleted before start still gets its exit before
	// its delete event.
	got := h.rec.Topics()
	want := []string{events.TopicCreate, events.TopicExit, events.TopicDelete}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

// TestTTRPCBothVersions serves the service over a real ttrpc socket and
// calls it through the generated v2 and v3 clients: both reach the same
// handlers, and errors arrive as status codes.
func TestTTRPCBothVersions(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	ctx := ctxT(t)
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	h.svc.Register(server)
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ctx, ln) }()
	defer func() {
		server.Close()
		<-served
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()

	if _, err := h.create(ctx, "v", map[string]string{}, ""); err != nil {
		t.Fatal(err)
	}
	v2 := taskv2.NewTTRPCTaskClient(client)
	v3 := taskv3.NewTTRPCTaskClient(client)
	st2, err := v2.State(ctx, &taskv2.StateRequest{ID: "v"})
	if err != nil || st2.Status != tasktypes.Status_CREATED {
		t.Fatalf("v2 state = %v, %v", st2, err)
	}
	st3, err := v3.State(ctx, &taskv3.StateRequest{ID: "v"})
	if err != nil || st3.Status != tasktypes.Status_CREATED || st3.Pid != st2.Pid {
		t.Fatalf("v3 state = %v, %v", st3, err)
	}
	c3, err := v3.Connect(ctx, &taskv3.ConnectRequest{ID: "v"})
	if err != nil || c3.ShimPid != uint32(os.Getpid()) || c3.TaskPid != st2.Pid {
		t.Fatalf("v3 connect = %v, %v", c3, err)
	}
	_, err = v3.State(ctx, &taskv3.StateRequest{ID: "nope"})
	if s, _ := status.FromError(err); s.Code() != codes.NotFound {
		t.Fatalf("v3 unknown id: %v, want NotFound", err)
	}
	_, err = v2.Pause(ctx, &taskv2.PauseRequest{ID: "v"})
	if s, _ := status.FromError(err); s.Code() != codes.FailedPrecondition {
		t.Fatalf("v2 pause of a created container: %v, want FailedPrecondition", err)
	}
	stats, err := v3.Stats(ctx, &taskv3.StatsRequest{ID: "v"})
	if err != nil || stats.GetStats().GetTypeUrl() != "io.containerd.cgroups.v1.Metrics" {
		t.Fatalf("v3 stats = %v, %v; want io.containerd.cgroups.v1.Metrics on this cgroup v1 host", stats, err)
	}
	if _, err := v2.Delete(ctx, &taskv2.DeleteRequest{ID: "v"}); err != nil {
		t.Fatal(err)
	}
}

// isCreating reports whether a Create of id is in flight.
func (s *Service) isCreating(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.creating[id]
	return ok
}

// testLogOut is where the service under test logs: stderr with
// TETHER_TEST_LOG=1, else nowhere.
func testLogOut() io.Writer {
	if os.Getenv("TETHER_TEST_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}

// TestDeleteMarksBundle: after a Delete the bundle says the container is
// gone (so that containerd's `delete` after the disconnect skips the
// runtime), and a new container created in the same bundle path is not
// taken for deleted.
func TestDeleteMarksBundle(t *testing.T) {
	testutil.CheckLeaks(t)
	h := newHarness(t)
	ctx := ctxT(t)
	for round := 1; round <= 2; round++ {
		if _, err := h.create(ctx, "m1", map[string]string{"exit-code": "0"}, ""); err != nil {
			t.Fatalf("round %d: create: %v", round, err)
		}
		b := bundle.New(filepath.Join(h.bundles, "m1"))
		if b.WasDeleted() {
			t.Fatalf("round %d: a created container's bundle is marked deleted", round)
		}
		if _, err := h.svc.Start(ctx, &taskv2.StartRequest{ID: "m1"}); err != nil {
			t.Fatalf("round %d: start: %v", round, err)
		}
		if _, err := h.svc.Wait(ctx, &taskv2.WaitRequest{ID: "m1"}); err != nil {
			t.Fatalf("round %d: wait: %v", round, err)
		}
		if b.WasDeleted() {
			t.Fatalf("round %d: a stopped container's bundle is marked deleted", round)
		}
		if _, err := h.svc.Delete(ctx, &taskv2.DeleteRequest{ID: "m1"}); err != nil {
			t.Fatalf("round %d: delete: %v", round, err)
		}
		if !b.WasDeleted() {
			t.Fatalf("round %d: the bundle is not marked deleted after Delete", round)
		}
	}
}
