package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/internal/introspect"
	"github.com/tether-shim/tether/internal/procfs"
)

// Bounds of the HTTP server of `metrics --listen`.
const (
	readHeaderTimeout = 5 * time.Second
	scrapeTimeout     = 30 * time.Second
	serverStopTimeout = 5 * time.Second
)

func runMetrics(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("metrics")
	listen := fs.String("listen", "", "serve the metrics over HTTP at this address (host:port), on /metrics, until interrupted")
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageError("metrics takes no arguments")
	}
	if *listen == "" {
		return writeMetrics(ctx, e.stdout)
	}
	return serveMetrics(ctx, e, *listen)
}

// writeMetrics collects every shim's figures and writes them in the
// Prometheus text format.
func writeMetrics(ctx context.Context, w io.Writer) error {
	shims, err := findShims()
	if err != nil {
		return err
	}
	m := newMetricSet()
	for _, s := range shims {
		var st *introspect.ProcStats
		if ps, err := procfs.Stats(s.Pid); err == nil {
			st = &ps
		}
		snap, _ := snapshotOf(ctx, s)
		m.addShim(s, st, snap)
	}
	return m.write(w)
}

// serveMetrics serves writeMetrics on addr's /metrics until ctx is done.
func serveMetrics(ctx context.Context, e *env, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), scrapeTimeout)
		defer cancel()
		var b bytes.Buffer
		if err := writeMetrics(rctx, &b); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		_, _ = w.Write(b.Bytes())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout}
	fmt.Fprintf(e.stderr, "tether metrics: serving http://%s/metrics\n", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), serverStopTimeout)
	defer cancel()
	err = srv.Shutdown(stopCtx)
	if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// metricSet builds metric families in the order they are first used.
type metricSet struct {
	order    []string
	families map[string]*dto.MetricFamily
}

func newMetricSet() *metricSet {
	return &metricSet{families: make(map[string]*dto.MetricFamily)}
}

// family returns the family name, creating it with help and typ.
func (m *metricSet) family(name, help string, typ dto.MetricType) *dto.MetricFamily {
	f, ok := m.families[name]
	if !ok {
		f = &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: typ.Enum()}
		m.families[name] = f
		m.order = append(m.order, name)
	}
	return f
}

// labels makes label pairs of alternating names and values, sorted by
// name as Prometheus's own clients write them.
func labels(kv ...string) []*dto.LabelPair {
	out := make([]*dto.LabelPair, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &dto.LabelPair{Name: proto.String(kv[i]), Value: proto.String(kv[i+1])})
	}
	slices.SortFunc(out, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

func (m *metricSet) gauge(name, help string, v float64, lp []*dto.LabelPair) {
	f := m.family(name, help, dto.MetricType_GAUGE)
	f.Metric = append(f.Metric, &dto.Metric{Label: lp, Gauge: &dto.Gauge{Value: proto.Float64(v)}})
}

func (m *metricSet) counter(name, help string, v float64, lp []*dto.LabelPair) {
	f := m.family(name, help, dto.MetricType_COUNTER)
	f.Metric = append(f.Metric, &dto.Metric{Label: lp, Counter: &dto.Counter{Value: proto.Float64(v)}})
}

func (m *metricSet) histogram(name, help string, r introspect.RPCMethod, lp []*dto.LabelPair) {
	f := m.family(name, help, dto.MetricType_HISTOGRAM)
	h := &dto.Histogram{SampleCount: proto.Uint64(r.Count), SampleSum: proto.Float64(r.SumSeconds)}
	for _, b := range r.Buckets {
		h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: proto.Float64(b.LE), CumulativeCount: proto.Uint64(b.Count)})
	}
	f.Metric = append(f.Metric, &dto.Metric{Label: lp, Histogram: h})
}

// addShim adds one shim: /proc's figures (st, nil if unreadable) and its
// snapshot's (nil if it gave none: tether_shim_up is then 0).
func (m *metricSet) addShim(s shim, st *introspect.ProcStats, snap *introspect.Snapshot) {
	id := []string{"pid", strconv.Itoa(s.Pid), "namespace", s.Flags.Namespace, "group", s.Flags.ID}
	up := 0.0
	if snap != nil {
		up = 1
	}
	m.gauge("tether_shim_up", "1 if the shim answered tether.introspect.v1, 0 if not (an older version, or hung).", up, labels(id...))
	if st != nil {
		m.gauge("tether_shim_rss_bytes", "Resident set size of the shim process.", float64(st.RSSBytes), labels(id...))
		m.gauge("tether_shim_pss_bytes", "Proportional set size of the shim process.", float64(st.PSSBytes), labels(id...))
		m.gauge("tether_shim_threads", "Threads of the shim process.", float64(st.Threads), labels(id...))
		m.gauge("tether_shim_fds", "Open file descriptors of the shim process.", float64(st.FDs), labels(id...))
	}
	if snap == nil {
		return
	}
	sh := snap.Shim
	m.gauge("tether_shim_info", "The shim's version; always 1.", 1, labels(append(id, "version", sh.Version, "go_version", sh.GoVersion)...))
	m.gauge("tether_shim_tasks", "Containers the shim serves.", float64(len(snap.Containers)), labels(id...))
	m.gauge("tether_shim_uptime_seconds", "Time since the shim started.", sh.UptimeSeconds, labels(id...))
	m.gauge("tether_shim_goroutines", "Goroutines of the shim.", float64(sh.Goroutines), labels(id...))
	m.gauge("tether_shim_go_heap_bytes", "Bytes of live and unswept heap objects of the shim.", float64(sh.HeapBytes), labels(id...))
	m.gauge("tether_shim_connections", "Open connections to the shim's socket.", float64(snap.Connections.Open), labels(id...))
	ev := snap.Events
	m.gauge("tether_shim_events_queued", "Task events not yet delivered to containerd.", float64(ev.Queued), labels(id...))
	m.counter("tether_shim_events_published_total", "Task events queued for containerd.", float64(ev.Published), labels(id...))
	m.counter("tether_shim_events_delivered_total", "Task events containerd acknowledged.", float64(ev.Delivered), labels(id...))
	m.counter("tether_shim_events_retried_total", "Failed event deliveries that were retried.", float64(ev.Retried), labels(id...))
	m.counter("tether_shim_events_dropped_total", "Task events given up on.", float64(ev.Dropped), labels(id...))
	for _, r := range snap.RPC {
		lp := labels(append(id, "method", r.Method)...)
		m.counter("tether_shim_rpc_requests_total", "Requests served, by method.", float64(r.Count), lp)
		m.counter("tether_shim_rpc_errors_total", "Requests answered with an error, by method.", float64(r.Errors), lp)
		m.histogram("tether_shim_rpc_duration_seconds", "Time to serve a request, by method.", r, lp)
	}
	for _, c := range snap.Containers {
		lp := labels(append(id, "container", c.ID)...)
		var out, drops uint64
		for _, p := range c.Processes {
			out += p.Stdio.OutBytes
			drops += p.Stdio.Drops
		}
		m.counter("tether_container_exits_total", "Exits of the container's processes.", float64(c.Counters.Exits), lp)
		m.counter("tether_container_ooms_total", "OOM kills in the container's cgroup.", float64(c.Counters.OOMs), lp)
		m.counter("tether_container_execs_total", "Exec processes started in the container.", float64(c.Counters.Execs), lp)
		m.counter("tether_container_stdio_bytes_total", "Bytes of output of the container's processes delivered.", float64(out), lp)
		m.counter("tether_container_stdio_drops_total", "Bytes of output of the container's processes that could not be delivered.", float64(drops), lp)
	}
}

// write writes every family in the text format.
func (m *metricSet) write(w io.Writer) error {
	for _, name := range m.order {
		if _, err := expfmt.MetricFamilyToText(w, m.families[name]); err != nil {
			return err
		}
	}
	return nil
}
