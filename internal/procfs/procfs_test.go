package procfs

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	good := "Name:\tcontainerd-shim\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t0\t0\t0\t0\nVmRSS:\t    6124 kB\nThreads:\t5\n"
	s, err := ParseStatus([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Status{Name: "containerd-shim", RSSBytes: 6124 << 10, Threads: 5, UID: 0}); s != want {
		t.Errorf("got %+v, want %+v", s, want)
	}
	// A zombie has no VmRSS.
	if s, err := ParseStatus([]byte("Name:\tz\nUid:\t1000\t1000\t1000\t1000\nThreads:\t1\n")); err != nil || s.RSSBytes != 0 || s.UID != 1000 {
		t.Errorf("zombie: %+v, %v", s, err)
	}
	for name, in := range map[string]string{
		"no threads":  "Name:\tx\n",
		"bad threads": "Threads:\tmany\n",
		"bad rss":     "VmRSS:\t12 MB\nThreads:\t1\n",
		"huge rss":    "VmRSS:\t99999999999999999999 kB\nThreads:\t1\n",
		"bad uid":     "Uid:\t-1\nThreads:\t1\n",
		"empty uid":   "Uid:\t\nThreads:\t1\n",
	} {
		if _, err := ParseStatus([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestParseSmapsRollup(t *testing.T) {
	in := "55d0c0000000-7ffd3f7fe000 ---p 00000000 00:00 0 [rollup]\nRss:\t5000 kB\nPss:\t  2048 kB\nPss_Anon:\t1000 kB\n"
	if got, err := ParseSmapsRollup([]byte(in)); err != nil || got != 2048<<10 {
		t.Errorf("got %d, %v; want %d", got, err, 2048<<10)
	}
	if _, err := ParseSmapsRollup([]byte("Rss:\t1 kB\n")); err == nil {
		t.Error("no Pss line: no error")
	}
}

func TestParseCmdlineAndSocketLink(t *testing.T) {
	if got := ParseCmdline([]byte("/bin/shim\x00-id\x00x y\x00serve\x00")); !reflect.DeepEqual(got, []string{"/bin/shim", "-id", "x y", "serve"}) {
		t.Errorf("cmdline %q", got)
	}
	if got := ParseCmdline(nil); got != nil {
		t.Errorf("empty cmdline %q", got)
	}
	for in, want := range map[string]uint64{"socket:[12345]": 12345, "pipe:[1]": 0, "socket:[x]": 0, "socket:[1": 0, "/dev/null": 0} {
		got, ok := ParseSocketLink(in)
		if got != want || ok != (want != 0) {
			t.Errorf("ParseSocketLink(%q) = %d, %v", in, got, ok)
		}
	}
}

func TestParseNetUnix(t *testing.T) {
	in := "Num       RefCount Protocol Flags    Type St Inode Path\n" +
		"0000000000000000: 00000002 00000000 00010000 0001 01 23456 /run/containerd/s/abc\n" +
		"0000000000000000: 00000003 00000000 00000000 0001 03 23457\n" +
		"0000000000000000: 00000002 00000000 00010000 0001 01 23458 @abstract\n" +
		"0000000000000000: 00000002 00000000 00000000 0001 01 23459 /tmp/with space\n" +
		"garbage\n" +
		"0000000000000000: 00000002 00000000 zz 0001 01 1 /bad/flags\n"
	want := []UnixSocket{
		{Inode: 23456, Path: "/run/containerd/s/abc", Listening: true},
		{Inode: 23457},
		{Inode: 23458, Path: "@abstract", Listening: true},
		{Inode: 23459, Path: "/tmp/with space"},
	}
	if got := ParseNetUnix([]byte(in)); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

// TestParseMountinfoOf: only the mounts of the types asked for, each
// checked as ParseMountinfo checks it (a malformed line of another type is
// still an error), with strings that are not views of the file; the lines
// of other types allocate nothing.
func TestParseMountinfoOf(t *testing.T) {
	in := "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"\n" +
		"27 22 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory\n" +
		"40 36 0:33 / /run/b/rootfs rw shared:2 - overlay overlay rw,lowerdir=/l\n" +
		"28 22 0:27 /kubepods /mnt/cg\\040x rw - cgroup2 cgroup2 rw\n"
	data := []byte(in)
	got, err := ParseMountinfoOf(data, "cgroup", "cgroup2")
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{Dev: "0:26", Root: "/", Point: "/sys/fs/cgroup/memory", FSType: "cgroup", Source: "cgroup", SuperOpts: "rw,memory"},
		{Dev: "0:27", Root: "/kubepods", Point: "/mnt/cg x", FSType: "cgroup2", Source: "cgroup2", SuperOpts: "rw"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	all, err := ParseMountinfo(data)
	if err != nil || len(all) != 4 || all[1] != want[0] || all[3] != want[1] {
		t.Errorf("ParseMountinfo of the same file: %+v, %v; want 4 mounts, among them %+v", all, err, want)
	}
	for i := range data {
		data[i] = 'x'
	}
	if got[0].Point != "/sys/fs/cgroup/memory" || got[1].SuperOpts != "rw" {
		t.Errorf("mounts changed with the file they were parsed from: %+v", got)
	}

	other := []byte(strings.Repeat("40 36 0:33 / /run/b/rootfs rw shared:2 - overlay overlay rw,lowerdir=/l\n", 50))
	if n := testing.AllocsPerRun(20, func() {
		if ms, err := ParseMountinfoOf(other, "cgroup", "cgroup2"); err != nil || len(ms) != 0 {
			t.Fatalf("%d mounts, %v; want none", len(ms), err)
		}
	}); n != 0 {
		t.Errorf("50 lines of another type allocate %v times, want 0", n)
	}
	if _, err := ParseMountinfoOf([]byte("24 31 0:22 / /sys rw - sysfs\n"), "cgroup"); err == nil {
		t.Error("a malformed line of another type: no error")
	}
	if ms, err := ParseMountinfoOf([]byte(in)); err != nil || ms != nil {
		t.Errorf("no type asked for: %+v, %v; want nothing", ms, err)
	}
}

func TestParseMountinfo(t *testing.T) {
	in := "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"\n" +
		"40 36 0:33 / /run/b/rootfs rw shared:2 - overlay overlay rw,lowerdir=/l\n"
	got, err := ParseMountinfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{Dev: "98:0", Root: "/mnt1", Point: "/mnt/with space", FSType: "ext3", Source: "/dev/root", SuperOpts: "rw,errors=continue"},
		{Dev: "0:33", Root: "/", Point: "/run/b/rootfs", FSType: "overlay", Source: "overlay", SuperOpts: "rw,lowerdir=/l"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if _, err := ParseMountinfo([]byte("1 2 3:4 / /x rw no-separator here\n")); err == nil {
		t.Error("no separator: no error")
	}
	mounts, err := Mounts()
	if err != nil || len(mounts) == 0 || !strings.HasPrefix(mounts[0].Point, "/") {
		t.Errorf("Mounts() = %d mounts, %v", len(mounts), err)
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/tab\011x`: "/tab\tx",
		`/plain`:    "/plain",
		`/trail\04`: `/trail\04`,
		`/bad\0z9`:  `/bad\0z9`,
		`\134`:      `\`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestStatsSelf reads this process: it has an RSS, threads and fds.
func TestStatsSelf(t *testing.T) {
	st, err := Stats(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.RSSBytes == 0 || st.Threads == 0 || st.FDs == 0 {
		t.Errorf("stats of this process %+v", st)
	}
	if _, err := Stats(1 << 30); err == nil {
		t.Error("a pid that cannot exist: no error")
	}
}

// FuzzParseProc: the /proc parsers never panic, whatever the file holds,
// and what they accept is sane.
func FuzzParseProc(f *testing.F) {
	f.Add([]byte("Name:\tx\nUid:\t0 0 0 0\nVmRSS:\t1 kB\nThreads:\t1\nPss:\t4 kB\n"))
	f.Add([]byte("Num RefCount Protocol Flags Type St Inode Path\n0: 2 0 00010000 1 01 5 /p\n"))
	f.Add([]byte("36 35 98:0 / /a\\040b rw - ext4 /dev/x rw\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := ParseStatus(data); err == nil && (s.Threads < 0 || s.UID < 0) {
			t.Fatalf("status %+v accepted", s)
		}
		_, _ = ParseSmapsRollup(data)
		for _, s := range ParseNetUnix(data) {
			if strings.Contains(s.Path, "\n") {
				t.Fatalf("socket path %q spans lines", s.Path)
			}
		}
		if ms, err := ParseMountinfo(data); err == nil {
			for _, m := range ms {
				if m.FSType == "" {
					t.Fatalf("mount %+v without a type", m)
				}
			}
		}
		_ = ParseCmdline(data)
		_, _ = ParseSocketLink(string(data))
	})
}
