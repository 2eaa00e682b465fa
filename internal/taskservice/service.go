// Package taskservice is the ttrpc boundary of the shim: it serves
// containerd.task.v2.Task and containerd.task.v3.Task, validates every
// request, finds the container and the process it is about once, and calls
// the operation on them (package container).
//
// It is the only place where errors become ttrpc status codes (see method in
// register.go). Handlers hold Service.mu only to read or change the container
// table, never across a runtime call, so State answers within containerd's
// 2 s deadline even while another container's create is slow.
package taskservice

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/cgroups"
	"github.com/tether-shim/tether/internal/container"
	"github.com/tether-shim/tether/internal/paths"
	"github.com/tether-shim/tether/internal/runtime"
	"github.com/tether-shim/tether/internal/stdio"
)

// processDetailsTypeURL names containerd.runc.v1.ProcessDetails, the Pids
// info that tells an exec's pid by its exec id.
const processDetailsTypeURL = "containerd.runc.v1.ProcessDetails"

// Config configures a Service.
type Config struct {
	// Namespace is the containerd namespace the shim serves.
	Namespace string
	// BundleParent is the directory that holds the bundles this shim may
	// serve (its own bundle's parent). Empty disables the check.
	BundleParent string
	// Deps are handed to every container; their Monitor also holds the
	// orphan sweep off around runtime commands.
	Deps container.Deps
	// Logger logs each Create at Debug, and failed Create, Start and
	// Delete requests at Warn.
	Logger *slog.Logger
	// Shutdown is called once, on a Shutdown request that finds no
	// container left. It must not block: the server stops after the reply.
	Shutdown func()
	// Version is reported by Connect.
	Version string
	// MoveShim moves the shim into the cgroup at path, the options'
	// ShimCgroup (nil: cgroups.AddProcess of the shim's pid). Tests
	// replace it so as not to move the test process.
	MoveShim func(path string) error
	// SystemdRunning reports whether systemd runs the host (nil:
	// runtime.SystemdRunning). Only then does a cgroupsPath in systemd's
	// form, without the option, get the systemd cgroup driver.
	SystemdRunning func() bool
}

func (s *Service) systemdRunning() bool {
	if s.cfg.SystemdRunning != nil {
		return s.cfg.SystemdRunning()
	}
	return runtime.SystemdRunning()
}

// Service implements the task API. Create it with New.
type Service struct {
	cfg          Config
	shutdownOnce sync.Once

	mu sync.Mutex
	// containers maps ids to created containers; guarded by mu.
	containers map[string]*container.Container
	// creating holds the ids whose Create is in flight; guarded by mu.
	creating map[string]struct{}
}

// New returns a Service with no containers.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		panic("taskservice: New with a nil Logger")
	}
	if cfg.Shutdown == nil {
		cfg.Shutdown = func() {}
	}
	return &Service{
		cfg:        cfg,
		containers: make(map[string]*container.Container),
		creating:   make(map[string]struct{}),
	}
}

// get returns the container id, or ErrNotFound.
func (s *Service) get(id string) (*container.Container, error) {
	if err := container.ValidateID("container", id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// process returns the process that execID names in container id (its
// init for ""), or ErrNotFound. Every request about a process finds it here,
// once, and then calls the operation on it.
func (s *Service) process(id, execID string) (*container.Container, *container.Process, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.Process(execID)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// reserve claims id for a Create in flight.
func (s *Service) reserve(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[id]; ok {
		return fmt.Errorf("container %q: %w", id, errdefs.ErrAlreadyExists)
	}
	if _, ok := s.creating[id]; ok {
		return fmt.Errorf("container %q is being created: %w", id, errdefs.ErrAlreadyExists)
	}
	s.creating[id] = struct{}{}
	return nil
}

// settle ends the reservation of id, adding c to the table if it is not nil.
func (s *Service) settle(id string, c *container.Container) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.creating, id)
	if c != nil {
		s.containers[id] = c
	}
}

// Create creates a container from its bundle, in two halves: the service
// decodes and validates the request into a container.Config and reserves
// the id (parseCreate, reserve); only then does it move the shim into the
// options' ShimCgroup, so that a duplicate or invalid Create moves nothing,
// and container.Create owns everything after that, including the cleanup
// of every file it wrote when it fails.
func (s *Service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (*taskapi.CreateTaskResponse, error) {
	s.cfg.Logger.Debug("create", "id", r.GetID(), "bundle", r.GetBundle())
	cfg, shimCgroup, err := s.parseCreate(r)
	if err != nil {
		return nil, err
	}
	if err := s.reserve(cfg.ID); err != nil {
		return nil, err
	}
	var created *container.Container
	defer func() { s.settle(cfg.ID, created) }()
	if shimCgroup != "" {
		if err := s.moveShim(shimCgroup); err != nil {
			return nil, fmt.Errorf("move the shim to cgroup %s: %w", shimCgroup, err)
		}
	}
	c, err := container.Create(ctx, cfg, s.cfg.Deps)
	if err != nil {
		s.cfg.Logger.Warn("create failed", "id", cfg.ID, "error", err)
		return nil, err
	}
	created = c
	return &taskapi.CreateTaskResponse{Pid: uint32(c.Init().Pid())}, nil
}

// moveShim moves the shim process into the cgroup at path.
func (s *Service) moveShim(path string) error {
	if s.cfg.MoveShim != nil {
		return s.cfg.MoveShim(path)
	}
	return cgroups.AddProcess(path, os.Getpid())
}

// parseCreate decodes and validates a CreateTaskRequest: the id, the
// bundle and its spec, the runtime options, the stdio, the rootfs and the
// checkpoint. It changes nothing. It returns the container's Config and
// the ShimCgroup of the options.
func (s *Service) parseCreate(r *taskapi.CreateTaskRequest) (container.Config, string, error) {
	if err := container.ValidateID("container", r.GetID()); err != nil {
		return container.Config{}, "", err
	}
	if err := container.ValidateBundle(r.GetID(), r.GetBundle(), s.cfg.BundleParent); err != nil {
		return container.Config{}, "", err
	}
	b := bundle.New(r.GetBundle())
	spec, err := b.Spec()
	if err != nil {
		return container.Config{}, "", err
	}
	opts, err := runtime.ParseOptions(r.GetOptions())
	if err != nil {
		return container.Config{}, "", err
	}
	var restore *runtime.CheckpointOpts
	if cp := r.GetCheckpoint(); cp != "" {
		if err := paths.Check("checkpoint path", cp); err != nil {
			return container.Config{}, "", err
		}
		restore = &runtime.CheckpointOpts{ImagePath: cp, WorkPath: opts.CriuWorkPath}
	}
	// As with containerd's shim, the runtime's state is under
	// <Root>/<namespace>, where tools and clients look for it.
	root := runtime.DefaultRoot(s.cfg.Namespace)
	if opts.Root != "" {
		root = filepath.Join(opts.Root, s.cfg.Namespace)
	}
	cfg := container.Config{
		ID:     r.GetID(),
		Bundle: b,
		Spec:   spec,
		Rootfs: container.MountsFromAPI(r.GetRootfs()),
		Stdio: stdio.Config{
			Stdin:    r.GetStdin(),
			Stdout:   r.GetStdout(),
			Stderr:   r.GetStderr(),
			Terminal: r.GetTerminal(),
		},
		Runtime: runtime.Config{
			Binary: opts.BinaryName,
			Root:   root,
			Log:    b.RuntimeLog(),
			// The options may not say it (Docker never does), but on a
			// systemd host a cgroupsPath in systemd's form only works
			// with its driver. Without systemd the driver cannot work at
			// all, and such a path (containerd 1.6's CRI writes one for
			// any ".slice" parent) is a cgroupfs directory name to runc,
			// as with containerd's shim.
			SystemdCgroup: opts.SystemdCgroup || (runtime.IsSystemdCgroupsPath(spec.CgroupsPath) && s.systemdRunning()),
		},
		NoPivot:      opts.NoPivotRoot,
		NoNewKeyring: opts.NoNewKeyring,
		IoUID:        int(opts.IoUID),
		IoGID:        int(opts.IoGID),
		Restore:      restore,
	}
	if err := cfg.Validate(); err != nil {
		return container.Config{}, "", err
	}
	return cfg, opts.ShimCgroup, nil
}

// Start starts the init process, or the exec process ExecID names.
func (s *Service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	pid, err := p.Start(ctx)
	if err != nil {
		s.cfg.Logger.Warn("start failed", "id", r.GetID(), "error", err)
		return nil, err
	}
	return &taskapi.StartResponse{Pid: uint32(pid)}, nil
}

// State reports a process's state from memory; it never calls the runtime.
func (s *Service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	c, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	st := p.Status()
	return &taskapi.StateResponse{
		ID:         p.ID(),
		Bundle:     c.Bundle(),
		Pid:        uint32(st.Pid),
		Status:     taskStatus(st.State),
		Stdin:      st.Stdio.Stdin,
		Stdout:     st.Stdio.Stdout,
		Stderr:     st.Stdio.Stderr,
		Terminal:   st.Stdio.Terminal,
		ExitStatus: st.ExitStatus,
		ExitedAt:   timestamppb.New(st.ExitedAt),
		ExecID:     r.GetExecID(),
	}, nil
}

func taskStatus(s container.State) tasktypes.Status {
	switch s {
	case container.Created, container.Starting, container.StartFailed:
		return tasktypes.Status_CREATED
	case container.Running:
		return tasktypes.Status_RUNNING
	case container.Paused:
		return tasktypes.Status_PAUSED
	case container.Exiting, container.Stopped:
		return tasktypes.Status_STOPPED
	}
	return tasktypes.Status_UNKNOWN
}

// Wait blocks until the process exits or the request is cancelled.
func (s *Service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return &taskapi.WaitResponse{ExitStatus: st.ExitStatus, ExitedAt: timestamppb.New(st.ExitedAt)}, nil
}

// Kill signals the init process, the exec process ExecID names, or (All)
// every process of the container.
func (s *Service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	if err := p.Kill(ctx, r.GetSignal(), r.GetAll()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Delete deletes a created or stopped container and forgets it.
func (s *Service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	st, err := p.Delete(ctx)
	if err != nil {
		s.cfg.Logger.Warn("delete failed", "id", r.GetID(), "exec", r.GetExecID(), "error", err)
		return nil, err
	}
	if p.IsInit() {
		s.mu.Lock()
		delete(s.containers, r.GetID())
		s.mu.Unlock()
	}
	return &taskapi.DeleteResponse{
		Pid:        uint32(st.Pid),
		ExitStatus: st.ExitStatus,
		ExitedAt:   timestamppb.New(st.ExitedAt),
	}, nil
}

// Pids lists the container's processes.
func (s *Service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	pids, err := c.Pids(ctx)
	if err != nil {
		return nil, err
	}
	execs := c.ExecIDs()
	resp := &taskapi.PidsResponse{Processes: make([]*tasktypes.ProcessInfo, 0, len(pids))}
	for _, pid := range pids {
		info := &tasktypes.ProcessInfo{Pid: uint32(pid)}
		if execID, ok := execs[pid]; ok {
			details, err := proto.Marshal(&runcoptions.ProcessDetails{ExecID: execID})
			if err != nil {
				return nil, err
			}
			info.Info = &anypb.Any{TypeUrl: processDetailsTypeURL, Value: details}
		}
		resp.Processes = append(resp.Processes, info)
	}
	return resp, nil
}

// CloseIO closes the process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	if r.GetStdin() {
		p.CloseStdin()
	}
	return &emptypb.Empty{}, nil
}

// Connect reports the shim's and the task's pids.
func (s *Service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	return &taskapi.ConnectResponse{
		ShimPid: uint32(os.Getpid()),
		TaskPid: uint32(c.Init().Pid()),
		Version: s.cfg.Version,
	}, nil
}

// Shutdown stops the shim once it serves no container. containerd calls it
// after each Delete; a group shim stays up while other containers remain.
func (s *Service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	empty := len(s.containers) == 0 && len(s.creating) == 0
	s.mu.Unlock()
	if empty {
		s.shutdownOnce.Do(s.cfg.Shutdown)
	}
	return &emptypb.Empty{}, nil
}

func notImplemented(what string) error {
	return fmt.Errorf("%s is not supported by this shim yet: %w", what, errdefs.ErrNotImplemented)
}

// Pause freezes the container.
func (s *Service) Pause(ctx context.Context, r *taskapi.PauseRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	if err := c.Pause(ctx); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Resume thaws the container.
func (s *Service) Resume(ctx context.Context, r *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	if err := c.Resume(ctx); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// checkpointOptionsTypeURL names containerd.runc.v1.CheckpointOptions.
const checkpointOptionsTypeURL = "containerd.runc.v1.CheckpointOptions"

// Checkpoint checkpoints the container with CRIU into r.Path.
func (s *Service) Checkpoint(ctx context.Context, r *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	opts, err := checkpointOptions(r)
	if err != nil {
		return nil, err
	}
	if err := c.Checkpoint(ctx, opts); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// checkpointOptions decodes a CheckpointTaskRequest: the image path, and
// containerd.runc.v1.CheckpointOptions when given (its image_path wins).
func checkpointOptions(r *taskapi.CheckpointTaskRequest) (runtime.CheckpointOpts, error) {
	opts := runtime.CheckpointOpts{ImagePath: r.GetPath()}
	if a := r.GetOptions(); a != nil && (a.GetTypeUrl() != "" || len(a.GetValue()) > 0) {
		if url := strings.TrimPrefix(a.GetTypeUrl(), "type.googleapis.com/"); url != checkpointOptionsTypeURL {
			return opts, fmt.Errorf("checkpoint options of type %q are not supported (want %s): %w", a.GetTypeUrl(), checkpointOptionsTypeURL, errdefs.ErrInvalidArgument)
		}
		var co runcoptions.CheckpointOptions
		if err := proto.Unmarshal(a.GetValue(), &co); err != nil {
			return opts, fmt.Errorf("decode %s: %v: %w", checkpointOptionsTypeURL, err, errdefs.ErrInvalidArgument)
		}
		opts.Exit = co.GetExit()
		opts.OpenTCP = co.GetOpenTcp()
		opts.ExternalUnixSockets = co.GetExternalUnixSockets()
		opts.Terminal = co.GetTerminal()
		opts.FileLocks = co.GetFileLocks()
		opts.EmptyNamespaces = co.GetEmptyNamespaces()
		opts.CgroupsMode = co.GetCgroupsMode()
		opts.WorkPath = co.GetWorkPath()
		if p := co.GetImagePath(); p != "" {
			opts.ImagePath = p
		}
	}
	for _, p := range []string{opts.ImagePath, opts.WorkPath} {
		if p != "" {
			if err := paths.Check("checkpoint path", p); err != nil {
				return opts, err
			}
		}
	}
	switch opts.CgroupsMode {
	case "", "soft", "full", "strict":
	default:
		return opts, fmt.Errorf("checkpoint cgroups mode %q (want soft, full or strict): %w", opts.CgroupsMode, errdefs.ErrInvalidArgument)
	}
	return opts, nil
}

// Exec adds an exec process; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	if r.GetSpec() == nil {
		return nil, fmt.Errorf("exec %s: no process spec: %w", r.GetExecID(), errdefs.ErrInvalidArgument)
	}
	err = c.Exec(ctx, r.GetExecID(), r.GetSpec().GetValue(), stdio.Config{
		Stdin:    r.GetStdin(),
		Stdout:   r.GetStdout(),
		Stderr:   r.GetStderr(),
		Terminal: r.GetTerminal(),
	})
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// ResizePty sets the size of a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	_, p, err := s.process(r.GetID(), r.GetExecID())
	if err != nil {
		return nil, err
	}
	if err := p.Resize(r.GetWidth(), r.GetHeight()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Update applies new resources (a JSON LinuxResources) to the container.
func (s *Service) Update(ctx context.Context, r *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	if r.GetResources() == nil {
		return nil, fmt.Errorf("update %s: no resources: %w", r.GetID(), errdefs.ErrInvalidArgument)
	}
	if err := c.Update(ctx, r.GetResources().GetValue()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Stats returns the container's cgroup metrics:
// io.containerd.cgroups.v1.Metrics or io.containerd.cgroups.v2.Metrics.
func (s *Service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	c, err := s.get(r.GetID())
	if err != nil {
		return nil, err
	}
	stats, err := c.Stats(ctx)
	if err != nil {
		return nil, err
	}
	return &taskapi.StatsResponse{Stats: stats}, nil
}
