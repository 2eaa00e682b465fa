package e2e

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
)

// killContainerd SIGKILLs containerd, waits for it to be gone and starts it
// again on the same root and state.
func (d *daemon) killContainerd() error {
	pid := d.Pid()
	if pid == 0 {
		return fmt.Errorf("containerd %s is not running", d.Name)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 containerd %d: %w", pid, err)
	}
	for deadline := time.Now().Add(10 * time.Second); d.Running(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd %d still runs 10 s after SIGKILL", pid)
		}
	}
	_ = d.stop() // closes the log; the process is gone
	if err := d.start(false); err != nil {
		d.broken = err
		return fmt.Errorf("restart containerd %s: %w", d.Name, err)
	}
	return nil
}

// TestStressContainerdKilled SIGKILLs containerd 2 x TETHER_STRESS_SCALE
// times (10 at scale 10) at random moments while 24 (20 x scale at scale
// above 1) containers start and exit by themselves with known codes (i%200
// after up to 2 s), and restarts it each time. A start that fails because
// containerd died is retried under a new id; the attempt is kept and
// checked too. Afterwards every task that was started must be STOPPED
// with its exit code, reported by both Status and Delete (none lost, none
// stuck), and once all are deleted nothing may be left behind.
func TestStressContainerdKilled(t *testing.T) {
	scale := stressScale(t)
	m, k := 24, 2
	if scale > 1 {
		m, k = 20*scale, scale
	}
	stressEach(t, "cdkill", func(t *testing.T, d *daemon, ns string) {
		before := socketDirEntries()
		c := d.goClient(t, ns)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
		var rngMu sync.Mutex
		randDur := func(max time.Duration) time.Duration {
			rngMu.Lock()
			defer rngMu.Unlock()
			return time.Duration(rng.Int64N(int64(max)))
		}

		var (
			mu       sync.Mutex
			started  = map[string]int{} // id -> exit code, Start succeeded
			attempts = map[string]int{} // id -> exit code, every attempt
			startErr []string
			wg       sync.WaitGroup
			done     = make(chan struct{})
		)
		// startOne creates and starts container id; an error leaves it to
		// the final check.
		startOne := func(id string, code int, sleep time.Duration) error {
			ctx, cancel := clientCtx(ns)
			defer cancel()
			cont, err := c.NewContainer(ctx, id, client.WithNewSpec(oci.WithRootFSPath(rootfsDir),
				oci.WithProcessArgs("/bin/sh", "-c", fmt.Sprintf("sleep %.3f; exit %d", sleep.Seconds(), code))))
			if err != nil {
				return fmt.Errorf("new container: %w", err)
			}
			task, err := cont.NewTask(ctx, cio.NullIO)
			if err != nil {
				return fmt.Errorf("new task: %w", err)
			}
			if err := task.Start(ctx); err != nil {
				return fmt.Errorf("start: %w", err)
			}
			return nil
		}
		// awaitContainerd waits until containerd answers again.
		awaitContainerd := func() {
			for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				ctx, cancel := clientCtx(ns)
				_, err := c.Version(ctx)
				cancel()
				if err == nil {
					return
				}
			}
		}
		startWorkers(&wg, 4, 0, m, func(i int) {
			code := i % 200
			for a := 0; ; a++ {
				id := fmt.Sprintf("k%d-%d", i, a)
				mu.Lock()
				attempts[id] = code
				mu.Unlock()
				err := startOne(id, code, randDur(2*time.Second))
				mu.Lock()
				if err == nil {
					started[id] = code
				} else {
					startErr = append(startErr, id+": "+err.Error())
				}
				mu.Unlock()
				if err == nil || a >= 20 {
					break
				}
				awaitContainerd()
			}
			// Paced so that the starts span the kills (about 2 s each,
			// with the restart).
			time.Sleep(randDur(time.Duration(k) * 4 * 4 * time.Second / time.Duration(m)))
		})
		var killErr error
		kills := 0
		go func() {
			defer close(done)
			for range k {
				time.Sleep(300*time.Millisecond + randDur(1200*time.Millisecond))
				if err := d.killContainerd(); err != nil {
					killErr = err
					return
				}
				kills++
			}
		}()
		wg.Wait()
		<-done
		if killErr != nil {
			t.Fatal(killErr)
		}
		t.Logf("%d containers started in %d attempts; %d failed starts (containerd killed): %s", len(started), len(attempts), len(startErr), strings.Join(startErr, "; "))

		// Every attempt: the ones that started must stop with their code.
		var lost, wrong, stuck, unstarted []string
		for id, code := range attempts {
			_, wasStarted := started[id]
			ctx, cancel := clientCtx(ns)
			cont, err := c.LoadContainer(ctx, id)
			if err != nil {
				cancel()
				if wasStarted || !errdefs.IsNotFound(err) {
					lost = append(lost, fmt.Sprintf("%s: load container: %v", id, err))
				}
				continue
			}
			task, err := cont.Task(ctx, nil)
			if err != nil {
				if wasStarted || !errdefs.IsNotFound(err) {
					lost = append(lost, fmt.Sprintf("%s: task: %v", id, err))
				}
				_ = cont.Delete(ctx)
				cancel()
				continue
			}
			var st client.Status
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				st, err = task.Status(ctx)
				if err != nil || st.Status == client.Stopped || st.Status == client.Created || time.Now().After(deadline) {
					break
				}
			}
			switch {
			case err != nil:
				stuck = append(stuck, fmt.Sprintf("%s: status: %v", id, err))
			case st.Status == client.Created && !wasStarted:
				unstarted = append(unstarted, id)
			case st.Status != client.Stopped:
				stuck = append(stuck, fmt.Sprintf("%s: %s after 30 s", id, st.Status))
			case st.ExitStatus != uint32(code):
				wrong = append(wrong, fmt.Sprintf("%s: status says exit %d, want %d", id, st.ExitStatus, code))
			}
			es, err := task.Delete(ctx, client.WithProcessKill)
			switch {
			case err != nil:
				stuck = append(stuck, fmt.Sprintf("%s: delete: %v", id, err))
			case st.Status == client.Stopped && es.ExitCode() != uint32(code):
				wrong = append(wrong, fmt.Sprintf("%s: delete says exit %d, want %d", id, es.ExitCode(), code))
			}
			if err := cont.Delete(ctx); err != nil {
				stuck = append(stuck, fmt.Sprintf("%s: delete container: %v", id, err))
			}
			cancel()
		}
		if out := d.mustCtr(t, ns, "container", "ls", "-q"); strings.TrimSpace(out) != "" {
			t.Errorf("containers left: %q", out)
		}
		l := d.waitNoLeftovers(t, ns, before, 30*time.Second)
		figure(t, "cdkill", d, "containers=%d kills=%d attempts=%d started=%d never_started=%d exits_ok=%d exits_lost=%d wrong_code=%d stuck=%d %s",
			m, kills, len(attempts), len(started), len(unstarted), len(started)-countStarted(started, lost, wrong, stuck), len(lost), len(wrong), len(stuck), l.figures())
		for _, what := range [][]string{lost, wrong, stuck} {
			for _, s := range what {
				t.Error(s)
			}
		}
		if len(started) < m {
			t.Errorf("only %d of %d containers started", len(started), m)
		}
	})
}

// countStarted counts the started ids that appear in any of the problem
// lists (each entry begins with "<id>:").
func countStarted(started map[string]int, lists ...[]string) int {
	bad := map[string]bool{}
	for _, l := range lists {
		for _, s := range l {
			id, _, _ := strings.Cut(s, ":")
			if _, ok := started[id]; ok {
				bad[id] = true
			}
		}
	}
	return len(bad)
}
