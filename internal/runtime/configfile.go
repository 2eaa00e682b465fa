package runtime

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"

	"github.com/tether-shim/tether/internal/paths"
)

// maxConfigFile bounds the size of a runtime config, as a file or a body.
const maxConfigFile = 64 << 10

// LoadConfigFile reads the TOML file that a runtimeoptions.v1.Options
// config_path names (the CRI plugin's generic options, and ctr's
// --runtime-config-path). Its keys are those of containerd.runc.v1.Options,
// spelled as operators write them for runc (CamelCase) or in snake_case:
//
//	BinaryName = "crun"          # or binary_name
//	Root = "/run/crun"           # root
//	SystemdCgroup = false        # systemd_cgroup
//	NoPivotRoot = false          # no_pivot_root
//	NoNewKeyring = false         # no_new_keyring
//	ShimCgroup = "/tether"       # shim_cgroup
//	IoUid = 0                    # io_uid
//	IoGid = 0                    # io_gid
//	CriuImagePath = ""           # criu_image_path
//	CriuWorkPath = ""            # criu_work_path
//
// It is parsed as TOML. An unknown key, a table, a value of the wrong type or
// a key given twice (in either spelling) is an error naming the key, wrapped
// in errdefs.ErrInvalidArgument. A file that is missing is
// errdefs.ErrNotFound; one that is not a regular file, or is larger than
// 64 KiB, is errdefs.ErrInvalidArgument.
func LoadConfigFile(path string) (Options, error) {
	if err := paths.Check("runtime config path", path); err != nil {
		return Options{}, err
	}
	data, err := readRegularFile(path, maxConfigFile)
	if err != nil {
		if os.IsNotExist(err) {
			return Options{}, fmt.Errorf("runtime config %s: %w", path, errdefs.ErrNotFound)
		}
		return Options{}, fmt.Errorf("runtime config %s: %w", path, err)
	}
	o, err := parseConfig(data, false)
	if err != nil {
		return Options{}, fmt.Errorf("runtime config %s: %w", path, err)
	}
	return o, o.Validate()
}

// ParseConfigBody decodes the config_body of a runtimeoptions.v1.Options:
// the runtime's options table of containerd's CRI config (1.7 and later),
// marshalled back to TOML by containerd. It takes the keys LoadConfigFile
// takes, plus the two containerd itself read from the same table:
// TypeUrl (which must name a type Tether reads, see ParseOptions) and
// ConfigPath (which must be empty: containerd sends a body only without
// one). Errors are those of LoadConfigFile.
func ParseConfigBody(body []byte) (Options, error) {
	o, err := parseConfig(body, true)
	if err != nil {
		return Options{}, fmt.Errorf("runtime options config_body: %w", err)
	}
	return o, o.Validate()
}

// optionKey is one runtime option: its two accepted spellings and how its
// value is stored.
type optionKey struct {
	camel, snake string
	set          func(o *Options, v any) error
}

func stringKey(f func(*Options) *string) func(*Options, any) error {
	return func(o *Options, v any) error {
		s, ok := v.(string)
		if !ok {
			return errWantType("a string", v)
		}
		*f(o) = s
		return nil
	}
}

func boolKey(f func(*Options) *bool) func(*Options, any) error {
	return func(o *Options, v any) error {
		b, ok := v.(bool)
		if !ok {
			return errWantType("true or false", v)
		}
		*f(o) = b
		return nil
	}
}

func idKey(f func(*Options) *uint32) func(*Options, any) error {
	return func(o *Options, v any) error {
		n, ok := v.(int64)
		if !ok || n < 0 || n > math.MaxUint32 {
			return errWantType("an integer from 0 to 4294967295", v)
		}
		*f(o) = uint32(n)
		return nil
	}
}

func errWantType(want string, got any) error {
	return fmt.Errorf("wants %s, got %s", want, tomlValue(got))
}

// tomlValue describes a decoded TOML value for an error message, without
// repeating an arbitrarily long value.
func tomlValue(v any) string {
	switch v := v.(type) {
	case string:
		if len(v) > 64 {
			v = v[:64] + "..."
		}
		return fmt.Sprintf("the string %q", v)
	case map[string]any:
		return "a table"
	case []any:
		return "an array"
	default:
		s := fmt.Sprint(v)
		if len(s) > 64 {
			s = s[:64] + "..."
		}
		return fmt.Sprintf("%T %s", v, s)
	}
}

// optionKeys are the runtime options a config may set (a read-only table), in the order of
// containerd.runc.v1.Options.
var optionKeys = [...]optionKey{
	{"NoPivotRoot", "no_pivot_root", boolKey(func(o *Options) *bool { return &o.NoPivotRoot })},
	{"NoNewKeyring", "no_new_keyring", boolKey(func(o *Options) *bool { return &o.NoNewKeyring })},
	{"ShimCgroup", "shim_cgroup", stringKey(func(o *Options) *string { return &o.ShimCgroup })},
	{"IoUid", "io_uid", idKey(func(o *Options) *uint32 { return &o.IoUID })},
	{"IoGid", "io_gid", idKey(func(o *Options) *uint32 { return &o.IoGID })},
	{"BinaryName", "binary_name", stringKey(func(o *Options) *string { return &o.BinaryName })},
	{"Root", "root", stringKey(func(o *Options) *string { return &o.Root })},
	{"SystemdCgroup", "systemd_cgroup", boolKey(func(o *Options) *bool { return &o.SystemdCgroup })},
	{"CriuImagePath", "criu_image_path", stringKey(func(o *Options) *string { return &o.CriuImagePath })},
	{"CriuWorkPath", "criu_work_path", stringKey(func(o *Options) *string { return &o.CriuWorkPath })},
}

// bodyKeys are the keys of containerd's runtimeoptions.v1.Options that ride
// along in a config_body: containerd has already acted on them (a read-only
// table).
var bodyKeys = [...]optionKey{
	{"TypeUrl", "type_url", func(_ *Options, v any) error {
		s, ok := v.(string)
		if !ok {
			return errWantType("a string", v)
		}
		return checkConfigTypeURL(s)
	}},
	{"ConfigPath", "config_path", func(_ *Options, v any) error {
		if s, ok := v.(string); !ok || s != "" {
			return fmt.Errorf("must be empty in a config_body (containerd sends the body only without a config path), got %s", tomlValue(v))
		}
		return nil
	}},
}

// parseConfig decodes a TOML config. body says whether it is a config_body
// (which may carry bodyKeys).
func parseConfig(data []byte, body bool) (Options, error) {
	var o Options
	if len(data) > maxConfigFile {
		return o, fmt.Errorf("larger than %d bytes: %w", maxConfigFile, errdefs.ErrInvalidArgument)
	}
	var tree map[string]any
	if err := toml.Unmarshal(data, &tree); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return o, fmt.Errorf("TOML line %d column %d: %v: %w", row, col, de, errdefs.ErrInvalidArgument)
		}
		return o, fmt.Errorf("TOML: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	keys := make([]string, 0, len(tree))
	for k := range tree {
		keys = append(keys, k)
	}
	slices.Sort(keys) // report the same key first every time
	seen := make(map[string]string, len(keys))
	for _, k := range keys {
		key, ok := lookupKey(k, body)
		if !ok {
			return o, fmt.Errorf("unknown key %q (known: %s): %w", k, knownKeys(body), errdefs.ErrInvalidArgument)
		}
		if prev, dup := seen[key.camel]; dup {
			return o, fmt.Errorf("%s is set twice (as %q and %q): %w", key.camel, prev, k, errdefs.ErrInvalidArgument)
		}
		seen[key.camel] = k
		if err := key.set(&o, tree[k]); err != nil {
			return o, fmt.Errorf("key %q %v: %w", k, err, errdefs.ErrInvalidArgument)
		}
	}
	return o, nil
}

// lookupKey finds the option a config key names, in either spelling.
func lookupKey(k string, body bool) (optionKey, bool) {
	for _, key := range optionKeys {
		if k == key.camel || k == key.snake {
			return key, true
		}
	}
	if body {
		for _, key := range bodyKeys {
			if k == key.camel || k == key.snake {
				return key, true
			}
		}
	}
	return optionKey{}, false
}

// knownKeys lists the CamelCase spelling of every key a config may have.
func knownKeys(body bool) string {
	var names []string
	for _, key := range optionKeys {
		names = append(names, key.camel)
	}
	if body {
		for _, key := range bodyKeys {
			names = append(names, key.camel)
		}
	}
	return strings.Join(names, ", ")
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

// checkConfigTypeURL checks the type_url of a runtimeoptions.v1.Options:
// empty, containerd.runc.v1.Options or Tether's own config type.
func checkConfigTypeURL(t string) error {
	if t != "" && t != OptionsTypeURL && t != ConfigFileTypeURL {
		return fmt.Errorf("runtime options config of type %q is not supported (want %s): %w", t, ConfigFileTypeURL, errdefs.ErrInvalidArgument)
	}
	return nil
}
