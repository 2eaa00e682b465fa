package testutil

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tether-shim/tether/internal/bundle"
)

// BusyboxBundle writes an OCI bundle into the directory dir (created if
// missing): a rootfs with /bin/busybox and its applets sh, sleep and true,
// and the config.json of `<runc> spec` without a terminal and running args.
func BusyboxBundle(t testing.TB, dir, runc string, args ...string) {
	t.Helper()
	b := bundle.New(dir)
	bin := filepath.Join(b.Rootfs(), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(bin, "busybox"), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "sleep", "true"} {
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(runc, "spec", "--bundle", dir).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	path := b.Config()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	process, ok := spec["process"].(map[string]any)
	if !ok {
		t.Fatalf("runc spec wrote no process: %s", data)
	}
	process["terminal"] = false
	process["args"] = args
	if data, err = json.MarshalIndent(spec, "", "\t"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
