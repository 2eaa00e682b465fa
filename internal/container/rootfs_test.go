package container

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/testutil"
)

func TestParseMountOptions(t *testing.T) {
	tests := []struct {
		name      string
		options   []string
		wantFlags uintptr
		wantData  string
	}{
		{"none", nil, 0, ""},
		{"defaults", []string{"defaults"}, 0, ""},
		{
			"overlay",
			[]string{"index=off", "lowerdir=/l1:/l2", "upperdir=/u", "workdir=/w"},
			0, "index=off,lowerdir=/l1:/l2,upperdir=/u,workdir=/w",
		},
		{
			"overlay read-only",
			[]string{"ro", "lowerdir=/l1:/l2"},
			unix.MS_RDONLY, "lowerdir=/l1:/l2",
		},
		{"ro", []string{"ro"}, unix.MS_RDONLY, ""},
		{"rw", []string{"rw"}, 0, ""},
		{"ro then rw", []string{"ro", "rw"}, 0, ""},
		{"rw then ro", []string{"rw", "ro"}, unix.MS_RDONLY, ""},
		{"ro rw ro", []string{"ro", "rw", "ro"}, unix.MS_RDONLY, ""},
		{"bind", []string{"bind"}, unix.MS_BIND, ""},
		{"rbind", []string{"rbind"}, unix.MS_BIND | unix.MS_REC, ""},
		{"rbind ro", []string{"rbind", "ro"}, unix.MS_BIND | unix.MS_REC | unix.MS_RDONLY, ""},
		{
			"nosuid nodev noexec",
			[]string{"nosuid", "nodev", "noexec"},
			unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "",
		},
		{"suid clears nosuid", []string{"nosuid", "suid"}, 0, ""},
		{"dev clears nodev", []string{"nodev", "dev"}, 0, ""},
		{"exec clears noexec", []string{"noexec", "exec"}, 0, ""},
		{"atime", []string{"noatime", "atime", "nodiratime", "diratime"}, 0, ""},
		{"relatime norelatime", []string{"relatime", "norelatime"}, 0, ""},
		{"strictatime", []string{"strictatime"}, unix.MS_STRICTATIME, ""},
		{"sync async", []string{"sync", "async"}, 0, ""},
		{"sync", []string{"sync"}, unix.MS_SYNCHRONOUS, ""},
		{"dirsync mand", []string{"dirsync", "mand"}, unix.MS_DIRSYNC | unix.MS_MANDLOCK, ""},
		{"nomand", []string{"mand", "nomand"}, 0, ""},
		{"remount", []string{"remount", "ro"}, unix.MS_REMOUNT | unix.MS_RDONLY, ""},
		{
			"unknown options keep their order",
			[]string{"size=1m", "nosuid", "mode=755", "ro", "uid=1000", "x-custom"},
			unix.MS_NOSUID | unix.MS_RDONLY, "size=1m,mode=755,uid=1000,x-custom",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			flags, data := parseMountOptions(tt.options)
			if flags != tt.wantFlags || data != tt.wantData {
				t.Fatalf("parseMountOptions(%q) = %#x, %q; want %#x, %q", tt.options, flags, data, tt.wantFlags, tt.wantData)
			}
		})
	}
}

func TestValidateMounts(t *testing.T) {
	tests := []struct {
		name   string
		mounts []Mount
		ok     bool
	}{
		{"none", nil, true},
		{"overlay", []Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a"}}}, true},
		{"no type", []Mount{{Source: "/a", Options: []string{"rbind"}}}, false},
		{"NUL in option", []Mount{{Type: "tmpfs", Source: "tmpfs", Options: []string{"size=1m\x00,suid"}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateMounts(tt.mounts)
			if tt.ok != (err == nil) {
				t.Fatalf("validateMounts = %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("validateMounts = %v, want InvalidArgument", err)
			}
		})
	}
}

func TestMountsFromAPIRoundTrip(t *testing.T) {
	in := []*types.Mount{
		{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a", "upperdir=/b", "workdir=/c"}},
		{Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
	}
	got := MountsFromAPI(in)
	want := []Mount{
		{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a", "upperdir=/b", "workdir=/c"}},
		{Type: "bind", Source: "/src", Options: []string{"rbind", "ro"}},
	}
	if len(got) != len(want) {
		t.Fatalf("MountsFromAPI = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].Type != want[i].Type || got[i].Source != want[i].Source || !slices.Equal(got[i].Options, want[i].Options) {
			t.Fatalf("MountsFromAPI[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	back := mountsToAPI(got)
	for i := range in {
		if back[i].GetType() != in[i].GetType() || back[i].GetSource() != in[i].GetSource() || !slices.Equal(back[i].GetOptions(), in[i].GetOptions()) {
			t.Fatalf("mountsToAPI[%d] = %v, want %v", i, back[i], in[i])
		}
	}
	if got := MountsFromAPI(nil); got == nil || len(got) != 0 {
		t.Fatalf("MountsFromAPI(nil) = %#v, want an empty slice", got)
	}
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	mountPoint   string
	mountOptions []string // per-mount options: rw/ro, nosuid, ...
	fsType       string
	source       string
	superOptions []string
}

func (m mountEntry) has(opt string) bool { return slices.Contains(m.mountOptions, opt) }

// mountsAt returns the mounts stacked on dir, bottom first.
func mountsAt(t *testing.T, dir string) []mountEntry {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			t.Fatalf("malformed mountinfo line %q", sc.Text())
		}
		f1, f2 := strings.Fields(pre), strings.Fields(post)
		if len(f1) < 6 || len(f2) < 3 {
			t.Fatalf("malformed mountinfo line %q", sc.Text())
		}
		if unescapeMountinfo(f1[4]) != dir {
			continue
		}
		out = append(out, mountEntry{
			mountPoint:   f1[4],
			mountOptions: strings.Split(f1[5], ","),
			fsType:       f2[0],
			source:       f2[1],
			superOptions: strings.Split(f2[2], ","),
		})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func unescapeMountinfo(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// testBundle returns a bundle directory whose rootfs the test mounts on,
// with symlinks resolved so that it matches mountinfo. Its cleanup detaches
// whatever is left mounted on the rootfs before the directory is removed.
func testBundle(t *testing.T) (b bundle.Bundle, rootfs string) {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b = bundle.New(dir)
	rootfs = b.Rootfs()
	t.Cleanup(func() {
		for range 64 {
			if err := unix.Unmount(rootfs, unix.MNT_DETACH); err != nil {
				return
			}
		}
	})
	return b, rootfs
}

// sourceDir returns a directory holding the file "hello".
func sourceDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte("world"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func requireNothingMounted(t *testing.T, dir string) {
	t.Helper()
	if m := mountsAt(t, dir); len(m) != 0 {
		t.Fatalf("%d mounts left on %s: %+v", len(m), dir, m)
	}
}

func TestMountRootfsBind(t *testing.T) {
	tests := []struct {
		name     string
		options  []string
		readOnly bool
	}{
		{"rbind ro", []string{"rbind", "ro"}, true},
		{"ro bind", []string{"ro", "bind"}, true},
		{"rbind rw", []string{"rbind", "rw"}, false},
		// The read-only remount carries the other flags.
		{"bind ro nosuid", []string{"bind", "ro", "nosuid", "nodev"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.CheckLeaks(t)
			src := sourceDir(t)
			b, rootfs := testBundle(t)
			if err := mountRootfs(rootfs, []Mount{{Type: "bind", Source: src, Options: tt.options}}); err != nil {
				t.Fatalf("mountRootfs: %v", err)
			}
			m := mountsAt(t, rootfs)
			if len(m) != 1 {
				t.Fatalf("%d mounts on the rootfs, want 1: %+v", len(m), m)
			}
			if got := m[0].has("ro"); got != tt.readOnly {
				t.Errorf("mount options %v: read-only %v, want %v", m[0].mountOptions, got, tt.readOnly)
			}
			for _, o := range []string{"nosuid", "nodev"} {
				if slices.Contains(tt.options, o) && !m[0].has(o) {
					t.Errorf("mount options %v lack %s", m[0].mountOptions, o)
				}
			}
			if data, err := os.ReadFile(filepath.Join(rootfs, "hello")); err != nil || string(data) != "world" {
				t.Fatalf("read through the bind mount: %q, %v", data, err)
			}
			err := os.WriteFile(filepath.Join(rootfs, "new"), []byte("x"), 0o644)
			if tt.readOnly && !errors.Is(err, unix.EROFS) {
				t.Errorf("write to the read-only rootfs = %v, want EROFS", err)
			}
			if !tt.readOnly && err != nil {
				t.Errorf("write to the read-write rootfs: %v", err)
			}
			// Only the bind mount is read-only, not its source.
			if err := os.WriteFile(filepath.Join(src, "other"), []byte("x"), 0o644); err != nil {
				t.Errorf("the source became unwritable: %v", err)
			}

			if err := UnmountRootfs(b); err != nil {
				t.Fatalf("UnmountRootfs: %v", err)
			}
			requireNothingMounted(t, rootfs)
			st, err := os.Stat(rootfs)
			if err != nil {
				t.Fatalf("rootfs directory: %v", err)
			}
			if st.Mode().Perm() != 0o711 {
				t.Errorf("rootfs directory mode = %v, want 0711", st.Mode().Perm())
			}
			if _, err := os.Stat(filepath.Join(rootfs, "hello")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("source file still visible after unmount: %v", err)
			}
		})
	}
}

func TestMountRootfsTmpfs(t *testing.T) {
	testutil.CheckLeaks(t)
	b, rootfs := testBundle(t)
	mounts := []Mount{{Type: "tmpfs", Source: "tether-test", Options: []string{"nosuid", "nodev", "noexec", "size=1m", "mode=750"}}}
	if err := mountRootfs(rootfs, mounts); err != nil {
		t.Fatalf("mountRootfs: %v", err)
	}
	m := mountsAt(t, rootfs)
	if len(m) != 1 {
		t.Fatalf("%d mounts on the rootfs, want 1: %+v", len(m), m)
	}
	if m[0].fsType != "tmpfs" || m[0].source != "tether-test" {
		t.Errorf("mounted %s from %s, want tmpfs from tether-test", m[0].fsType, m[0].source)
	}
	for _, o := range []string{"rw", "nosuid", "nodev", "noexec"} {
		if !m[0].has(o) {
			t.Errorf("mount options %v lack %s", m[0].mountOptions, o)
		}
	}
	if !slices.Contains(m[0].superOptions, "size=1024k") || !slices.Contains(m[0].superOptions, "mode=750") {
		t.Errorf("filesystem options %v lack the data size=1m,mode=750", m[0].superOptions)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "file"), []byte("x"), 0o644); err != nil {
		t.Errorf("write to the tmpfs: %v", err)
	}
	if err := UnmountRootfs(b); err != nil {
		t.Fatalf("UnmountRootfs: %v", err)
	}
	requireNothingMounted(t, rootfs)
}

func TestMountRootfsTmpfsReadOnly(t *testing.T) {
	b, rootfs := testBundle(t)
	if err := mountRootfs(rootfs, []Mount{{Type: "tmpfs", Source: "tmpfs", Options: []string{"ro"}}}); err != nil {
		t.Fatalf("mountRootfs: %v", err)
	}
	m := mountsAt(t, rootfs)
	if len(m) != 1 || !m[0].has("ro") {
		t.Fatalf("mounts on the rootfs = %+v, want one read-only tmpfs", m)
	}
	if err := UnmountRootfs(b); err != nil {
		t.Fatalf("UnmountRootfs: %v", err)
	}
	requireNothingMounted(t, rootfs)
}

func TestMountRootfsOverlay(t *testing.T) {
	testutil.CheckLeaks(t)
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	lower, upper, work := filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{lower, upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "hello"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, rootfs := testBundle(t)
	mounts := []Mount{{
		Type:    "overlay",
		Source:  "overlay",
		Options: []string{"index=off", "lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work},
	}}
	if err := mountRootfs(rootfs, mounts); err != nil {
		t.Fatalf("mountRootfs: %v", err)
	}
	m := mountsAt(t, rootfs)
	if len(m) != 1 || m[0].fsType != "overlay" {
		t.Fatalf("mounts on the rootfs = %+v, want one overlay", m)
	}
	if data, err := os.ReadFile(filepath.Join(rootfs, "hello")); err != nil || string(data) != "lower" {
		t.Fatalf("read the lower file: %q, %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "new"), []byte("up"), 0o644); err != nil {
		t.Fatalf("write to the overlay: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(upper, "new")); err != nil || string(data) != "up" {
		t.Fatalf("the write did not reach upperdir: %q, %v", data, err)
	}
	if err := UnmountRootfs(b); err != nil {
		t.Fatalf("UnmountRootfs: %v", err)
	}
	requireNothingMounted(t, rootfs)
}

func TestMountRootfsStacked(t *testing.T) {
	testutil.CheckLeaks(t)
	src := sourceDir(t)
	b, rootfs := testBundle(t)
	mounts := []Mount{
		{Type: "tmpfs", Source: "first", Options: []string{"size=1m"}},
		{Type: "bind", Source: src, Options: []string{"rbind", "ro"}},
		{Type: "tmpfs", Source: "third", Options: []string{"size=1m", "nodev"}},
	}
	if err := mountRootfs(rootfs, mounts); err != nil {
		t.Fatalf("mountRootfs: %v", err)
	}
	m := mountsAt(t, rootfs)
	if len(m) != 3 {
		t.Fatalf("%d mounts on the rootfs, want 3: %+v", len(m), m)
	}
	if m[0].source != "first" || m[2].source != "third" || !m[1].has("ro") || !m[2].has("nodev") {
		t.Fatalf("mounts are not stacked in order: %+v", m)
	}
	if err := UnmountRootfs(b); err != nil {
		t.Fatalf("UnmountRootfs: %v", err)
	}
	requireNothingMounted(t, rootfs)
}

func TestMountRootfsFailureLeavesNothing(t *testing.T) {
	testutil.CheckLeaks(t)
	missing := filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name   string
		mounts []Mount
	}{
		{"second bind source missing", []Mount{
			{Type: "tmpfs", Source: "first", Options: []string{"size=1m"}},
			{Type: "bind", Source: missing, Options: []string{"rbind", "ro"}},
		}},
		{"third fs type unknown", []Mount{
			{Type: "tmpfs", Source: "first"},
			{Type: "tmpfs", Source: "second"},
			{Type: "no-such-fs", Source: "third"},
		}},
		{"first bad option", []Mount{
			{Type: "tmpfs", Source: "first", Options: []string{"no-such-option=1"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, rootfs := testBundle(t)
			if err := mountRootfs(rootfs, tt.mounts); err == nil {
				t.Fatal("mountRootfs succeeded")
			}
			requireNothingMounted(t, rootfs)
		})
	}
}

func TestMountRootfsNoMounts(t *testing.T) {
	_, rootfs := testBundle(t)
	if err := mountRootfs(rootfs, nil); err != nil {
		t.Fatalf("mountRootfs(nil) = %v", err)
	}
	if _, err := os.Stat(rootfs); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mountRootfs with no mounts touched the rootfs: %v", err)
	}
}

func TestUnmountRootfsNothingMounted(t *testing.T) {
	testutil.CheckLeaks(t)
	t.Run("rootfs directory", func(t *testing.T) {
		b, rootfs := testBundle(t)
		if err := os.Mkdir(rootfs, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := UnmountRootfs(b); err != nil {
			t.Fatalf("UnmountRootfs = %v, want nil", err)
		}
	})
	t.Run("no rootfs directory", func(t *testing.T) {
		b, _ := testBundle(t)
		if err := UnmountRootfs(b); err != nil {
			t.Fatalf("UnmountRootfs = %v, want nil", err)
		}
	})
	t.Run("twice", func(t *testing.T) {
		b, rootfs := testBundle(t)
		if err := mountRootfs(rootfs, []Mount{{Type: "tmpfs", Source: "tmpfs"}}); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := UnmountRootfs(b); err != nil {
				t.Fatalf("UnmountRootfs #%d = %v, want nil", i+1, err)
			}
		}
		requireNothingMounted(t, rootfs)
	})
}

// TestRegressionHugeRootfsList: a Create with 5,000 rootfs mounts was
// tried mount by mount and failed as Unknown (found by TestTTRPCAbuse);
// more than maxRootfsMounts is InvalidArgument before anything is mounted,
// and a mount that fails has the class of its errno.
func TestRegressionHugeRootfsList(t *testing.T) {
	many := make([]Mount, maxRootfsMounts+1)
	for i := range many {
		many[i] = Mount{Type: "overlay", Source: "overlay"}
	}
	if err := validateMounts(many); !errdefs.IsInvalidArgument(err) {
		t.Errorf("validateMounts(%d mounts) = %v, want InvalidArgument", len(many), err)
	}
	if err := validateMounts(many[:maxRootfsMounts]); err != nil {
		t.Errorf("validateMounts(%d mounts) = %v", maxRootfsMounts, err)
	}
	err := mountRootfs(filepath.Join(t.TempDir(), "rootfs"), []Mount{{Type: "bind", Source: "/nonexistent/src", Options: []string{"bind"}}})
	if !errdefs.IsNotFound(err) {
		t.Errorf("a bind of a missing source: %v, want NotFound", err)
	}
}
