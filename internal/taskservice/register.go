package taskservice

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// Service names served. containerd.task.v3.Task has the same methods and
// wire-identical messages as v2 (api/runtime/task/v3/shim.proto), so one
// method table serves both, decoding v3 requests into the v2 Go types; this
// also keeps the gRPC runtime that the generated v3 package imports out of
// the binary.
const (
	ServiceV2 = "containerd.task.v2.Task"
	ServiceV3 = "containerd.task.v3.Task"
)

// Register serves s under both task service names on srv.
func (s *Service) Register(srv *ttrpc.Server) {
	desc := s.serviceDesc()
	srv.RegisterService(ServiceV2, desc)
	srv.RegisterService(ServiceV3, desc)
}

func (s *Service) serviceDesc() *ttrpc.ServiceDesc {
	return &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"State":      method(s.State),
		"Create":     method(s.Create),
		"Start":      method(s.Start),
		"Delete":     method(s.Delete),
		"Pids":       method(s.Pids),
		"Pause":      method(s.Pause),
		"Resume":     method(s.Resume),
		"Checkpoint": method(s.Checkpoint),
		"Kill":       method(s.Kill),
		"Exec":       method(s.Exec),
		"ResizePty":  method(s.ResizePty),
		"CloseIO":    method(s.CloseIO),
		"Update":     method(s.Update),
		"Wait":       method(s.Wait),
		"Stats":      method(s.Stats),
		"Connect":    method(s.Connect),
		"Shutdown":   method(s.Shutdown),
	}}
}

// method adapts a typed handler to ttrpc. It is the one place where handler
// errors become ttrpc status codes.
func method[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](h func(context.Context, PReq) (Resp, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		req := PReq(new(Req))
		if err := unmarshal(req); err != nil {
			return nil, toStatus(fmt.Errorf("decode %T: %v: %w", req, err, errdefs.ErrInvalidArgument))
		}
		resp, err := h(ctx, req)
		if err != nil {
			return nil, toStatus(err)
		}
		return resp, nil
	}
}
