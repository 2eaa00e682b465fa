package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/container"
	"github.com/tether-shim/tether/internal/events"
	"github.com/tether-shim/tether/internal/handover"
	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/taskservice"
	"github.com/tether-shim/tether/internal/trim"
	"github.com/tether-shim/tether/internal/upgrade"
)

// listenFD is the descriptor `start` hands the listening socket on.
const listenFD = 3

// Deadlines of the server's teardown: containerd gives Shutdown 3 s; events
// still queued get a little longer, since a lost TaskExit or TaskDelete
// leaves containerd with a task it believes alive.
const (
	serverStopTimeout = 2 * time.Second
	eventFlushTimeout = 10 * time.Second
)

// Serve runs the shim server until a Shutdown request finds no container
// left. It logs to the bundle's log fifo, which containerd copies into its
// own log.
func Serve(ctx context.Context, f Flags, version string) error {
	started := time.Now()
	if err := f.validate(); err != nil {
		return err
	}
	if err := restoreCallerEnv(); err != nil {
		return fmt.Errorf("restore environment: %w", err)
	}
	// Before any child: see thp.go. A server that cannot give its children
	// the host's huge page setting back must not start containers.
	marked, markErr := markNoHugePages()
	if err := releaseHugePages(); err != nil {
		return err
	}
	bundleDir, err := f.bundleDir()
	if err != nil {
		return err
	}
	b := bundle.New(bundleDir)
	logw := openLog(b.Log())
	defer logw.Close()
	// A fatal error or an unrecovered panic is written to fd 2, which is
	// /dev/null: keep a copy in the bundle (its CrashLog).
	crash, crashErr := setCrashOutput(b)
	if crash != nil {
		defer crash.Close()
	}
	level := slog.LevelInfo
	if f.Debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level})).
		With("runtime", "io.containerd.tether.v2", "namespace", f.Namespace, "shim", f.ID)
	if crashErr != nil {
		logger.Warn("crash output: a crash would leave no trace", "error", crashErr)
	}
	if markErr != nil {
		logger.Warn("huge pages: not every mapping could be marked; the shim may use more memory", "marked", marked, "error", markErr)
	}

	// One P is plenty for a shim, which mostly waits; every extra P can
	// bring its own OS thread and stacks. See docs/performance.md. `start`
	// already runs the server with GOMAXPROCS=1 (serverEnv); this covers a
	// server started otherwise.
	runtime.GOMAXPROCS(1)
	// The heap profile's buckets and their hash table are runtime memory
	// that is never returned; only -debug, which can write the profile,
	// samples the heap, and finely: a shim's heap is around a megabyte.
	// Set before any goroutine starts.
	runtime.MemProfileRate = 0
	if f.Debug {
		runtime.MemProfileRate = 4096
	}

	// An image a live upgrade started inherits the listener and the
	// connections (docs/design.md, "Live upgrade").
	inherited, resumed, err := upgrade.Inherited()
	if err != nil {
		return fmt.Errorf("live upgrade: %w", err)
	}
	var from *upgrade.State
	if resumed {
		from = &inherited
		logger.Info("resumed by live upgrade", "from", inherited.From, "generation", inherited.Generation, "connections", len(inherited.Conns))
	}
	ln, conns, err := serverListener(from)
	if err != nil {
		return err
	}
	socketPath := ln.Addr().String()

	// Every source of work wakes the trimmer: requests and connections
	// (below), stdio copies (Deps.Busy) and exits.
	tr := trim.New()
	handed := inheritedShim(logger, from)
	reaper, err := newReaper(logger, tr.Begin, handed)
	if err != nil {
		ln.Close()
		return err
	}
	publisher := events.NewPublisher(os.Getenv("TTRPC_ADDRESS"), f.Namespace, logger)
	counting := introspect.NewCountingSink(publisher)

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	svc := taskservice.New(taskservice.Config{
		Namespace:    f.Namespace,
		BundleParent: filepath.Dir(bundleDir),
		Deps: container.Deps{
			Monitor:   reaper,
			Events:    counting,
			Logger:    logger,
			Namespace: f.Namespace,
			Busy:      tr.Begin,
		},
		Logger:   logger,
		Shutdown: stop,
		Version:  version,
	})
	rpcStats := &introspect.RPCStats{}
	server, err := newTTRPCServer(logger, tr, f.Debug, ttrpc.WithChainUnaryServerInterceptor(rpcStats.Interceptor()))
	if err != nil {
		ln.Close()
		return err
	}
	svc.Register(server)
	quiescer := upgrade.NewQuiescer()
	parts := &shimParts{logger: logger, svc: svc, reaper: reaper, publisher: publisher, counting: counting}
	parts.adopt(ctx, handed)
	if from != nil {
		if n := handover.CloseUntaken(from.FDs); n > 0 {
			logger.Error("live upgrade: descriptors no part took are closed", "count", n)
		}
	}
	up, err := newUpgrader(logger, version, from, ln, quiescer, parts)
	if err != nil {
		ln.Close()
		return err
	}
	upgrade.Register(server, up)
	guarded := newGuardedListener(ln, logger, tr.Poke)
	guarded.quiescer, guarded.gate, guarded.inherited = quiescer, quiescer.Listener(ln), conns
	registerIntrospection(server, introspectionOf{
		flags: f, version: version, bundle: bundleDir, socket: socketPath, started: started,
		svc: svc, counting: counting, publisher: publisher, listener: guarded, rpc: rpcStats,
	})

	// SIGTERM and SIGINT are ignored while containers run: the shim is what
	// keeps them, and containerd asks it to leave through Shutdown.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPIPE)
	defer signal.Stop(signals)

	served := make(chan error, 1)
	go func() { served <- serveTTRPC(ctx, server, guarded, logger) }()
	go tr.Run(ctx)
	if f.Debug {
		prof := startProfiler(ctx, b, logger, tr.Stats)
		defer func() {
			stop()
			<-prof.done
		}()
	}
	defer func() {
		stop()
		<-tr.Done()
	}()
	logger.Debug("serving", "socket", socketPath, "pid", os.Getpid())

	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case err := <-served:
			served = nil
			if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
				serveErr = err
				logger.Error("ttrpc server failed", "error", err)
			}
			break wait
		case sig := <-signals:
			logger.Debug("signal ignored", "signal", sig)
		case bin := <-up.Pending():
			// Returns only if the upgrade failed; the server serves on.
			_ = up.HandOver(ctx, bin)
		}
	}

	up.Cancel()
	// Unlink first, under the directory lock, so that a concurrent `start`
	// either finds no socket and launches a new server, or found this one
	// before it began to go away.
	if unlock, err := lockDir(filepath.Dir(socketPath)); err == nil {
		os.Remove(socketPath)
		unlock()
	} else {
		os.Remove(socketPath)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), serverStopTimeout)
	if err := server.Shutdown(stopCtx); err != nil {
		server.Close()
	}
	cancel()
	if served != nil {
		<-served
	}
	flushCtx, cancel := context.WithTimeout(context.Background(), eventFlushTimeout)
	if err := publisher.Close(flushCtx); err != nil {
		logger.Error("events left undelivered", "error", err)
	}
	cancel()
	if err := reaper.Close(); err != nil {
		logger.Warn("close exit monitor", "error", err)
	}
	return serveErr
}

// newTTRPCServer returns the shim's ttrpc server: every request holds off
// the trimmer (and is logged with its duration when debug is set), then
// goes through the interceptors of opts. It
// serves a guardedListener, which admits only peers of the server's uid.
func newTTRPCServer(logger *slog.Logger, tr *trim.Trimmer, debug bool, opts ...ttrpc.ServerOpt) (*ttrpc.Server, error) {
	return ttrpc.NewServer(append([]ttrpc.ServerOpt{
		ttrpc.WithUnaryServerInterceptor(func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
			defer tr.Begin()()
			if !debug {
				return m(ctx, u)
			}
			start := time.Now()
			resp, err := m(ctx, u)
			logger.Debug("rpc", "method", info.FullMethod, "duration", time.Since(start), "error", err)
			return resp, err
		}),
	}, opts...)...)
}

// serveTTRPC serves server on ln until it is shut down. ttrpc logs its own
// warnings (a failed accept, a response that cannot be sent, a connection
// that could not be set up) through the logger in the context Serve gets, so logger goes there:
// without it they went to slog.Default, which the server never sets and
// whose stderr is /dev/null.
func serveTTRPC(ctx context.Context, server *ttrpc.Server, ln net.Listener, logger *slog.Logger) error {
	return server.Serve(log.WithLogger(ctx, logger), ln)
}

// setCrashOutput makes the runtime copy crash output to the bundle's
// CrashLog (runtime/debug.SetCrashOutput; the server's stderr is /dev/null)
// and returns the file, which must stay open. containerd removes the bundle
// with the task; until then `tether` and operators can read why a shim
// died.
func setCrashOutput(b bundle.Bundle) (*os.File, error) {
	f, err := os.OpenFile(b.CrashLog(), os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := debug.SetCrashOutput(f, debug.CrashOptions{}); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
