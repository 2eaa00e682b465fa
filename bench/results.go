package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// key names one figure: containerd version, OCI runtime ("" for the binary
// size) and metric.
type key struct {
	Version, Runtime, Metric string
}

// recorder collects samples per key and side ("tether", "stock", "floor").
type recorder struct {
	mu         sync.Mutex
	samples    map[key]map[string][]float64
	failed     map[key]map[string]string
	notes      map[key][]string
	breakdowns []breakdown
}

// breakdown is where one shim's resident memory is.
type breakdown struct {
	Version string           `json:"containerd"`
	Runtime string           `json:"runtime"`
	Side    string           `json:"side"`
	What    string           `json:"what"` // single, group20, ...
	Sample  memSample        `json:"rollup"`
	RssKB   map[string]int64 `json:"rss_kb_by_mapping"`
	Threads map[string]int   `json:"threads_by_syscall"`
	Env     []string         `json:"go_env,omitempty"` // GO* variables the shim runs with
}

func newRecorder() *recorder {
	return &recorder{samples: map[key]map[string][]float64{}, failed: map[key]map[string]string{}, notes: map[key][]string{}}
}

func (r *recorder) add(k key, side string, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.samples[k] == nil {
		r.samples[k] = map[string][]float64{}
	}
	r.samples[k][side] = append(r.samples[k][side], v)
}

func (r *recorder) has(k key, side string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.samples[k][side]) > 0
}

// fail records why a figure could not be measured for a side (the first reason is kept).
func (r *recorder) fail(k key, side, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed[k] == nil {
		r.failed[k] = map[string]string{}
	}
	if _, ok := r.failed[k][side]; !ok {
		r.failed[k][side] = why
		logf("failed: containerd %s, %s, %s, %s: %s", k.Version, k.Runtime, k.Metric, side, clip(why, 300))
	}
}

func (r *recorder) failedFor(k key, side string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.failed[k][side]
	return ok
}

func (r *recorder) note(k key, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes[k] = append(r.notes[k], msg)
}

func (r *recorder) breakdown(version, rt, side, what string, m memSample) {
	bd := breakdown{Version: version, Runtime: rt, Side: side, What: what, Sample: m, RssKB: mappingsBreakdown(m.Pid), Threads: threadSyscalls(m.Pid)}
	for _, kv := range testkit.Environ(m.Pid) {
		if strings.HasPrefix(kv, "GO") {
			bd.Env = append(bd.Env, kv)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.breakdowns = append(r.breakdowns, bd)
}

// stat summarises samples.
type stat struct {
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	N       int       `json:"n"`
	Samples []float64 `json:"samples"`
}

func summarize(xs []float64) *stat {
	if len(xs) == 0 {
		return nil
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	round := func(x float64) float64 { return math.Round(x*1000) / 1000 }
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = round(x)
	}
	return &stat{Median: round(med), Min: round(s[0]), Max: round(s[len(s)-1]), N: len(s), Samples: out}
}

// metricDef describes a figure.
type metricDef struct {
	ID     string `json:"id"`
	Label  string `json:"label"`
	Unit   string `json:"unit"`
	Higher bool   `json:"higher_is_better"`
	Prec   int    `json:"-"`
}

func metricDefs(cfg config) []metricDef {
	defs := []metricDef{
		{"size_mb", "shim binary (file size)", "MiB", false, 1},
		{"load_mb", "shim binary (loaded segments)", "MiB", false, 1},
		{"run_ms", "ctr run --rm /bin/true", "ms", false, 1},
		{"exec_ms", "ctr task exec /bin/true", "ms", false, 1},
		{"start_tput", fmt.Sprintf("start %d containers, %d parallel", cfg.TputN, cfg.Parallel), "ctr/s", true, 1},
		{"stopdel_tput", fmt.Sprintf("stop+delete %d containers, %d parallel", cfg.TputN, cfg.Parallel), "ctr/s", true, 1},
		{"cpu_ms", "shim CPU per lifecycle (run --rm)", "ms", false, 1},
		{"cpu_server_ms", "  of which the server", "ms", false, 1},
		{"cpu_start_ms", "  of which `start`", "ms", false, 1},
	}
	mem := func(what, desc string) {
		defs = append(defs,
			metricDef{"rss_" + what, "RSS " + desc, "MiB", false, 2},
			metricDef{"pss_" + what, "PSS " + desc, "MiB", false, 2},
			metricDef{"uss_" + what, "USS (private) " + desc, "MiB", false, 2},
			metricDef{"anon_" + what, "anonymous " + desc, "MiB", false, 2},
			metricDef{"hwm_" + what, "peak RSS (VmHWM) " + desc, "MiB", false, 2},
			metricDef{"threads_" + what, "threads " + desc, "", false, 0},
			metricDef{"fds_" + what, "fds " + desc, "", false, 0},
		)
	}
	mem("single", fmt.Sprintf("per shim, %d shims", cfg.Shims))
	if cfg.Steady > 0 {
		// An idle Go program collects garbage every two minutes: the
		// steady state of a shim that has been idle past that.
		mem("steady", fmt.Sprintf("per shim, %d shims, after %s idle", cfg.Shims, cfg.Steady))
	}
	if cfg.THP != "" && cfg.THP != "off" && cfg.THP != cfg.HostTHP {
		mem("thp", fmt.Sprintf("per shim, %d shims, transparent huge pages %q (host: %q)", cfg.Shims, cfg.THP, cfg.HostTHP))
	}
	for _, n := range cfg.Groups {
		mem(fmt.Sprintf("group%d", n), fmt.Sprintf("group shim, %d containers", n))
	}
	if len(cfg.PodVersions) > 0 {
		defs = append(defs,
			metricDef{"pod1_ms", "CRI pod of 1 container: runp + create + start", "ms", false, 1},
			metricDef{"pod3_ms", "CRI pod of 3 containers: runp + 3 × (create + start)", "ms", false, 1},
		)
		mem("pod3", "of the shim of a CRI pod of 3 containers")
	}
	return defs
}

// row is one line of the table.
type row struct {
	Containerd   string   `json:"containerd"`
	Runtime      string   `json:"runtime,omitempty"`
	Metric       string   `json:"metric"`
	Label        string   `json:"label"`
	Unit         string   `json:"unit"`
	Higher       bool     `json:"higher_is_better"`
	Tether       *stat    `json:"tether,omitempty"`
	Stock        *stat    `json:"stock,omitempty"`
	Floor        *stat    `json:"floor,omitempty"`
	Ratio        float64  `json:"ratio,omitempty"` // Tether median / stock median
	TetherFailed string   `json:"tether_failed,omitempty"`
	StockFailed  string   `json:"stock_failed,omitempty"`
	FloorFailed  string   `json:"floor_failed,omitempty"`
	Notes        []string `json:"notes,omitempty"`
	prec         int
}

// goal is one target of issue 6.
type goal struct {
	Containerd string   `json:"containerd"`
	Goal       string   `json:"goal"`
	Value      *float64 `json:"value,omitempty"`
	Floor      *float64 `json:"floor,omitempty"` // the memory floor's median (bench/floor), where there is one
	Status     string   `json:"status"`          // met, missed, not measured: <why>
}

type results struct {
	Meta       *meta       `json:"meta"`
	Config     config      `json:"config"`
	Metrics    []metricDef `json:"metrics"`
	Rows       []row       `json:"rows"`
	Goals      []goal      `json:"goals"`
	Breakdowns []breakdown `json:"memory_breakdowns"`
}

func (res *results) fill(rec *recorder, cfg config, versions []*cdVersion, m *meta) {
	if m.Finished.IsZero() {
		m.Finished = time.Now()
		m.Warnings = append(m.Warnings, "the run did not complete; figures are partial")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	res.Metrics = metricDefs(cfg)
	res.Breakdowns = rec.breakdowns
	res.Rows = nil
	rts := []string{""}
	for _, rt := range append(append([]string{}, cfg.Runtimes...), cfg.MemRuntimes...) {
		if !contains(rts, rt) {
			rts = append(rts, rt)
		}
	}
	for _, v := range versions {
		for _, def := range res.Metrics {
			for _, rt := range rts {
				k := key{v.Name, rt, def.ID}
				if rec.samples[k] == nil && rec.failed[k] == nil {
					continue
				}
				r := row{Containerd: v.Name, Runtime: rt, Metric: def.ID, Label: def.Label, Unit: def.Unit, Higher: def.Higher, prec: def.Prec,
					Tether: summarize(rec.samples[k]["tether"]), Stock: summarize(rec.samples[k]["stock"]), Floor: summarize(rec.samples[k]["floor"]),
					TetherFailed: rec.failed[k]["tether"], StockFailed: rec.failed[k]["stock"], FloorFailed: rec.failed[k]["floor"], Notes: rec.notes[k]}
				if r.Tether != nil && r.Stock != nil && r.Stock.Median != 0 {
					r.Ratio = math.Round(r.Tether.Median/r.Stock.Median*1000) / 1000
				}
				res.Rows = append(res.Rows, r)
			}
		}
		if contains(cfg.Versions, v.Name) {
			res.Goals = append(res.Goals, res.goals(v.Name, cfg)...)
		}
	}
}

func (res *results) find(version, rt, metric string) *row {
	for i := range res.Rows {
		r := &res.Rows[i]
		if r.Containerd == version && r.Runtime == rt && r.Metric == metric {
			return r
		}
	}
	return nil
}

// goals evaluates the targets of issue 6 for one containerd version, with runc.
func (res *results) goals(version string, cfg config) []goal {
	var out []goal
	check := func(desc, metric string, ratio bool, le bool, limit float64) {
		g := goal{Containerd: version, Goal: desc}
		r := res.find(version, "runc", metric)
		var v *float64
		switch {
		case r == nil:
			g.Status = "not measured"
		case r.TetherFailed != "":
			g.Status = "not measured: Tether failed: " + r.TetherFailed
		case ratio && r.StockFailed != "":
			g.Status = "not measured: stock shim failed: " + r.StockFailed
		case ratio && r.Ratio != 0:
			x := r.Ratio
			v = &x
		case !ratio && r.Tether != nil:
			x := r.Tether.Median
			v = &x
		default:
			g.Status = "not measured"
		}
		if r != nil && r.Floor != nil && !ratio {
			x := r.Floor.Median
			g.Floor = &x
		}
		if v != nil {
			g.Value = v
			ok := *v <= limit
			if !le {
				ok = *v >= limit
			}
			g.Status = map[bool]string{true: "met", false: "missed"}[ok]
		}
		out = append(out, g)
	}
	check("RSS per shim at 20 shims ≤ 3.4 MiB", "rss_single", false, true, 3.4)
	check("anonymous memory per shim ≤ 1.0 MiB", "anon_single", false, true, 1.0)
	last := cfg.Groups[len(cfg.Groups)-1]
	check(fmt.Sprintf("group shim with %d containers ≤ 5 MiB RSS", last), fmt.Sprintf("rss_group%d", last), false, true, 5)
	check("start latency Tether/stock ≤ 0.85 (ctr run --rm)", "run_ms", true, true, 0.85)
	check("exec latency Tether/stock ≤ 0.85", "exec_ms", true, true, 0.85)
	check("start throughput Tether/stock ≥ 1.25", "start_tput", true, false, 1.25)
	check("threads per shim ≤ 6", "threads_single", false, true, 6)
	if cfg.Shims != 20 {
		out[0].Goal += fmt.Sprintf(" (measured at %d shims)", cfg.Shims)
	}
	return out
}

func fmtNum(x float64, prec int) string {
	return fmt.Sprintf("%.*f", prec, x)
}

func fmtStat(s *stat, failed string, prec int) string {
	if failed != "" {
		if s == nil {
			return "failed"
		}
		return fmtNum(s.Median, prec) + " (partly failed)"
	}
	if s == nil {
		return "—"
	}
	if s.N == 1 || s.Min == s.Max {
		return fmtNum(s.Median, prec)
	}
	return fmt.Sprintf("%s [%s–%s]", fmtNum(s.Median, prec), fmtNum(s.Min, prec), fmtNum(s.Max, prec))
}

func (r row) title() string {
	if r.Unit == "" {
		return r.Label
	}
	return fmt.Sprintf("%s (%s)", r.Label, r.Unit)
}

func (r row) ratioString() string {
	if r.Ratio == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", r.Ratio)
}

// writeTable prints the human table.
func (res *results) writeTable(w io.Writer) {
	fmt.Fprintf(w, "\nTether vs the stock shim, median [min–max]; ratio = Tether/stock; floor = the OCI runtime alone,\nor for memory a Go task server with Tether's dependencies and no container (bench/floor).\n")
	fmt.Fprintf(w, "Tether %s (%s); started %s, took %s.\n", res.Meta.Commit+dirtyMark(res.Meta.Dirty), humanSize(res.Meta.Tether.Size), res.Meta.Started.Format(time.RFC3339), res.Meta.Finished.Sub(res.Meta.Started).Round(time.Second))
	for _, v := range res.Meta.Versions {
		fmt.Fprintf(w, "\n== containerd %s (%s), stock shim %s\n", v.Name, v.Version, v.StockShim)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "figure\truntime\tTether\tstock\tfloor\tratio\t")
		for _, r := range res.Rows {
			if r.Containerd != v.Name {
				continue
			}
			rt := r.Runtime
			if rt == "" {
				rt = "-"
			}
			floor := ""
			if r.Floor != nil || r.FloorFailed != "" {
				floor = fmtStat(r.Floor, r.FloorFailed, r.prec)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", r.title(), rt, fmtStat(r.Tether, r.TetherFailed, r.prec), fmtStat(r.Stock, r.StockFailed, r.prec), floor, r.ratioString())
		}
		tw.Flush()
		// Each reason once, with what it cost.
		var reasons []string
		where := map[string][]string{}
		for _, r := range res.Rows {
			if r.Containerd != v.Name {
				continue
			}
			for _, f := range []struct{ side, why string }{{"Tether", r.TetherFailed}, {"stock", r.StockFailed}, {"floor", r.FloorFailed}} {
				if f.why == "" {
					continue
				}
				if where[f.why] == nil {
					reasons = append(reasons, f.why)
				}
				where[f.why] = append(where[f.why], fmt.Sprintf("%s/%s/%s", r.Metric, r.Runtime, f.side))
			}
			for _, n := range r.Notes {
				fmt.Fprintf(w, "  note: %s, %s: %s\n", r.Metric, r.Runtime, n)
			}
		}
		for _, why := range reasons {
			fmt.Fprintf(w, "  failed (%s): %s\n", strings.Join(where[why], ", "), why)
		}
		for _, bd := range res.Breakdowns {
			if bd.Version != v.Name {
				continue
			}
			fmt.Fprintf(w, "  where it is, %s %s (%s): RSS %s; threads in %s\n", bd.Side, bd.What, bd.Runtime, kbList(bd.RssKB), countList(bd.Threads))
		}
	}
	fmt.Fprintf(w, "\nGoals of issue 6 (Tether, runc; containerd 1.6 is the reference run):\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, g := range res.Goals {
		val := ""
		if g.Value != nil {
			val = fmt.Sprintf("%.2f", *g.Value)
		}
		status := g.Status
		if g.Floor != nil {
			status += fmt.Sprintf(" (floor %.2f)", *g.Floor)
		}
		fmt.Fprintf(tw, "  containerd %s\t%s\t%s\t%s\t\n", g.Containerd, g.Goal, val, status)
	}
	tw.Flush()
	for _, wmsg := range res.Meta.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", wmsg)
	}
}

func dirtyMark(d bool) string {
	if d {
		return " (with uncommitted changes)"
	}
	return ""
}

func humanSize(n int64) string { return fmt.Sprintf("%.1f MiB", mib(n)) }

// writeMarkdown writes the table as Markdown, for the README.
func (res *results) writeMarkdown(w io.Writer) {
	fmt.Fprintf(w, "<!-- generated by `make bench` (bench/); do not edit -->\n")
	fmt.Fprintf(w, "Median [min–max] over the runs; ratio = Tether/stock; floor = the OCI runtime alone, or for memory a Go task server with Tether's dependencies and no container (bench/floor). Tether %s, %s.\n\n", res.Meta.Commit+dirtyMark(res.Meta.Dirty), res.Meta.Started.Format("2006-01-02"))
	for _, v := range res.Meta.Versions {
		fmt.Fprintf(w, "**containerd %s** against `%s`\n\n", v.Name, v.StockShim)
		fmt.Fprintf(w, "| figure | runtime | Tether | stock | floor | ratio |\n|---|---|---|---|---|---|\n")
		for _, r := range res.Rows {
			if r.Containerd != v.Name {
				continue
			}
			floor := ""
			if r.Floor != nil || r.FloorFailed != "" {
				floor = fmtStat(r.Floor, r.FloorFailed, r.prec)
			}
			rt := r.Runtime
			if rt == "" {
				rt = "–"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", strings.TrimSpace(r.title()), rt, fmtStat(r.Tether, r.TetherFailed, r.prec), fmtStat(r.Stock, r.StockFailed, r.prec), floor, r.ratioString())
		}
		fmt.Fprintln(w)
		seen := map[string]bool{}
		for _, r := range res.Rows {
			for _, f := range []struct{ side, why string }{{"Tether", r.TetherFailed}, {"stock", r.StockFailed}, {"floor", r.FloorFailed}} {
				if r.Containerd == v.Name && f.why != "" && !seen[f.why] {
					seen[f.why] = true
					fmt.Fprintf(w, "- failed (%s, %s): %s\n", r.Runtime, f.side, strings.ReplaceAll(f.why, "|", "\\|"))
				}
			}
		}
		if len(seen) > 0 {
			fmt.Fprintln(w)
		}
	}
}

// write prints the table and writes latest.json, latest.md and latest.svg into dir.
func (res *results) write(dir string) error {
	res.writeTable(os.Stdout)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	files := map[string][]byte{"latest.json": append(data, '\n')}
	var md strings.Builder
	res.writeMarkdown(&md)
	files["latest.md"] = []byte(md.String())
	files["latest.svg"] = []byte(res.svg())
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			return err
		}
	}
	abs, _ := filepath.Abs(dir)
	fmt.Printf("\nwrote %s/latest.json, latest.md and latest.svg\n", abs)
	return nil
}

// kbList formats a breakdown, largest first, in MiB.
func kbList(m map[string]int64) string {
	type kv struct {
		k string
		v int64
	}
	var l []kv
	var total int64
	for k, v := range m {
		total += v
		if v > 0 {
			l = append(l, kv{k, v})
		}
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	parts := []string{fmt.Sprintf("%.2f MiB =", float64(total)/1024)}
	for i, e := range l {
		sep := " +"
		if i == 0 {
			sep = ""
		}
		parts = append(parts, fmt.Sprintf("%s %.2f %s", sep, float64(e.v)/1024, e.k))
	}
	return strings.Join(parts, "")
}

func countList(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || (m[keys[i]] == m[keys[j]] && keys[i] < keys[j]) })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// render reads a results JSON and writes the table, Markdown and chart again
// (into the same directory).
func render(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(data, &res); err != nil {
		return err
	}
	if res.Meta == nil {
		return fmt.Errorf("%s: no meta", path)
	}
	prec := map[string]int{}
	for _, d := range metricDefs(res.Config) {
		prec[d.ID] = d.Prec
	}
	for i := range res.Rows {
		res.Rows[i].prec = prec[res.Rows[i].Metric]
	}
	return res.write(filepath.Dir(path))
}
