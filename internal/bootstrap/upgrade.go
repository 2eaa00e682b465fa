package bootstrap

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/internal/container"
	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/exits"
	"github.com/tether-shim/tether/internal/handover"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/taskservice"
	"github.com/tether-shim/tether/internal/upgrade"
)

// serverListener returns the server's listening socket: the one `start`
// passed on listenFD, or, in an image a live upgrade started, the one in
// the inherited state, with the connections handed over.
func serverListener(inherited *upgrade.State) (*net.UnixListener, []upgrade.Handed, error) {
	if inherited != nil {
		return upgrade.Resumed(*inherited)
	}
	sock := os.NewFile(listenFD, "socket")
	fl, err := net.FileListener(sock)
	sock.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("listening socket on fd %d: %w", listenFD, err)
	}
	ln, ok := fl.(*net.UnixListener)
	if !ok {
		fl.Close()
		return nil, nil, fmt.Errorf("fd %d is not a unix socket", listenFD)
	}
	return ln, nil, nil
}

// shimState is State.Shim of state version 2: what the shim holds besides
// its connections. Its parts describe themselves (the Handed types); every
// descriptor they name is in State.FDs.
type shimState struct {
	Reaper     exits.Handed                            `json:"reaper"`
	Events     []events.HandedEvent                    `json:"events,omitempty"`
	Containers []container.Handed                      `json:"containers,omitempty"`
	Counters   map[string]introspect.ContainerCounters `json:"counters,omitempty"`
}

// shimParts are the parts of a server that a live upgrade quiesces,
// describes and, in the new image, adopts.
type shimParts struct {
	logger    *slog.Logger
	svc       *taskservice.Service
	reaper    *exits.Reaper
	publisher *events.Publisher
	counting  *introspect.CountingSink

	// resumes undo the quiescing of a snapshot, in reverse; only the
	// server's main goroutine (Upgrader.HandOver) touches it.
	resumes []func()
}

// replayable reports whether a request frame read and not answered may be
// left to the new image: a task Wait (v2 or v3) for a process whose exit is
// not handed on yet. containerd (and its CRI plugin) holds one for every
// task for the task's whole life, so without it no shim would ever be
// quiescent. The new image reads the frame first and answers it when the
// process exits.
func (s *shimParts) replayable(frame []byte) bool {
	const header = 10
	if len(frame) <= header {
		return false
	}
	var req ttrpc.Request
	if err := proto.Unmarshal(frame[header:], &req); err != nil {
		return false
	}
	if req.Method != "Wait" || (req.Service != taskservice.ServiceV2 && req.Service != taskservice.ServiceV3) {
		return false
	}
	var w taskapi.WaitRequest
	if err := proto.Unmarshal(req.Payload, &w); err != nil {
		return false
	}
	return s.svc.WaitBlocks(w.GetID(), w.GetExecID())
}

// settle stops the exit monitor once the connections are quiescent
// (exits.Reaper.Pause): no exit is collected from then on, so no Wait the
// hand-over leaves to the new image can be answered by the old one.
func (s *shimParts) settle(ctx context.Context) error {
	if err := s.reaper.Pause(ctx); err != nil {
		return fmt.Errorf("exits: %w", err)
	}
	s.resumes = append(s.resumes, s.reaper.Unpause)
	return nil
}

// snapshot quiesces the rest of the shim once settle ran and the
// connections are quiescent again, in the order docs/design.md gives (each
// container's OOM watch and stdio, then the event sender), each bounded by
// ctx, and describes it.
func (s *shimParts) snapshot(ctx context.Context, files *handover.Files) (json.RawMessage, error) {
	if err := s.svc.Quiesce(ctx); err != nil {
		return nil, err
	}
	s.resumes = append(s.resumes, s.svc.Unquiesce)
	if err := s.publisher.Pause(ctx); err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	s.resumes = append(s.resumes, s.publisher.Unpause)

	var st shimState
	var err error
	if st.Reaper, err = s.reaper.HandOver(files); err != nil {
		return nil, fmt.Errorf("exits: %w", err)
	}
	if st.Containers, err = s.svc.HandOver(files); err != nil {
		return nil, err
	}
	if st.Events, err = s.publisher.HandOver(); err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	for _, c := range st.Containers {
		if st.Counters == nil {
			st.Counters = make(map[string]introspect.ContainerCounters, len(st.Containers))
		}
		st.Counters[c.ID] = s.counting.Counters(c.ID)
	}
	return json.Marshal(st)
}

// resume undoes snapshot's quiescing after a failed hand-over.
func (s *shimParts) resume() {
	for i := len(s.resumes) - 1; i >= 0; i-- {
		s.resumes[i]()
	}
	s.resumes = nil
}

// inheritedShim decodes the shim description a live upgrade handed to this
// image, nil if there is none (a server `start` launched, or a state
// version 1). The old image is gone, so a description that cannot be read
// is logged at Error and nothing of it is adopted: the server serves on.
func inheritedShim(logger *slog.Logger, from *upgrade.State) *shimState {
	if from == nil || len(from.Shim) == 0 {
		return nil
	}
	st, err := decodeShimState(from.Shim)
	if err != nil {
		logger.Error("live upgrade: the shim description cannot be read; nothing of it is adopted", "error", err)
		return nil
	}
	return &st
}

// newReaper returns the server's exit monitor: with the pidfds the old
// image handed over, taken before its first sweep (which would reap a
// handed process that exited during the hand-over, status and all).
func newReaper(logger *slog.Logger, busy func() (end func()), st *shimState) (*exits.Reaper, error) {
	if st == nil {
		return exits.New(logger, busy)
	}
	r, err := exits.NewAdopted(logger, busy, st.Reaper)
	if err == nil {
		return r, nil
	}
	logger.Error("live upgrade: the exit monitor's pidfds cannot be adopted; exits of handed processes are collected by pid", "error", err)
	return exits.New(logger, busy)
}

// adopt takes over, in the image a live upgrade started, what the old
// image described, before any request is served: the undelivered events
// (first in the queue), the per-container counters, the containers. The
// reaper took the pidfds already (newReaper). What cannot be adopted is
// logged at Error and the server serves on with the rest.
func (s *shimParts) adopt(ctx context.Context, st *shimState) {
	if st == nil {
		return
	}
	defer s.reaper.ForgetAdopted()
	if err := s.publisher.Adopt(st.Events); err != nil {
		s.logger.Error("live upgrade: events not yet delivered", "error", err)
	}
	for id, c := range st.Counters {
		s.counting.Adopt(id, c)
	}
	if err := s.svc.Adopt(ctx, st.Containers); err != nil {
		s.logger.Error("live upgrade: containers", "error", err)
	}
	s.logger.Info("live upgrade: adopted", "containers", s.svc.Held(), "events", len(st.Events))
}

// decodeShimState decodes a shim description strictly (no unknown field)
// and validates every container in it.
func decodeShimState(data []byte) (shimState, error) {
	var st shimState
	if err := upgrade.DecodeStrict(data, &st); err != nil {
		return shimState{}, fmt.Errorf("shim description: %w", err)
	}
	if err := st.Reaper.Validate(); err != nil {
		return shimState{}, fmt.Errorf("shim description: exits: %w", err)
	}
	for i, e := range st.Events {
		if err := e.Validate(); err != nil {
			return shimState{}, fmt.Errorf("shim description: event %d: %w", i, err)
		}
	}
	seen := make(map[string]bool, len(st.Containers))
	for _, c := range st.Containers {
		if err := c.Validate(); err != nil {
			return shimState{}, err
		}
		if seen[c.ID] {
			return shimState{}, fmt.Errorf("shim description: container %s twice", c.ID)
		}
		seen[c.ID] = true
	}
	return st, nil
}

// CheckShimState is the new binary's side of the second dry run of a live
// upgrade (upgrade.RunCheckState): it reads the shim description of s as
// the new image would before adopting it, without taking a descriptor.
func CheckShimState(s upgrade.State) error {
	if len(s.Shim) == 0 {
		return nil
	}
	_, err := decodeShimState(s.Shim)
	return err
}

// newUpgrader returns the server's live upgrade (docs/design.md, "Live
// upgrade"). The new image is the binary at the path the first image was
// started from, run with the same arguments and the environment `start`
// gives a server (serverEnv).
func newUpgrader(logger *slog.Logger, version string, inherited *upgrade.State, ln *net.UnixListener, q *upgrade.Quiescer,
	parts *shimParts) (*upgrade.Upgrader, error) {
	exe, generation := "", 0
	if inherited != nil {
		exe, generation = inherited.Exe, inherited.Generation
	} else {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("live upgrade: own binary: %w", err)
		}
	}
	return upgrade.New(upgrade.Config{
		Logger:     logger,
		Version:    version,
		Exe:        exe,
		Generation: generation,
		Argv:       os.Args,
		Env:        func() []string { return serverEnv(os.Environ()) },
		Listener:   ln,
		Quiescer:   q,
		Hold:       parts.reaper.Hold,
		Busy:       parts.svc.Busy,
		Replayable: parts.replayable,
		Settle:     parts.settle,
		Snapshot:   parts.snapshot,
		Resume:     parts.resume,
		// The new image's runtime must start without huge pages, as one
		// `start` launches (thp.go); its Serve releases the flag.
		BeforeExec:      holdHugePages,
		AfterFailedExec: func() { _ = releaseHugePages() },
	}), nil
}
