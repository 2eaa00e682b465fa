package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Counts are the results of one suite run, by top-level test (or spec).
type Counts struct {
	Pass, Fail, Skip []string
	Errors           map[string]string // failed test -> first lines of its failure
	Aborted          string            // why the run ended before its tests did, if it did
}

// String is "P passed, F failed, S skipped" plus the abort, if any.
func (c Counts) String() string {
	s := fmt.Sprintf("%d passed, %d failed, %d skipped", len(c.Pass), len(c.Fail), len(c.Skip))
	if c.Aborted != "" {
		s += " (aborted: " + c.Aborted + ")"
	}
	return s
}

var (
	goResult = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(`)
	goRun    = regexp.MustCompile(`^=== (RUN|CONT|PAUSE|NAME)\s+(\S+)`)
)

// parseGoTest reads `go test -v` output and counts the top-level tests (a
// subtest's result is indented). The lines a failed test printed, up to 12,
// are its error.
func parseGoTest(r io.Reader) Counts {
	c := Counts{Errors: map[string]string{}}
	lines := map[string][]string{}
	cur := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := goRun.FindStringSubmatch(line); m != nil {
			cur = m[2]
			if i := strings.Index(cur, "/"); i > 0 {
				cur = cur[:i]
			}
			continue
		}
		if m := goResult.FindStringSubmatch(line); m != nil {
			switch m[1] {
			case "PASS":
				c.Pass = append(c.Pass, m[2])
			case "SKIP":
				c.Skip = append(c.Skip, m[2])
			case "FAIL":
				c.Fail = append(c.Fail, m[2])
				c.Errors[m[2]] = strings.Join(lines[m[2]], "\n")
			}
			continue
		}
		if strings.HasPrefix(line, "panic: ") && c.Aborted == "" {
			c.Aborted = line + " (in " + cur + ")"
			c.Fail = append(c.Fail, cur)
			c.Errors[cur] = line
		}
		if cur != "" && strings.Contains(line, ".go:") && len(lines[cur]) < 12 && !strings.Contains(line, "level=") {
			lines[cur] = append(lines[cur], strings.TrimSpace(line))
		}
	}
	return c
}

var (
	ginkgoSummary = regexp.MustCompile(`(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)
	ginkgoFail    = regexp.MustCompile(`^\s*\[FAIL\] (.*)$`)
)

// parseGinkgo reads critest's output: the summary line gives the counts, the
// [FAIL] lines of the summary the failed specs. Pass and Skip hold
// placeholders (ginkgo does not list them there).
func parseGinkgo(r io.Reader) Counts {
	c := Counts{Errors: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var fails []string
	seen := map[string]bool{}
	found := false
	for sc.Scan() {
		line := sc.Text()
		if m := ginkgoFail.FindStringSubmatch(line); m != nil {
			name := strings.TrimSpace(m[1])
			if !seen[name] {
				seen[name] = true
				fails = append(fails, name)
			}
		}
		if m := ginkgoSummary.FindStringSubmatch(line); m != nil {
			found = true
			var p, f, s int
			fmt.Sscan(m[1], &p)
			fmt.Sscan(m[2], &f)
			fmt.Sscan(m[4], &s)
			c.Pass, c.Fail, c.Skip = make([]string, p), make([]string, 0, f), make([]string, s)
			for i := range c.Pass {
				c.Pass[i] = fmt.Sprintf("spec %d", i)
			}
			for i := range c.Skip {
				c.Skip[i] = fmt.Sprintf("skipped %d", i)
			}
			for i := 0; i < f; i++ {
				name := fmt.Sprintf("failed spec %d", i)
				if i < len(fails) {
					name = fails[i]
				}
				c.Fail = append(c.Fail, name)
			}
		}
	}
	if !found {
		c.Aborted = "no ginkgo summary line"
	}
	return c
}

// runLogged runs cmd with its output in logPath (and nothing else), killing its
// process group when ctx ends, and returns the exit error.
func runLogged(ctx context.Context, cmd *exec.Cmd, logPath string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	err = cmd.Wait()
	close(done)
	wg.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", cmd.Path, ctx.Err())
	}
	return err
}

// diff is the tests tether failed that stock did not (passed or skipped there).
func diff(tether, stock Counts) []string {
	bad := map[string]bool{}
	for _, f := range stock.Fail {
		bad[f] = true
	}
	var out []string
	for _, f := range tether.Fail {
		if !bad[f] {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// since formats a duration to the second.
func since(t time.Time) string { return time.Since(t).Round(time.Second).String() }
