package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// config is what the environment may change; see README.md.
type config struct {
	Versions      []string      `json:"versions"`       // BENCH_VERSIONS
	Runtimes      []string      `json:"runtimes"`       // BENCH_RUNTIMES
	MemRuntimes   []string      `json:"mem_runtimes"`   // BENCH_MEM_RUNTIMES
	Reps          int           `json:"reps"`           // BENCH_REPS: interleaved rounds of the latency, CPU and throughput figures
	Iters         int           `json:"iters"`          // BENCH_ITERS: sequential ctr run --rm / exec per side and round
	MemReps       int           `json:"mem_reps"`       // BENCH_MEM_REPS: interleaved rounds of the memory figures
	Shims         int           `json:"shims"`          // BENCH_SHIMS: single-container shims for the per-shim figures
	Groups        []int         `json:"groups"`         // BENCH_GROUPS: containers in the one group shim
	TputN         int           `json:"throughput_n"`   // BENCH_THROUGHPUT_N
	Parallel      int           `json:"parallel"`       // BENCH_PARALLEL
	Settle        time.Duration `json:"settle_ns"`      // BENCH_SETTLE: idle time before a memory sample
	Steady        time.Duration `json:"steady_ns"`      // BENCH_STEADY: idle time of the steady-state sample of the single shims (first round; 0: none)
	THP           string        `json:"thp,omitempty"`  // BENCH_THP: a transparent huge page setting ("always", "madvise", "never") under which the single shims are sampled again; "" or "off": none
	HostTHP       string        `json:"host_thp"`       // the host's setting, under which every other figure is taken
	Image         bool          `json:"image"`          // BENCH_IMAGE=1: run the imported OCI image instead of --rootfs
	PodVersions   []string      `json:"pod_versions"`   // BENCH_PODS_VERSIONS: containerd versions (2.x) of the CRI pod figures
	PodIters      int           `json:"pod_iters"`      // BENCH_POD_ITERS: pods of 1 and of 3 containers per side and round
	Timeout       time.Duration `json:"timeout_ns"`     // BENCH_TIMEOUT: the whole run
	WaitE2E       time.Duration `json:"wait_e2e_ns"`    // BENCH_WAIT_E2E: how long to wait for a running e2e suite
	Deps          string        `json:"deps"`           // TETHER_DEPS
	ShimBin       string        `json:"shim_bin"`       // TETHER_SHIM_BIN: a prebuilt shim instead of building one
	Out           string        `json:"-"`              // BENCH_OUT: results directory
	TetherRuntime string        `json:"tether_runtime"` // the runtime name of Tether
}

func loadConfig() (config, error) {
	c := config{
		Versions:      list("BENCH_VERSIONS", "1.6,2.4.2"),
		Runtimes:      list("BENCH_RUNTIMES", "runc,crun"),
		MemRuntimes:   list("BENCH_MEM_RUNTIMES", "runc"),
		Deps:          env("TETHER_DEPS", "/opt/tether"),
		ShimBin:       os.Getenv("TETHER_SHIM_BIN"),
		Out:           env("BENCH_OUT", "results"),
		Image:         os.Getenv("BENCH_IMAGE") == "1",
		PodVersions:   list("BENCH_PODS_VERSIONS", "2.4.2"),
		THP:           env("BENCH_THP", "always"),
		TetherRuntime: "io.containerd.tether.v2",
	}
	var err error
	ints := []struct {
		p    *int
		name string
		def  int
		min  int
	}{
		{&c.Reps, "BENCH_REPS", 5, 1},
		{&c.Iters, "BENCH_ITERS", 10, 1},
		{&c.MemReps, "BENCH_MEM_REPS", 2, 1},
		{&c.Shims, "BENCH_SHIMS", 20, 1},
		{&c.TputN, "BENCH_THROUGHPUT_N", 50, 1},
		{&c.Parallel, "BENCH_PARALLEL", 8, 1},
		{&c.PodIters, "BENCH_POD_ITERS", 3, 1},
	}
	for _, i := range ints {
		if *i.p, err = intEnv(i.name, i.def); err != nil {
			return c, err
		}
		if *i.p < i.min {
			return c, fmt.Errorf("%s=%d: at least %d", i.name, *i.p, i.min)
		}
	}
	for _, s := range list("BENCH_GROUPS", "1,5,20") {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || (len(c.Groups) > 0 && n <= c.Groups[len(c.Groups)-1]) {
			return c, fmt.Errorf("BENCH_GROUPS: want increasing positive counts, got %q", os.Getenv("BENCH_GROUPS"))
		}
		c.Groups = append(c.Groups, n)
	}
	durs := []struct {
		p    *time.Duration
		name string
		def  string
	}{
		{&c.Settle, "BENCH_SETTLE", "2s"},
		{&c.Steady, "BENCH_STEADY", "130s"},
		{&c.Timeout, "BENCH_TIMEOUT", "40m"},
		{&c.WaitE2E, "BENCH_WAIT_E2E", "30m"},
	}
	for _, d := range durs {
		if *d.p, err = time.ParseDuration(env(d.name, d.def)); err != nil {
			return c, fmt.Errorf("%s: %w", d.name, err)
		}
	}
	for _, r := range append(append([]string{}, c.Runtimes...), c.MemRuntimes...) {
		if r != "runc" && r != "crun" {
			return c, fmt.Errorf("runtime %q: only runc and crun are known", r)
		}
	}
	for _, v := range c.PodVersions {
		if !strings.HasPrefix(v, "2.") {
			return c, fmt.Errorf("BENCH_PODS_VERSIONS: %q: pods are measured on containerd 2.x only", v)
		}
	}
	switch c.THP {
	case "", "off", "always", "madvise", "never":
	default:
		return c, fmt.Errorf("BENCH_THP=%q: want always, madvise, never or off", c.THP)
	}
	if c.HostTHP, err = readTHP(); err != nil {
		return c, err
	}
	return c, nil
}

func env(k, def string) string {
	if v := strings.TrimSpace(os.Getenv(k)); v != "" {
		return v
	}
	return def
}

func list(k, def string) []string {
	var out []string
	for _, s := range strings.Split(env(k, def), ",") {
		if s = strings.TrimSpace(s); s != "" && s != "none" {
			out = append(out, s)
		}
	}
	return out
}

func intEnv(k string, def int) (int, error) {
	s := os.Getenv(k)
	if strings.TrimSpace(s) == "" {
		return def, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", k, err)
	}
	return n, nil
}
