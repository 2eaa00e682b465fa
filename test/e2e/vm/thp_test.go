//go:build tethervm

package vm

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/tether-shim/tether/testkit"
)

const thpFile = "/sys/kernel/mm/transparent_hugepage/enabled"

// TestShimMemoryTHP measures 10 idle Tether shims (one container each,
// cgroupfs driver) with transparent_hugepage "always" and then "madvise":
// RSS, PSS, anonymous and AnonHugePages from smaps_rollup, after 10 s idle.
// It prints the figures (a measurement, not a limit) and asserts only that
// each mode took effect and that there are 10 distinct shims with memory.
func TestShimMemoryTHP(t *testing.T) {
	v := versions[len(versions)-1]
	if name := os.Getenv(envTHPVer); name != "" {
		var err error
		if v, err = lookupVersion(name); err != nil {
			t.Fatal(err)
		}
	}
	orig, err := os.ReadFile(thpFile)
	if err != nil {
		t.Fatalf("transparent hugepages: %v", err)
	}
	t.Cleanup(func() {
		// Restore the bracketed mode.
		s := string(orig)
		if i, j := strings.Index(s, "["), strings.Index(s, "]"); i >= 0 && j > i {
			_ = os.WriteFile(thpFile, []byte(s[i+1:j]), 0o644)
		}
	})
	var report []string
	for _, mode := range []string{"always", "madvise"} {
		t.Run(mode, func(t *testing.T) {
			if err := os.WriteFile(thpFile, []byte(mode), 0o644); err != nil {
				t.Fatalf("writing %s to %s: %v", mode, thpFile, err)
			}
			got, _ := readTrim(thpFile)
			if !strings.Contains(got, "["+mode+"]") {
				t.Fatalf("%s is %q after writing %s", thpFile, got, mode)
			}
			d := startDaemon(t, v, "thp-"+mode)
			c := d.client(t)
			ns := "thp-" + mode
			cb := &combo{d: d, c: c, runtime: tetherRuntime, driver: "cgroupfs", ns: ns,
				ctx: namespaces.WithNamespace(context.Background(), ns)}
			t.Cleanup(func() { cb.cleanup(t) })
			const n = 10
			for i := 0; i < n; i++ {
				_, task := cb.create(t, fmt.Sprintf("s%d", i), nil, "/bin/sleep", "1000000")
				ctx, cancel := opCtx(cb.ctx)
				err := task.Start(ctx)
				cancel()
				if err != nil {
					t.Fatalf("Start s%d: %v", i, err)
				}
			}
			// Let the shims go idle (they trim one second after the last request).
			time.Sleep(10 * time.Second)
			shims := testkit.ShimProcesses(d.Sock)
			if len(shims) != n {
				t.Fatalf("%d shims of %s, want %d", len(shims), d.Sock, n)
			}
			var sum rollup
			for _, p := range shims {
				r, err := readRollup(p.Pid)
				if err != nil {
					t.Fatal(err)
				}
				if r["Rss"] == 0 || r["Pss"] == 0 {
					t.Errorf("shim %d: smaps_rollup %v has no Rss or Pss", p.Pid, r)
				}
				sum.add(r)
			}
			line := fmt.Sprintf("THP %-7s containerd %s, %d idle Tether shims: RSS %.2f MiB/shim (total %.1f), PSS %.2f MiB/shim (total %.1f), anonymous %.2f MiB/shim, AnonHugePages %.2f MiB total",
				mode, v.name, n, sum.kb["Rss"]/1024/n, sum.kb["Rss"]/1024, sum.kb["Pss"]/1024/n, sum.kb["Pss"]/1024,
				sum.kb["Anonymous"]/1024/n, sum.kb["AnonHugePages"]/1024)
			t.Log(line)
			report = append(report, line)
			ctx, cancel := context.WithTimeout(cb.ctx, 5*time.Minute)
			defer cancel()
			conts, _ := c.Containers(ctx)
			for _, ct := range conts {
				if task, err := ct.Task(ctx, nil); err == nil {
					_, _ = task.Delete(ctx, containerd.WithProcessKill)
				}
			}
		})
	}
	for _, l := range report {
		fmt.Println("vm-thp:", l)
	}
}

// rollup sums smaps_rollup fields in kB.
type rollup struct{ kb map[string]float64 }

func (r *rollup) add(m map[string]float64) {
	if r.kb == nil {
		r.kb = map[string]float64{}
	}
	for k, v := range m {
		r.kb[k] += v
	}
}

// readRollup reads /proc/<pid>/smaps_rollup: field name → kB.
func readRollup(pid int) (map[string]float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 3 && fields[2] == "kB" {
			n, err := strconv.ParseFloat(fields[1], 64)
			if err == nil {
				out[strings.TrimSuffix(fields[0], ":")] = n
			}
		}
	}
	return out, sc.Err()
}
