// Command suites runs the ecosystem's own test suites against Tether and,
// for comparison, against containerd's stock shim on the same machine:
// containerd's integration/client suite (1.6.20 on Debian's containerd 1.6,
// 2.4.2 on containerd 2.4.2) and cri-tools' critest through the CRI of the
// same containerds. Images come from stand-ins served on loopback (see
// Registry, StandIns). It prints each run's pass/fail/skip counts beside the
// stock shim's, and the tests Tether fails that the stock shim does not; it
// exits non-zero if there is any such test or a run could not happen.
//
// -short runs a representative subset (make test); without it every test
// runs (make test-suites). The builds it needs are made by
// scripts/build-suites.sh into /opt/tether (make deps).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tether-shim/tether/testkit"
)

const (
	tetherRuntime = "io.containerd.tether.v2"
	stockRuntime  = "io.containerd.runc.v2"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		short    = flag.Bool("short", false, "a representative subset of each suite (make test)")
		suites   = flag.String("suites", "client,critest", "suites to run")
		versions = flag.String("versions", "1.6,2.4.2", "containerd versions")
		shims    = flag.String("shims", "tether,stock", "shims to run each suite with")
		deps     = flag.String("deps", "/opt/tether", "where install-deps and build-suites put their builds")
		shimBin  = flag.String("shim", "", "Tether's shim binary (default: bin/containerd-shim-tether-v2 of the repository)")
		work     = flag.String("work", "/tmp/tether-suites", "logs and scratch files")
		table    = flag.String("table", "", "also write the markdown table to this file")
		verbose  = flag.Bool("v", false, "debug log (the stand-in registry's requests)")
		runRe    = flag.String("run", "", "only the client tests matching this regexp (default: all, or the -short subset)")
		focus    = flag.String("focus", "", "only the critest specs matching this regexp (-ginkgo.focus; default: all, or the -short subset)")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := os.MkdirAll(*work, 0o755); err != nil {
		log.Error("work dir", "err", err)
		return 1
	}
	if *shimBin == "" {
		root, err := testkit.RepoRoot()
		if err != nil {
			log.Error("repository", "err", err)
			return 1
		}
		*shimBin = filepath.Join(root, "bin", "containerd-shim-tether-v2")
	}
	if _, err := os.Stat(*shimBin); err != nil {
		log.Error("Tether's shim (make build)", "err", err)
		return 1
	}
	shimDir := filepath.Dir(*shimBin)
	modcache, err := goModCache(ctx)
	if err != nil {
		log.Error("go env GOMODCACHE", "err", err)
		return 1
	}

	store := NewStore()
	digests, err := StandIns(store, *work)
	if err != nil {
		log.Error("stand-in images", "err", err)
		return 1
	}
	reg, err := StartRegistry(ctx, log, store, *work)
	if err != nil {
		log.Error("stand-in registry", "err", err)
		return 1
	}
	defer reg.Close()

	type row struct {
		suite, version string
		tether, stock  *Counts
		errs           []string
		// flaky are tests Tether failed and the stock shim did not that
		// passed when run again alone, with Tether (in one of reruns runs).
		flaky []string
	}
	var rows []*row
	want := func(list, item string) bool {
		for _, s := range strings.Split(list, ",") {
			if strings.TrimSpace(s) == item {
				return true
			}
		}
		return false
	}
	runtimes := []struct{ name, runtime string }{{"tether", tetherRuntime}, {"stock", stockRuntime}}
	failed := false
	for _, v := range allVersions(*deps, modcache) {
		if !want(*versions, v.client.Name) {
			continue
		}
		if want(*suites, "client") {
			r := &row{suite: "integration/client " + v.client.Release, version: v.client.Name}
			rows = append(rows, r)
			for _, rt := range runtimes {
				if !want(*shims, rt.name) {
					continue
				}
				timeout := 40 * time.Minute
				if *short {
					timeout = 8 * time.Minute
				}
				re := *runRe
				if re == "" && *short {
					re = shortClientTests
				}
				c, err := runClient(ctx, log, v.client, rt.runtime, shimDir, reg, digests["containerd/busybox"], *work, re, timeout, "")
				if err != nil {
					r.errs = append(r.errs, rt.name+": "+err.Error())
					failed = true
					continue
				}
				if rt.name == "tether" {
					r.tether = &c
				} else {
					r.stock = &c
				}
			}
			if r.tether != nil && r.stock != nil {
				if d := diff(*r.tether, *r.stock); len(d) > 0 {
					r.flaky = rerunAlone(d, func(tests []string, suffix string) (Counts, error) {
						quoted := make([]string, len(tests))
						for i, t := range tests {
							quoted[i] = regexp.QuoteMeta(t)
						}
						return runClient(ctx, log, v.client, tetherRuntime, shimDir, reg, digests["containerd/busybox"], *work, "^("+strings.Join(quoted, "|")+")$", 10*time.Minute, suffix)
					}, true)
				}
			}
		}
		if want(*suites, "critest") {
			r := &row{suite: "critest " + criToolsVersion, version: v.client.Name}
			rows = append(rows, r)
			for _, rt := range runtimes {
				if !want(*shims, rt.name) {
					continue
				}
				c, err := runCritest(ctx, log, v, rt.runtime, *shimBin, *deps, reg, *work, critestFocus(*short, *focus), critestTimeout(*short), "")
				if err != nil {
					r.errs = append(r.errs, rt.name+": "+err.Error())
					failed = true
					continue
				}
				if rt.name == "tether" {
					r.tether = &c
				} else {
					r.stock = &c
				}
			}
			if r.tether != nil && r.stock != nil {
				if d := diff(*r.tether, *r.stock); len(d) > 0 {
					r.flaky = rerunAlone(d, func(specs []string, suffix string) (Counts, error) {
						quoted := make([]string, len(specs))
						for i, t := range specs {
							quoted[i] = regexp.QuoteMeta(specText(t))
						}
						return runCritest(ctx, log, v, tetherRuntime, *shimBin, *deps, reg, *work, strings.Join(quoted, "|"), 20*time.Minute, suffix)
					}, false)
				}
			}
		}
	}

	// The table, then what Tether fails that stock does not.
	var b strings.Builder
	mode := "full"
	if *short {
		mode = "short (make test)"
	}
	fmt.Fprintf(&b, "| suite (%s) | containerd | Tether: passed / failed / skipped | stock shim: passed / failed / skipped |\n|---|---|---|---|\n", mode)
	cell := func(c *Counts) string {
		if c == nil {
			return "not run"
		}
		s := fmt.Sprintf("%d / %d / %d", len(c.Pass), len(c.Fail), len(c.Skip))
		if c.Aborted != "" {
			s += " (aborted)"
		}
		return s
	}
	for _, r := range rows {
		t := cell(r.tether)
		if len(r.flaky) > 0 {
			t += fmt.Sprintf(" (%d passed when run again)", len(r.flaky))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.suite, r.version, t, cell(r.stock))
	}
	fmt.Print("\n" + b.String() + "\n")
	for _, r := range rows {
		for _, e := range r.errs {
			fmt.Printf("%s on %s could not run: %s\n", r.suite, r.version, e)
		}
		for _, c := range []*Counts{r.tether, r.stock} {
			if c != nil && c.Aborted != "" {
				fmt.Printf("%s on %s aborted: %s\n", r.suite, r.version, c.Aborted)
				failed = true
			}
		}
		if r.tether == nil || r.stock == nil {
			continue
		}
		for _, t := range diff(*r.tether, *r.stock) {
			if slices.Contains(r.flaky, t) {
				fmt.Printf("flaky with Tether (failed, then passed when run again): %s on %s: %s\n    %s\n", r.suite, r.version, t, strings.ReplaceAll(r.tether.Errors[t], "\n", "\n    "))
				continue
			}
			failed = true
			fmt.Printf("FAIL with Tether only: %s on %s: %s\n    %s\n", r.suite, r.version, t, strings.ReplaceAll(r.tether.Errors[t], "\n", "\n    "))
		}
		for _, t := range r.stock.Fail {
			fmt.Printf("fails with the stock shim too: %s on %s: %s\n", r.suite, r.version, t)
		}
	}
	if *table != "" {
		if err := os.WriteFile(*table, []byte(b.String()), 0o644); err != nil {
			log.Error("table", "err", err)
			return 1
		}
	}
	if failed {
		fmt.Println("suites: FAIL (Tether fails a test the stock shim passes, or a run did not complete)")
		return 1
	}
	fmt.Println("suites: ok (Tether fails no test the stock shim passes)")
	return 0
}

// version is one containerd release with its suites.
type version struct {
	client clientVersion
}

func allVersions(deps, modcache string) []version {
	return []version{
		{client: clientVersion{
			Name: "1.6", Release: "1.6.20", Major: 1, BinDir: "/usr/bin", StockShim: "/usr/bin/containerd-shim-runc-v2",
			TestBinary: filepath.Join(deps, "suites", "bin", "client-1.6.20.test"),
			SrcDir:     filepath.Join(deps, "suites", "src", "containerd-1.6.20", "integration", "client"),
		}},
		{client: clientVersion{
			Name: "2.4.2", Release: "2.4.2", Major: 2, BinDir: filepath.Join(deps, "containerd-2.4.2", "bin"),
			StockShim:  filepath.Join(deps, "containerd-2.4.2", "bin", "containerd-shim-runc-v2"),
			TestBinary: filepath.Join(deps, "suites", "bin", "client-2.4.2.test"),
			SrcDir:     filepath.Join(modcache, "github.com", "containerd", "containerd", "v2@v2.4.2", "integration", "client"),
			ToolsDir:   filepath.Join(deps, "suites", "bin", "2.4.2"),
		}},
	}
}

func goModCache(ctx context.Context) (string, error) {
	r := testkit.Run(ctx, nil, "go", "env", "GOMODCACHE")
	if r.Code != 0 {
		return "", fmt.Errorf("go env GOMODCACHE: exit %d: %s", r.Code, r.Stderr)
	}
	return strings.TrimSpace(r.Stdout), nil
}

// critestFocus is the -ginkgo.focus of a critest run: focus if given, else
// shortCritest, or every spec.
func critestFocus(short bool, focus string) string {
	if focus != "" {
		return focus
	}
	if short {
		return shortCritest
	}
	return ""
}

func critestTimeout(short bool) time.Duration {
	if short {
		return 10 * time.Minute
	}
	return 60 * time.Minute
}

// specText is a failed spec's name as ginkgo's focus matches it: without
// the node markers ([It], [BeforeEach], ...) of the failure summary.
func specText(name string) string {
	return nodeMarker.ReplaceAllString(name, "")
}

var nodeMarker = regexp.MustCompile(`\[(It|BeforeEach|AfterEach|JustBeforeEach|JustAfterEach|BeforeAll|AfterAll|DeferCleanup)\] `)

// reruns is how many times a test Tether alone failed is run again, alone,
// before it counts as failed: the suites' races on a loaded 2-core machine
// (test/suites/README.md) lose now with one shim, now with the other, and
// one lost race in a run is not a difference between the shims.
const reruns = 3

// rerunAlone runs the tests of failed again, up to reruns times, each time
// those that have not passed yet, and returns those that passed in one of
// the runs. run runs the given tests alone; its log's name gets suffix.
func rerunAlone(failed []string, run func(tests []string, suffix string) (Counts, error), byName bool) []string {
	var passed []string
	left := slices.Clone(failed)
	for i := 1; i <= reruns && len(left) > 0; i++ {
		c, err := run(left, fmt.Sprintf("-rerun%d", i))
		if err != nil {
			continue
		}
		now := passedOnRerun(left, c, byName)
		passed = append(passed, now...)
		left = slices.DeleteFunc(left, func(t string) bool { return slices.Contains(now, t) })
	}
	return passed
}

// passedOnRerun is the tests of failed that passed in rerun (a run of just
// those), provided rerun ran to its end. A go test must be listed as
// passed; critest's summary names only failures, so there every spec not
// failed counts only if as many specs passed.
func passedOnRerun(failed []string, rerun Counts, byName bool) []string {
	if rerun.Aborted != "" {
		return nil
	}
	var out []string
	for _, t := range failed {
		if byName && slices.Contains(rerun.Pass, t) || !byName && !slices.Contains(rerun.Fail, t) {
			out = append(out, t)
		}
	}
	if !byName && len(rerun.Pass) < len(out) {
		return nil
	}
	return out
}
