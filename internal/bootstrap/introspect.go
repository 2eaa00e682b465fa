package bootstrap

import (
	"os"
	"runtime"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/taskservice"
)

// introspectionOf is what the server's introspection reports from.
type introspectionOf struct {
	flags          Flags
	version        string
	bundle, socket string
	started        time.Time
	svc            *taskservice.Service
	counting       *introspect.CountingSink
	publisher      *events.Publisher
	listener       *guardedListener
	rpc            *introspect.RPCStats
}

// registerIntrospection serves introspect.ServiceName on server, beside the
// task API: `tether inspect`, `stacks`, `pprof` and `metrics` ask it. It
// adds nothing that runs while the shim is idle (package introspect).
func registerIntrospection(server *ttrpc.Server, o introspectionOf) {
	self, _ := os.Executable()
	introspect.NewService(introspect.Config{
		Shim: introspect.Shim{
			Version:       o.version,
			GoVersion:     runtime.Version(),
			Binary:        self,
			Namespace:     o.flags.Namespace,
			Group:         o.flags.ID,
			Bundle:        o.bundle,
			Socket:        o.socket,
			Address:       o.flags.Address,
			EventsAddress: os.Getenv("TTRPC_ADDRESS"),
			Debug:         o.flags.Debug,
			StartedAt:     o.started,
		},
		Source:   o.svc,
		Counters: o.counting,
		Events: func() introspect.Events {
			st := o.publisher.Stats(introspect.MaxPending)
			return introspect.Events{
				Queued:    st.Queued,
				Pending:   st.Pending,
				Published: st.Published,
				Delivered: st.Delivered,
				Retried:   st.Retried,
				Dropped:   st.Dropped,
			}
		},
		Connections: o.listener.conns.snapshot,
		RPC:         o.rpc,
	}).Register(server)
}
