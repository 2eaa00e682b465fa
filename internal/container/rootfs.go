package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/bundle"
	"github.com/tether-shim/tether/internal/oserr"
)

// Mount is one filesystem to mount on a bundle's rootfs, as containerd sends
// it in CreateTaskRequest.rootfs.
type Mount struct {
	Type    string
	Source  string
	Options []string
}

// mountFlags maps the mount(8) options that are flags to their flag and
// whether they clear it. The table is read-only.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"async":         {true, unix.MS_SYNCHRONOUS},
	"atime":         {true, unix.MS_NOATIME},
	"bind":          {false, unix.MS_BIND},
	"defaults":      {false, 0},
	"dev":           {true, unix.MS_NODEV},
	"diratime":      {true, unix.MS_NODIRATIME},
	"dirsync":       {false, unix.MS_DIRSYNC},
	"exec":          {true, unix.MS_NOEXEC},
	"mand":          {false, unix.MS_MANDLOCK},
	"noatime":       {false, unix.MS_NOATIME},
	"nodev":         {false, unix.MS_NODEV},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"noexec":        {false, unix.MS_NOEXEC},
	"nomand":        {true, unix.MS_MANDLOCK},
	"norelatime":    {true, unix.MS_RELATIME},
	"nostrictatime": {true, unix.MS_STRICTATIME},
	"nosuid":        {false, unix.MS_NOSUID},
	"rbind":         {false, unix.MS_BIND | unix.MS_REC},
	"relatime":      {false, unix.MS_RELATIME},
	"remount":       {false, unix.MS_REMOUNT},
	"ro":            {false, unix.MS_RDONLY},
	"rw":            {true, unix.MS_RDONLY},
	"strictatime":   {false, unix.MS_STRICTATIME},
	"suid":          {true, unix.MS_NOSUID},
	"sync":          {false, unix.MS_SYNCHRONOUS},
}

// parseMountOptions splits mount options into mount(2) flags and the data
// string passed to the filesystem.
func parseMountOptions(options []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range options {
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		data = append(data, o)
	}
	return flags, strings.Join(data, ",")
}

// maxRootfsMounts bounds the rootfs mounts of a Create: containerd sends
// one per snapshot (an overlay, or a bind of a directory).
const maxRootfsMounts = 128

// validateMounts refuses mounts that are not plain filesystem descriptions,
// and more than maxRootfsMounts of them.
func validateMounts(mounts []Mount) error {
	if len(mounts) > maxRootfsMounts {
		return fmt.Errorf("%d rootfs mounts, at most %d: %w", len(mounts), maxRootfsMounts, errdefs.ErrInvalidArgument)
	}
	for _, m := range mounts {
		if m.Type == "" {
			return fmt.Errorf("rootfs mount of %q has no type: %w", m.Source, errdefs.ErrInvalidArgument)
		}
		for _, o := range m.Options {
			if strings.ContainsRune(o, 0) {
				return fmt.Errorf("rootfs mount option %q: %w", o, errdefs.ErrInvalidArgument)
			}
		}
	}
	return nil
}

// mountRootfs mounts the mounts, in order, on target, creating target. When
// one fails, the ones already mounted are unmounted again.
func mountRootfs(target string, mounts []Mount) (retErr error) {
	if len(mounts) == 0 {
		return nil
	}
	if err := os.Mkdir(target, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create rootfs %s: %w", target, err)
	}
	defer func() {
		if retErr != nil {
			_ = unmountAll(target)
		}
	}()
	for _, m := range mounts {
		flags, data := parseMountOptions(m.Options)
		typ := m.Type
		if flags&unix.MS_BIND != 0 {
			typ = ""
		}
		if err := unix.Mount(m.Source, target, typ, flags&^unix.MS_RDONLY|bindReadOnly(flags), data); err != nil {
			return oserr.Wrap(err, "mount %s (%s) on %s", m.Source, m.Type, target)
		}
		// A bind mount ignores MS_RDONLY until it is remounted.
		if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
			if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|flags&^(unix.MS_REC|unix.MS_BIND), ""); err != nil {
				return oserr.Wrap(err, "remount %s read-only", target)
			}
		}
	}
	return nil
}

// bindReadOnly keeps MS_RDONLY for the first mount(2) call except for binds,
// which take it only on a remount.
func bindReadOnly(flags uintptr) uintptr {
	if flags&unix.MS_BIND != 0 {
		return 0
	}
	return flags & unix.MS_RDONLY
}

// unmountAll unmounts every mount stacked on target. A busy mount is retried
// for a moment and then detached, so that a bundle never keeps a mount.
func unmountAll(target string) error {
	for range 64 {
		err := unmountOnce(target)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // nothing (more) mounted there
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", filepath.Clean(target), err)
		}
	}
	return fmt.Errorf("unmount %s: too many stacked mounts", target)
}

func unmountOnce(target string) error {
	var err error
	for range 10 {
		err = unix.Unmount(target, 0)
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return unix.Unmount(target, unix.MNT_DETACH)
}

// UnmountRootfs unmounts everything mounted on the bundle's rootfs. Nothing
// mounted is not an error.
func UnmountRootfs(b bundle.Bundle) error {
	return unmountAll(b.Rootfs())
}
