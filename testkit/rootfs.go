package testkit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// ImageMarkerPath is a file that only the OCI image of BuildImageTar has, so
// a test can tell that a container runs on the image's snapshot and not on the
// --rootfs directory.
const ImageMarkerPath = "etc/tether-image"

// BuildRootfs makes a minimal root filesystem from Debian's static busybox:
// /bin/busybox, a symlink for every applet, /etc/passwd, /etc/group and
// /etc/hostname (holding hostname), and the mount points runc needs.
func BuildRootfs(dir, hostname string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	if bb, err = filepath.EvalSymlinks(bb); err != nil {
		return err
	}
	if err := CheckStatic(bb); err != nil {
		return err
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := CopyFile(bb, filepath.Join(dir, "bin/busybox"), 0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bb, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	applets := strings.Fields(string(out))
	if len(applets) < 50 {
		return fmt.Errorf("busybox --list-full lists only %d applets", len(applets))
	}
	for _, a := range applets {
		a = strings.TrimPrefix(a, "/")
		if a == "bin/busybox" {
			continue
		}
		p := filepath.Join(dir, a)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !os.IsExist(err) {
			return err
		}
	}
	for _, need := range []string{"sh", "echo", "cat", "sleep", "true", "false", "ls", "ps"} {
		if _, err := os.Lstat(filepath.Join(dir, "bin", need)); err != nil {
			return fmt.Errorf("busybox applet %s missing from /bin: %w", need, err)
		}
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hostname": hostname + "\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// CheckStatic fails unless path is a statically linked ELF binary (no PT_INTERP).
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install busybox-static", path)
		}
	}
	return nil
}

// BuildImageTar writes an OCI image layout tarball (oci-layout, index.json,
// blobs/sha256/...) with one gzip layer made of rootfs plus ImageMarkerPath,
// which holds marker and a newline. The index names the image with
// io.containerd.image.name, which ctr image import uses as the image name;
// createdBy is the history entry of the layer. The image's command is /bin/sh.
func BuildImageTar(rootfs, out, name, marker, createdBy string) error {
	return buildImageTar(rootfs, out, name, marker, createdBy, []string{"/bin/sh"}, "")
}

// BuildImageTarCmd is BuildImageTar with cmd as the image's command (its
// config's Cmd; there is no Entrypoint).
func BuildImageTarCmd(rootfs, out, name, marker, createdBy string, cmd []string) error {
	return buildImageTar(rootfs, out, name, marker, createdBy, cmd, "")
}

// BuildDockerImageTar writes the tarball of BuildImageTar plus the
// manifest.json that `docker save` writes next to the OCI layout since
// Docker 25 (the config and layer blob paths, and RepoTags [repoTag]).
// dockerd with its own image store (graph drivers, Docker's default up to
// 28) loads only tarballs that have manifest.json: a bare OCI layout fails
// with "open .../blobs/json: no such file or directory".
func BuildDockerImageTar(rootfs, out, repoTag, marker, createdBy string) error {
	return buildImageTar(rootfs, out, repoTag, marker, createdBy, []string{"/bin/sh"}, repoTag)
}

// buildImageTar is BuildImageTar with cmd as the image's command, plus
// Docker's manifest.json naming dockerTag unless it is empty.
func buildImageTar(rootfs, out, name, marker, createdBy string, cmd []string, dockerTag string) error {
	layer, err := tarDir(rootfs, map[string]string{ImageMarkerPath: marker + "\n"})
	if err != nil {
		return err
	}
	diffID := digest(layer)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(layer); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	layerBlob := gz.Bytes()

	config, err := json.Marshal(map[string]any{
		"created":      "2024-01-01T00:00:00Z",
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd": cmd,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{
			{"created": "2024-01-01T00:00:00Z", "created_by": createdBy},
		},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layerBlob)},
	})
	if err != nil {
		return err
	}
	md := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	md["platform"] = map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
	md["annotations"] = map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": name[strings.LastIndex(name, ":")+1:],
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{md},
	})
	if err != nil {
		return err
	}

	type file struct {
		name string
		data []byte
	}
	files := []file{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{blobPath(layerBlob), layerBlob},
		{blobPath(config), config},
		{blobPath(manifest), manifest},
		{"index.json", index},
	}
	if dockerTag != "" {
		dm, err := json.Marshal([]map[string]any{{
			"Config":   blobPath(config),
			"RepoTags": []string{dockerTag},
			"Layers":   []string{blobPath(layerBlob)},
		}})
		if err != nil {
			return err
		}
		files = append(files, file{"manifest.json", dm})
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	err = tw.WriteHeader(&tar.Header{Name: "blobs/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)})
	if err == nil {
		err = tw.WriteHeader(&tar.Header{Name: "blobs/sha256/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)})
	}
	for _, e := range files {
		if err == nil {
			err = add(e.name, e.data)
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(b []byte) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:")
}

func descriptor(mediaType string, b []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
}

// tarDir returns an uncompressed tar of dir (owned by root, sorted, fixed
// times) with the extra regular files added.
func tarDir(dir string, extra map[string]string) ([]byte, error) {
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
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(dir, p)
		link := ""
		if st.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return nil, err
			}
		}
		hdr, err := tar.FileInfoHeader(st, link)
		if err != nil {
			return nil, err
		}
		hdr.Name = filepath.ToSlash(rel)
		if st.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
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
	names := make([]string, 0, len(extra))
	for n := range extra {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(extra[n])), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0), Uname: "root", Gname: "root"}); err != nil {
			return nil, err
		}
		if _, err := tw.Write([]byte(extra[n])); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// CopyFile copies the regular file src to dst, which gets mode (if it is created).
func CopyFile(src, dst string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, mode)
}

// RepoRoot finds the root of the Tether repository (the directory of the
// go.mod of github.com/tether-shim/tether) at or above the working directory.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/tether-shim/tether\n") {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("no go.mod of github.com/tether-shim/tether above %s", wd)
		}
	}
}
