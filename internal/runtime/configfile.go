package runtime

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
)

// maxConfigFile bounds the size of a runtime config file.
const maxConfigFile = 64 << 10

// LoadConfigFile reads the TOML file that a runtimeoptions.v1.Options
// config_path names (the CRI plugin's generic options, and ctr's
// --runtime-config-path). Its keys mirror containerd.runc.v1.Options:
//
//	binary_name = "crun"
//	root = "/run/crun"
//	systemd_cgroup = false
//	no_pivot_root = false
//	no_new_keyring = false
//	shim_cgroup = "/tether"
//	io_uid = 0
//	io_gid = 0
//	criu_image_path = ""
//	criu_work_path = ""
//
// It accepts comments, blank lines and these top-level keys only: an
// unknown key, a table, or a value of the wrong type is an error naming the
// line, wrapped in errdefs.ErrInvalidArgument. A file that cannot be read is
// errdefs.ErrNotFound or the read error.
func LoadConfigFile(path string) (Options, error) {
	if !cleanAbs(path) {
		return Options{}, fmt.Errorf("runtime config path %q must be absolute and clean: %w", path, errdefs.ErrInvalidArgument)
	}
	data, err := readRegularFile(path, maxConfigFile)
	if err != nil {
		if os.IsNotExist(err) {
			return Options{}, fmt.Errorf("runtime config %s: %w", path, errdefs.ErrNotFound)
		}
		return Options{}, fmt.Errorf("runtime config %s: %w", path, err)
	}
	if len(data) > maxConfigFile {
		return Options{}, fmt.Errorf("runtime config %s is larger than %d bytes: %w", path, maxConfigFile, errdefs.ErrInvalidArgument)
	}
	o, err := parseConfig(data)
	if err != nil {
		return Options{}, fmt.Errorf("runtime config %s: %w", path, err)
	}
	return o, o.Validate()
}

func parseConfig(data []byte) (Options, error) {
	var o Options
	strs := map[string]*string{
		"binary_name": &o.BinaryName, "root": &o.Root, "shim_cgroup": &o.ShimCgroup,
		"criu_image_path": &o.CriuImagePath, "criu_work_path": &o.CriuWorkPath,
	}
	bools := map[string]*bool{
		"systemd_cgroup": &o.SystemdCgroup, "no_pivot_root": &o.NoPivotRoot, "no_new_keyring": &o.NoNewKeyring,
	}
	uints := map[string]*uint32{"io_uid": &o.IoUID, "io_gid": &o.IoGID}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(stripComment(sc.Text()))
		if text == "" {
			continue
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("line %d: %s: %w", line, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
		}
		if strings.HasPrefix(text, "[") {
			return o, bad("tables are not supported: %q", text)
		}
		key, value, ok := strings.Cut(text, "=")
		if !ok {
			return o, bad("want key = value, got %q", text)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if seen[key] {
			return o, bad("%s is set twice", key)
		}
		seen[key] = true
		switch {
		case strs[key] != nil:
			s, err := strconv.Unquote(value)
			if err != nil || !strings.HasPrefix(value, `"`) {
				return o, bad("%s wants a quoted string, got %s", key, value)
			}
			*strs[key] = s
		case bools[key] != nil:
			b, err := strconv.ParseBool(value)
			if err != nil || (value != "true" && value != "false") {
				return o, bad("%s wants true or false, got %s", key, value)
			}
			*bools[key] = b
		case uints[key] != nil:
			n, err := strconv.ParseUint(value, 10, 32)
			if err != nil {
				return o, bad("%s wants a non-negative integer, got %s", key, value)
			}
			*uints[key] = uint32(n)
		default:
			return o, bad("unknown key %q", key)
		}
	}
	if err := sc.Err(); err != nil {
		return o, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	return o, nil
}

// stripComment removes a # comment that is not inside a quoted string.
func stripComment(s string) string {
	inString := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if inString {
				i++
			}
		case '"':
			inString = !inString
		case '#':
			if !inString {
				return s[:i]
			}
		}
	}
	return s
}

// readRegularFile reads at most limit+1 bytes of path, which must be a
// regular file: a fifo would block the open or the read, and a device
// could be read without end. It opens non-blocking, so that a fifo is
// refused rather than waited on.
func readRegularFile(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s): %w", st.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	return io.ReadAll(io.LimitReader(f, limit+1))
}
