package main

// The chart: for each key figure a bar per containerd version with the ratio
// Tether/stock, a line at 1 (as good as the stock shim), the goal of issue 6
// as a tick, and the absolute values beside the bars. Plain SVG, written here.

import (
	"fmt"
	"html"
	"math"
	"strings"
)

type chartItem struct {
	runtime, metric, label string
	goal                   func(stock float64) (ratio float64, ok bool)
}

func ratioGoal(g float64) func(float64) (float64, bool) {
	return func(float64) (float64, bool) { return g, true }
}

// absGoal turns an absolute limit on Tether into a ratio to this stock median.
func absGoal(limit float64) func(float64) (float64, bool) {
	return func(stock float64) (float64, bool) {
		if stock <= 0 {
			return 0, false
		}
		return limit / stock, true
	}
}

func (res *results) chartItems() []chartItem {
	last := 20
	if len(res.Config.Groups) > 0 {
		last = res.Config.Groups[len(res.Config.Groups)-1]
	}
	g := fmt.Sprintf("group%d", last)
	items := []chartItem{
		{"", "size_mb", "shim binary size", nil},
		{"runc", "run_ms", "ctr run --rm latency, runc", ratioGoal(0.85)},
		{"crun", "run_ms", "ctr run --rm latency, crun", nil},
		{"runc", "exec_ms", "ctr task exec latency, runc", ratioGoal(0.85)},
		{"crun", "exec_ms", "ctr task exec latency, crun", nil},
		{"runc", "start_tput", "start throughput, runc (higher is better)", ratioGoal(1.25)},
		{"crun", "start_tput", "start throughput, crun (higher is better)", nil},
		{"runc", "stopdel_tput", "stop+delete throughput, runc (higher is better)", nil},
		{"runc", "cpu_ms", "shim CPU per lifecycle, runc", nil},
		{"crun", "cpu_ms", "shim CPU per lifecycle, crun", nil},
		{"runc", "rss_single", fmt.Sprintf("RSS per shim (%d shims)", res.Config.Shims), absGoal(3.4)},
		{"runc", "rss_steady", fmt.Sprintf("RSS per shim after %s idle", res.Config.Steady), nil},
		{"runc", "pss_single", "PSS per shim", nil},
		{"runc", "uss_single", "USS per shim", nil},
		{"runc", "anon_single", "anonymous memory per shim", absGoal(1.0)},
		{"runc", "threads_single", "threads per shim", absGoal(6)},
		{"runc", "fds_single", "fds per shim", nil},
		{"runc", "rss_" + g, fmt.Sprintf("RSS of a group shim, %d containers", last), absGoal(5)},
		{"runc", "anon_" + g, fmt.Sprintf("anonymous memory, group shim, %d containers", last), nil},
		{"runc", "rss_thp", fmt.Sprintf("RSS per shim, THP %s", res.Config.THP), nil},
		{"runc", "pod1_ms", "CRI pod start, 1 container", nil},
		{"runc", "pod3_ms", "CRI pod start, 3 containers", nil},
		{"runc", "pss_pod3", "PSS of a CRI pod's shim (3 containers)", nil},
	}
	var out []chartItem
	for _, it := range items {
		for _, v := range res.Meta.Versions {
			if res.find(v.Name, it.runtime, it.metric) != nil {
				out = append(out, it)
				break
			}
		}
	}
	return out
}

func (res *results) svg() string {
	items := res.chartItems()
	versions := res.Meta.Versions
	colors := []string{"#3b6ea8", "#e08a2c", "#5a9e4b", "#9b59b6"}
	const (
		width     = 1040
		left      = 330 // end of the label column
		plotW     = 430
		barH      = 13
		barGap    = 3
		rowGap    = 12
		top       = 96
		valueX    = left + plotW + 12
		fontStyle = `font-family="DejaVu Sans, Helvetica, Arial, sans-serif"`
	)
	maxR := 1.5
	for _, it := range items {
		for _, v := range versions {
			if r := res.find(v.Name, it.runtime, it.metric); r != nil && r.Ratio > maxR {
				maxR = r.Ratio
			}
		}
	}
	maxR = math.Min(math.Ceil(maxR*2)/2, 3)
	x := func(ratio float64) float64 { return left + plotW*math.Min(ratio, maxR)/maxR }
	rowH := len(versions)*(barH+barGap) + rowGap
	height := top + len(items)*rowH + 60

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" %s font-size="12">`+"\n", width, height, width, height, fontStyle)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(&b, `<text x="16" y="26" font-size="17" font-weight="bold">Tether vs containerd-shim-runc-v2: ratio Tether / stock shim</text>`+"\n")
	sub := fmt.Sprintf("Medians. Left of 1: Tether smaller or faster (throughput: right of 1 is better). Red tick: the goal of issue 6. Tether %s, %s.",
		res.Meta.Commit+dirtyMark(res.Meta.Dirty), res.Meta.Started.Format("2006-01-02"))
	fmt.Fprintf(&b, `<text x="16" y="46" fill="#444">%s</text>`+"\n", esc(sub))
	// Legend.
	lx := 16
	for i, v := range versions {
		label := fmt.Sprintf("containerd %s vs %s", v.Name, shortStock(v))
		fmt.Fprintf(&b, `<rect x="%d" y="58" width="12" height="12" fill="%s"/><text x="%d" y="69">%s</text>`+"\n", lx, colors[i%len(colors)], lx+16, esc(label))
		lx += 26 + 7*len(label)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="58" x2="%d" y2="71" stroke="#c0392b" stroke-width="2.5"/><text x="%d" y="69">goal</text>`+"\n", lx+4, lx+4, lx+10)
	// Axis and grid.
	plotBottom := top + len(items)*rowH
	for t := 0.0; t <= maxR+1e-9; t += 0.5 {
		xx := x(t)
		stroke, w := "#e3e3e3", 1.0
		if t == 1 {
			stroke, w = "#555", 1.5
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="%.1f"/>`+"\n", xx, top-8, xx, plotBottom, stroke, w)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%.1f</text>`+"\n", xx, plotBottom+16, t)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">Tether / stock</text>`+"\n", x(maxR/2), plotBottom+32)
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555" font-weight="bold">Tether vs stock (median)</text>`+"\n", valueX, top-12)

	y := top
	for i, it := range items {
		if i%2 == 0 {
			fmt.Fprintf(&b, `<rect x="8" y="%d" width="%d" height="%d" fill="#f6f8fa"/>`+"\n", y-4, width-16, rowH)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", left-10, y+barH, esc(it.label))
		for j, v := range versions {
			by := y + j*(barH+barGap)
			r := res.find(v.Name, it.runtime, it.metric)
			color := colors[j%len(colors)]
			switch {
			case r == nil:
				fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#888">not measured</text>`+"\n", left+4, by+barH-2)
			case r.Ratio == 0:
				why := r.TetherFailed
				who := "Tether failed"
				switch {
				case r.TetherFailed != "" && r.StockFailed != "":
					who = "both shims failed"
					if fr := res.find(v.Name, it.runtime, "run_ms"); fr != nil && fr.FloorFailed != "" {
						why = fr.FloorFailed
					}
				case why == "":
					why, who = r.StockFailed, "stock failed"
				}
				fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#c0392b">%s: %s</text>`+"\n", left+4, by+barH-2, who, esc(clip(why, 90)))
			default:
				fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, by, x(r.Ratio)-left, barH, color)
				if r.Ratio > maxR {
					fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#fff" text-anchor="end" font-weight="bold">»</text>`+"\n", x(maxR)-3, by+barH-2)
				}
				fmt.Fprintf(&b, `<text x="%d" y="%d">%.2f  (%s vs %s%s)</text>`+"\n", valueX, by+barH-2, r.Ratio,
					fmtNum(r.Tether.Median, r.prec), fmtNum(r.Stock.Median, r.prec), unitSuffix(r.Unit))
			}
			if it.goal != nil && r != nil && r.Stock != nil {
				if gr, ok := it.goal(r.Stock.Median); ok && gr <= maxR {
					fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c0392b" stroke-width="2.5"/>`+"\n", x(gr), by-1, x(gr), by+barH+1)
				}
			}
		}
		y += rowH
	}
	fmt.Fprintf(&b, `<text x="16" y="%d" fill="#666">Regenerate: make bench (writes bench/results/latest.svg, latest.json, latest.md)</text>`+"\n", height-8)
	b.WriteString("</svg>\n")
	return b.String()
}

func shortStock(v *cdVersion) string {
	if v.Name == "1.6" {
		return "Debian's shim"
	}
	return "its v" + v.Name + " shim"
}

func unitSuffix(u string) string {
	if u == "" {
		return ""
	}
	return " " + u
}

func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func esc(s string) string { return html.EscapeString(s) }
