package runtime

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// recorder runs testdata/record-runtime.sh as the runtime and returns the
// Runtime and a function that reads the argument lines recorded so far.
func recorder(t *testing.T) (*Runtime, func() []string, string) {
	t.Helper()
	script, err := filepath.Abs("testdata/record-runtime.sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	record := filepath.Join(dir, "args")
	t.Setenv("RECORD_RUNTIME_ARGS", record)
	rt := New(Config{Binary: script, Root: "/run/r", Log: filepath.Join(dir, "log.json")}, &countingMonitor{})
	read := func() []string {
		data, err := os.ReadFile(record)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(data)), "\n")
	}
	return rt, read, dir
}

// TestRuntimeArguments pins the command lines Tether gives the runtime for
// pause, resume, update, checkpoint and restore.
func TestRuntimeArguments(t *testing.T) {
	ctx := context.Background()
	rt, read, dir := recorder(t)
	global := "--root /run/r --log " + filepath.Join(dir, "log.json") + " --log-format json"
	if err := rt.Pause(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := rt.Resume(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	limit := int64(32 << 20)
	if err := rt.Update(ctx, "c1", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
		t.Fatal(err)
	}
	full := CheckpointOpts{
		OpenTCP: true, ExternalUnixSockets: true, Terminal: true, FileLocks: true,
		EmptyNamespaces: []string{"network"}, CgroupsMode: "soft",
		ImagePath: "/img", WorkPath: "/work",
	}
	if err := rt.Checkpoint(ctx, "c1", full); err != nil {
		t.Fatal(err)
	}
	if err := rt.Checkpoint(ctx, "c1", CheckpointOpts{Exit: true, ImagePath: "/img"}); err != nil {
		t.Fatal(err)
	}
	var registered int
	pid, err := rt.Restore(ctx, "c1", "/bundle", CheckpointOpts{ImagePath: "/img", WorkPath: "/work"},
		CreateOpts{PidFile: filepath.Join(dir, "create.pid"), NoPivot: true},
		func(pid int) error { registered = pid; return nil })
	if err != nil || pid == 0 || registered != pid {
		t.Fatalf("restore = %d, %v (registered %d)", pid, err, registered)
	}
	want := []string{
		global + " pause c1",
		global + " resume c1",
		global + " update --resources=- c1",
		global + " checkpoint --image-path /img --work-path /work --tcp-established --ext-unix-sk --shell-job --file-locks --manage-cgroups-mode soft --empty-ns network --leave-running c1",
		global + " checkpoint --image-path /img c1",
		global + " restore --image-path /img --work-path /work --detach --pid-file " + filepath.Join(dir, "create.pid") + " --no-pivot --bundle /bundle c1",
	}
	got := read()
	if len(got) != len(want) {
		t.Fatalf("recorded %d calls, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("call %d:\n got  %s\n want %s", i, got[i], want[i])
		}
	}
	stdin, err := os.ReadFile(filepath.Join(dir, "args.stdin"))
	if err != nil || !strings.Contains(string(stdin), `"limit":33554432`) {
		t.Fatalf("update resources on stdin = %q, %v", stdin, err)
	}
}
