package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// The memory floor (bench/floor, a module of its own): a Go ttrpc server
// of the task API that links every dependency Tether's server links and
// runs no container. Its figures fill the "floor" column of the single-shim
// memory rows: what any Go shim built on these dependencies holds.

// floorComm is the floor binary's name, and so its comm.
const floorComm = "tether-floor"

// buildFloor builds bench/floor as Tether is built (static, not PIE).
func (b *bench) buildFloor(root string) error {
	out := filepath.Join(b.tmp, "build", floorComm)
	logf("building the memory floor (bench/floor)")
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Minute)
	defer cancel()
	// Not PIE whatever GOFLAGS says: the floor drops its read-only pages,
	// which is safe only in a fixed-address binary.
	cmd := exec.CommandContext(ctx, "go", "build", "-buildmode=exe", "-o", out, ".")
	cmd.Dir = filepath.Join(root, "bench", "floor")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build bench/floor: %w", err)
	}
	b.floorBin = out
	return nil
}

// memFloor starts Shims floor servers, makes each answer three Connect and
// three State requests, samples them after Settle like shim servers, and
// records the samples as the floor of the single-shim figures.
func (b *bench) memFloor(v *cdVersion, rt string) {
	if b.floorBin == "" {
		return
	}
	fail := func(msg string) { b.failMem(v, rt, "single", "floor", msg) }
	dir, err := os.MkdirTemp(b.tmp, "floor-")
	if err != nil {
		fail(err.Error())
		return
	}
	defer os.RemoveAll(dir)
	var servers []*exec.Cmd
	defer func() {
		for _, c := range servers {
			_ = c.Process.Signal(syscall.SIGKILL)
			_ = c.Wait()
		}
	}()
	for i := range b.cfg.Shims {
		sock := filepath.Join(dir, fmt.Sprintf("%d.sock", i))
		c := exec.Command(b.floorBin, "serve", sock)
		c.Env = []string{"GOMAXPROCS=1"} // as `start` runs Tether's server
		if err := c.Start(); err != nil {
			fail(fmt.Sprintf("floor serve: %v", err))
			return
		}
		servers = append(servers, c)
		if err := b.callFloor(sock); err != nil {
			fail(err.Error())
			return
		}
	}
	if !b.sleep(b.cfg.Settle) {
		return
	}
	for _, c := range servers {
		m, err := sampleMemory(c.Process.Pid)
		if err != nil {
			fail(err.Error())
			return
		}
		for _, f := range memFields {
			b.rec.add(key{v.Name, rt, f.name + "_single"}, "floor", f.get(m))
		}
	}
}

// callFloor runs `floor call`, retrying while the server is not listening yet.
func (b *bench) callFloor(sock string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		out, err := exec.CommandContext(ctx, b.floorBin, "call", sock).CombinedOutput()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || b.ctx.Err() != nil {
			return fmt.Errorf("floor call: %v: %s", err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
