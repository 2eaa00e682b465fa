package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/tether-shim/tether/testkit"
)

// Blob is one piece of content of the stand-in registry.
type Blob struct {
	MediaType string
	Digest    string
	Data      []byte
}

// Store holds the stand-in images: blobs by digest and tags by repository
// path. It is filled before the registry starts and only read after.
type Store struct {
	blobs map[string]Blob
	tags  map[string]map[string]string // repository path -> tag -> manifest digest
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{blobs: map[string]Blob{}, tags: map[string]map[string]string{}}
}

func (s *Store) put(mediaType string, data []byte) Blob {
	sum := sha256.Sum256(data)
	b := Blob{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Data: data}
	s.blobs[b.Digest] = b
	return b
}

// Tag names manifest digest d as repo:tag.
func (s *Store) Tag(repo, tag, d string) {
	if s.tags[repo] == nil {
		s.tags[repo] = map[string]string{}
	}
	s.tags[repo][tag] = d
}

// Manifest finds a manifest or index of repo by tag or digest.
func (s *Store) Manifest(repo, ref string) (Blob, bool) {
	tags, ok := s.tags[repo]
	if !ok {
		return Blob{}, false
	}
	if !strings.HasPrefix(ref, "sha256:") {
		if ref, ok = tags[ref]; !ok {
			return Blob{}, false
		}
	}
	b, ok := s.blobs[ref]
	if !ok || !strings.Contains(b.MediaType, "manifest") && !strings.Contains(b.MediaType, "index") {
		return Blob{}, false
	}
	return b, true
}

// Blob finds a blob of a repository the store has.
func (s *Store) Blob(repo, d string) (Blob, bool) {
	if _, ok := s.tags[repo]; !ok {
		return Blob{}, false
	}
	b, ok := s.blobs[d]
	return b, ok
}

const (
	mtIndex    = "application/vnd.oci.image.index.v1+json"
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// Platform is an image's os/architecture/variant.
type Platform struct{ OS, Arch, Variant string }

// ImageSpec describes one stand-in image (one platform).
type ImageSpec struct {
	Layers   [][]byte          // uncompressed tars, lowest first
	Config   map[string]any    // the config's "config" object (Env, Cmd, User, Volumes...)
	Labels   map[string]string // unused if nil
	Platform Platform
}

// manifest adds the layers, config and manifest of spec and returns the
// manifest's descriptor (with the platform).
func (s *Store) manifest(spec ImageSpec) (map[string]any, error) {
	var layers []any
	var diffIDs []string
	for _, l := range spec.Layers {
		sum := sha256.Sum256(l)
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(sum[:]))
		var gz bytes.Buffer
		zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
		if err != nil {
			return nil, err
		}
		if _, err := zw.Write(l); err != nil {
			return nil, err
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		b := s.put(mtLayer, gz.Bytes())
		layers = append(layers, desc(b))
	}
	cfg := map[string]any{
		"created":      "2024-01-01T00:00:00Z",
		"architecture": spec.Platform.Arch,
		"os":           spec.Platform.OS,
		"config":       spec.Config,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
	}
	if spec.Platform.Variant != "" {
		cfg["variant"] = spec.Platform.Variant
	}
	cj, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cb := s.put(mtConfig, cj)
	mj, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mtManifest,
		"config":        desc(cb),
		"layers":        layers,
	})
	if err != nil {
		return nil, err
	}
	mb := s.put(mtManifest, mj)
	d := desc(mb)
	p := map[string]any{"os": spec.Platform.OS, "architecture": spec.Platform.Arch}
	if spec.Platform.Variant != "" {
		p["variant"] = spec.Platform.Variant
	}
	d["platform"] = p
	return d, nil
}

// Index adds an image index over specs (one manifest per platform) and
// returns its digest.
func (s *Store) Index(specs ...ImageSpec) (string, error) {
	var ms []any
	for _, sp := range specs {
		d, err := s.manifest(sp)
		if err != nil {
			return "", err
		}
		ms = append(ms, d)
	}
	ij, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mtIndex, "manifests": ms})
	if err != nil {
		return "", err
	}
	return s.put(mtIndex, ij).Digest, nil
}

func desc(b Blob) map[string]any {
	return map[string]any{"mediaType": b.MediaType, "digest": b.Digest, "size": len(b.Data)}
}

// entry is one file of a layer built in memory.
type entry struct {
	name     string
	dir      bool
	data     string
	uid, gid int
	mode     int64 // 0: 0644 for a file, 0755 for a directory
}

// memLayer is an uncompressed tar of entries (parents listed first).
func memLayer(entries ...entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Uid: e.uid, Gid: e.gid, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag, h.Mode, h.Name = tar.TypeDir, 0o755, e.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if e.mode != 0 {
			h.Mode = e.mode
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if !e.dir {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// dirLayer is an uncompressed tar of dir (owned by root, sorted, fixed times).
func dirLayer(dir string) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	first := map[uint64]string{} // inode -> the name it was first written as
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(dir, p)
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && st.Mode().IsRegular() && sys.Nlink > 1 {
			if target, ok := first[sys.Ino]; ok {
				h := &tar.Header{Name: filepath.ToSlash(rel), Typeflag: tar.TypeLink, Linkname: target, Mode: int64(st.Mode().Perm()),
					Uname: "root", Gname: "root", ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
				if err := tw.WriteHeader(h); err != nil {
					return nil, err
				}
				continue
			}
			first[sys.Ino] = filepath.ToSlash(rel)
		}
		link := ""
		if st.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return nil, err
			}
		}
		h, err := tar.FileInfoHeader(st, link)
		if err != nil {
			return nil, err
		}
		h.Name = filepath.ToSlash(rel)
		if st.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "root", "root"
		h.ModTime, h.AccessTime, h.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if st.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			if _, err := tw.Write(data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// busyboxPasswd and busyboxGroup are the accounts of busybox's images.
const (
	busyboxPasswd = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nbin:x:2:2:bin:/bin:/bin/false\n" +
		"sys:x:3:3:sys:/dev:/bin/false\nsync:x:4:100:sync:/bin:/bin/sync\nmail:x:8:8:mail:/var/spool/mail:/bin/false\n" +
		"www-data:x:33:33:www-data:/var/www:/bin/false\noperator:x:37:37:Operator:/var:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
	busyboxGroup = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nlp:x:7:\nmail:x:8:\nkmem:x:9:\n" +
		"wheel:x:10:root\ncdrom:x:11:\ndialout:x:18:\nfloppy:x:19:\nvideo:x:26:\naudio:x:29:\ntape:x:32:\nwww-data:x:33:\n" +
		"operator:x:37:\nutmp:x:43:\nplugdev:x:46:\nstaff:x:50:\nlock:x:54:\nnetdev:x:82:\nusers:x:100:\nnogroup:x:65534:\n"
)

const pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// otherPlatforms are the platforms of a multi-platform stand-in besides the
// host's: each gets a tiny layer of its own (no binary runs from them).
var otherPlatforms = []Platform{
	{"linux", "arm", "v7"}, {"linux", "arm64", "v8"}, {"linux", "ppc64le", ""}, {"linux", "s390x", ""}, {"linux", "386", ""},
}

// StandIns fills a store with the stand-ins of the images the suites pull,
// by repository path (any registry host). The host platform's manifest of
// each is Debian's static busybox (rootfs built in work) plus what the image
// is used for; digest-pinned references of the suites cannot be served (no
// content has those digests) and are listed in the README. It returns the
// digest of the busybox index, for suites that take a by-digest reference.
func StandIns(store *Store, work string) (map[string]string, error) {
	rootfs := filepath.Join(work, "rootfs")
	if err := os.RemoveAll(rootfs); err != nil {
		return nil, err
	}
	if err := testkit.BuildRootfs(rootfs, "stand-in"); err != nil {
		return nil, err
	}
	// Applets as hard links of /bin/busybox, as in busybox's images: a
	// masked /bin/ls must not mask the shell.
	if err := hardLinkApplets(rootfs); err != nil {
		return nil, err
	}
	// /etc/passwd and /etc/group as in busybox's images (the suites check
	// the ids of sys, 3:3, and that uid 1000 has no entry).
	if err := os.WriteFile(filepath.Join(rootfs, "etc/passwd"), []byte(busyboxPasswd), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/group"), []byte(busyboxGroup), 0o644); err != nil {
		return nil, err
	}
	// What Debian's busybox lacks and the suites run: pgrep and ipcs, as
	// scripts over /proc; and /var/run. Its nc as PID 1 ignores SIGTERM (no
	// handler), where the suites' image ends: nc runs under a shell that
	// passes SIGTERM on and exits as a SIGTERM would (143).
	tools := map[string]string{
		"usr/bin/nc": "#!/bin/sh\n# stand-in nc: busybox nc; SIGTERM ends it as it ends nc outside a pid namespace\n" +
			"busybox nc \"$@\" & pid=$!\ntrap 'kill -TERM $pid 2>/dev/null; exit 143' TERM\nwait $pid\n",
		"usr/bin/pgrep": "#!/bin/sh\n# stand-in pgrep PATTERN: the pids whose command name contains PATTERN\n" +
			"for d in /proc/[0-9]*; do c=$(cat \"$d/comm\" 2>/dev/null) || continue\n" +
			"  [ \"${d#/proc/}\" = \"$$\" ] && continue\n  case \"$c\" in *\"$1\"*) echo \"${d#/proc/}\";; esac\ndone\n",
		"usr/bin/ipcs": "#!/bin/sh\n# stand-in ipcs [-m]: the shared memory segments of /proc/sysvipc/shm\n" +
			"echo '------ Shared Memory Segments --------'\necho 'key        shmid      owner      perms      bytes      nattch'\n" +
			"tail -n +2 /proc/sysvipc/shm | while read key shmid perms size cpid lpid nattch uid rest; do\n" +
			"  printf '%-10s %-10s %-10s %-10s %-10s %-10s\\n' \"$key\" \"$shmid\" \"$uid\" \"$perms\" \"$size\" \"$nattch\"\ndone\n",
	}
	for name, script := range tools {
		p := filepath.Join(rootfs, name)
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "var"), 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink("../run", filepath.Join(rootfs, "var/run")); err != nil {
		return nil, err
	}
	base, err := dirLayer(rootfs)
	if err != nil {
		return nil, err
	}
	host := Platform{"linux", "amd64", ""}
	// multi returns an index: the host manifest plus otherPlatforms. Every
	// repository's content is its own (a last layer naming it), so that
	// pulling one never makes another look pulled or unpacked.
	multi := func(repo string, layers [][]byte, cfg map[string]any) (string, error) {
		own, err := memLayer(entry{name: "etc", dir: true}, entry{name: "etc/stand-in", data: repo + "\n"})
		if err != nil {
			return "", err
		}
		specs := []ImageSpec{{Layers: append(append([][]byte{}, layers...), own), Config: cfg, Platform: host}}
		for _, p := range otherPlatforms {
			l, err := memLayer(entry{name: "platform", data: repo + " " + p.OS + "/" + p.Arch + "/" + p.Variant + "\n"})
			if err != nil {
				return "", err
			}
			specs = append(specs, ImageSpec{Layers: [][]byte{l}, Config: map[string]any{"Cmd": []string{"/platform"}}, Platform: p})
		}
		return store.Index(specs...)
	}
	shell := func(cmd ...string) map[string]any {
		return map[string]any{"Env": []string{pathEnv}, "Cmd": cmd}
	}
	digests := map[string]string{}
	add := func(repo string, tags []string, d string, err error) error {
		if err != nil {
			return fmt.Errorf("stand-in %s: %w", repo, err)
		}
		for _, t := range tags {
			store.Tag(repo, t, d)
		}
		digests[repo] = d
		return nil
	}

	for _, r := range []struct {
		repo string
		tags []string
	}{
		{"containerd/busybox", []string{"1.32", "1.36", "latest"}},
		{"containerd/alpine", []string{"3.14.0"}},
		{"e2e-test-images/busybox", []string{"1.29-2", "1.29"}},
		{"e2e-test-images/resource-consumer", []string{"1.10"}},
		{"library/busybox", []string{"latest"}},
	} {
		d, err := multi(r.repo, [][]byte{base}, shell("sh"))
		if err := add(r.repo, r.tags, d, err); err != nil {
			return nil, err
		}
	}

	// pause: PID 1 that waits for a signal and exits 0 on TERM/INT.
	pause := shell("/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done")
	pause["Entrypoint"] = nil
	d, err := multi("pause", [][]byte{base}, pause)
	if err := add("pause", []string{"3.2", "3.5", "3.6", "3.7", "3.8", "3.9", "3.10", "3.10.1", "3.10.2", "latest"}, d, err); err != nil {
		return nil, err
	}
	d, err = multi("pause-amd64", [][]byte{base}, pause)
	if err := add("pause-amd64", []string{"3.2"}, d, err); err != nil {
		return nil, err
	}

	// volume-copy-up: a second layer with content under three volumes.
	vl, err := memLayer(
		entry{name: "test_dir", dir: true}, entry{name: "test_dir/test_file", data: "test_content\n"},
		entry{name: "C:", dir: true}, entry{name: "C:/weird_test_dir", dir: true}, entry{name: "C:/weird_test_dir/weird_test_file", data: "test_content\n"},
		entry{name: ":colon_prefixed", dir: true}, entry{name: ":colon_prefixed/colon_prefixed_file", data: "test_content\n"},
	)
	if err != nil {
		return nil, err
	}
	vc := shell("sh")
	vc["Volumes"] = map[string]any{"/test_dir": map[string]any{}, "C:/weird_test_dir": map[string]any{}, "/:colon_prefixed": map[string]any{}}
	d, err = multi("containerd/volume-copy-up", [][]byte{base, vl}, vc)
	if err := add("containerd/volume-copy-up", []string{"2.1", "2.2"}, d, err); err != nil {
		return nil, err
	}
	// volume-ownership (an Ubuntu image): /test_dir owned by nobody:nogroup,
	// a volume; a bash and a setuid /usr/bin/passwd (the user namespace
	// tests run bash -c "[ -u /usr/bin/passwd ]").
	ol, err := memLayer(entry{name: "test_dir", dir: true, uid: 65534, gid: 65534},
		entry{name: "usr", dir: true}, entry{name: "usr/bin", dir: true},
		entry{name: "usr/bin/bash", data: "#!/bin/sh\n# stand-in bash: busybox sh\nexec /bin/sh \"$@\"\n", mode: 0o755},
		entry{name: "usr/bin/passwd", data: "#!/bin/sh\n# stand-in passwd (only its setuid bit is looked at)\nexit 1\n", mode: 0o4755})
	if err != nil {
		return nil, err
	}
	oc := shell("sh")
	oc["Volumes"] = map[string]any{"/test_dir": map[string]any{}}
	d, err = multi("containerd/volume-ownership", [][]byte{base, ol}, oc)
	if err := add("containerd/volume-ownership", []string{"2.1"}, d, err); err != nil {
		return nil, err
	}

	// Windows-only: what a Linux snapshotter must refuse.
	wl, err := memLayer(entry{name: "Files", dir: true})
	if err != nil {
		return nil, err
	}
	d, err = store.Index(ImageSpec{Layers: [][]byte{wl}, Config: map[string]any{"Cmd": []string{"cmd"}}, Platform: Platform{"windows", "amd64", ""}})
	if err := add("windows/nanoserver", []string{"1809", "ltsc2022"}, d, err); err != nil {
		return nil, err
	}

	// Web servers: an "nginx" that writes its pid to /var/run/nginx.pid and
	// runs busybox httpd on $NGINX_PORT (nginx's 80; 12003 for the host
	// network image), serving a page under /.
	nginx := "#!/bin/sh\n# stand-in nginx: busybox httpd, the pid file nginx writes\n" +
		"echo $$ > /var/run/nginx.pid\nhttpd -f -p \"${NGINX_PORT:-80}\" -h /usr/share/nginx/html &\n" +
		"trap 'kill $! 2>/dev/null; exit 0' TERM INT QUIT\nwait\n"
	html, err := memLayer(entry{name: "usr", dir: true}, entry{name: "usr/sbin", dir: true}, entry{name: "usr/sbin/nginx", data: nginx, mode: 0o755},
		entry{name: "usr/share", dir: true}, entry{name: "usr/share/nginx", dir: true},
		entry{name: "usr/share/nginx/html", dir: true}, entry{name: "usr/share/nginx/html/index.html", data: "<title>Welcome to nginx!</title>\n"})
	if err != nil {
		return nil, err
	}
	for _, r := range []struct {
		repo, port string
		tags       []string
	}{
		{"e2e-test-images/nginx", "80", []string{"1.14-2", "1.14-1"}},
		{"containerd/nginx", "80", []string{"1.27.0"}},
		{"k8s-staging-cri-tools/hostnet-nginx-amd64", "12003", []string{"latest"}},
	} {
		// The argument puts nginx's process title in /proc/1/cmdline,
		// which critest waits for.
		c := map[string]any{"Env": []string{pathEnv, "NGINX_PORT=" + r.port}, "Cmd": []string{"/usr/sbin/nginx", "nginx: master process"}}
		d, err := multi(r.repo, [][]byte{base, html}, c)
		if err := add(r.repo, r.tags, d, err); err != nil {
			return nil, err
		}
	}

	// httpd: busybox httpd on port 80, after a line with "httpd" in the log
	// (Apache's first lines name it; critest looks for it).
	hc := map[string]any{"Env": []string{pathEnv}, "Cmd": []string{"/bin/sh", "-c",
		"echo 'httpd: busybox httpd stand-in, port 80' >&2; exec httpd -f -p 80 -h /usr/share/nginx/html"}}
	d, err = multi("e2e-test-images/httpd", [][]byte{base, html}, hc)
	if err := add("e2e-test-images/httpd", []string{"2.4.39-4"}, d, err); err != nil {
		return nil, err
	}

	// cri-tools' test images: busybox plus a file named after the image
	// (different images), or with a USER.
	for _, r := range []struct {
		repo, file string
		tags       []string
	}{
		{"test-image-1", "test-image-1", []string{"latest"}},
		{"test-image-2", "test-image-2", []string{"latest"}},
		{"test-image-3", "test-image-3", []string{"latest"}},
		{"test-image-latest", "test-image-latest", []string{"latest"}},
		{"test-image-digest", "test-image-digest", []string{"latest"}},
		{"test-image-tags", "same-image", []string{"1", "2", "3"}},
		{"test-image-tag", "test-image-tag", []string{"test", "all"}},
	} {
		l, err := memLayer(entry{name: r.file, data: r.file + "\n"})
		if err != nil {
			return nil, err
		}
		d, err := multi("k8s-staging-cri-tools/"+r.repo, [][]byte{base, l}, shell("sh"))
		if err := add("k8s-staging-cri-tools/"+r.repo, r.tags, d, err); err != nil {
			return nil, err
		}
	}
	// The predefined-group image's user: default-user (1000), also in group
	// group-defined-in-image (50000).
	predefined, err := memLayer(entry{name: "etc", dir: true},
		entry{name: "etc/passwd", data: busyboxPasswd + "default-user:x:1000:1000::/home/default-user:/bin/sh\n"},
		entry{name: "etc/group", data: busyboxGroup + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"})
	if err != nil {
		return nil, err
	}
	for _, r := range []struct {
		repo, user string
		layers     [][]byte
	}{
		{"test-image-user-uid", "1002", [][]byte{base}},
		{"test-image-user-username", "www-data", [][]byte{base}},
		{"test-image-user-uid-group", "1003:1004", [][]byte{base}},
		{"test-image-user-username-group", "www-data:1004", [][]byte{base}},
		{"test-image-predefined-group", "1000", [][]byte{base, predefined}},
	} {
		c := shell("sh")
		c["User"] = r.user
		d, err := multi("k8s-staging-cri-tools/"+r.repo, r.layers, c)
		if err := add("k8s-staging-cri-tools/"+r.repo, []string{"latest"}, d, err); err != nil {
			return nil, err
		}
	}
	return digests, nil
}

// hardLinkApplets replaces every symlink to /bin/busybox under rootfs with a
// hard link of it.
func hardLinkApplets(rootfs string) error {
	bb := filepath.Join(rootfs, "bin", "busybox")
	return filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		target, err := os.Readlink(p)
		if err != nil || target != "/bin/busybox" {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		return os.Link(bb, p)
	})
}
