package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/internal/paths"
)

// Type URLs of the runtime options Tether reads.
const (
	// OptionsTypeURL is containerd.runc.v1.Options.
	OptionsTypeURL = "containerd.runc.v1.Options"
	// RuntimeOptionsTypeURL is the CRI plugin's generic options, which name
	// a config file.
	RuntimeOptionsTypeURL = "runtimeoptions.v1.Options"
	// ConfigFileTypeURL is what a runtimeoptions.v1.Options type_url may
	// say about a Tether config file (empty is accepted too).
	ConfigFileTypeURL = "io.containerd.tether.v2.Config"
)

// Options are the runtime options of a container, in containerd's
// containerd.runc.v1.Options form.
type Options struct {
	BinaryName    string
	Root          string
	SystemdCgroup bool
	NoPivotRoot   bool
	NoNewKeyring  bool
	IoUID         uint32
	IoGID         uint32
	ShimCgroup    string
	CriuImagePath string
	CriuWorkPath  string
}

// ParseOptions decodes the options Any of a CreateTaskRequest, in any of
// the forms containerd sends: containerd.runc.v1.Options (runtimes named
// io.containerd.runc.*, and 2.x's BootstrapParams extensions), the legacy
// containerd.linux.runc.CreateOptions and RuncOptions of containerd 1.x's
// client, and the generic runtimeoptions.v1.Options that the CRI plugin
// and dockerd send for any other runtime type: its config_path names a TOML
// file (LoadConfigFile), or its config_body is the runtime's options table
// itself as TOML (ParseConfigBody; the CRI plugin of containerd 1.7 and
// later; dockerd can send only a config_path). A nil or empty Any means
// defaults. Unknown types, undecodable bytes and unsafe paths are
// errdefs.ErrInvalidArgument.
func ParseOptions(a *anypb.Any) (Options, error) {
	if a == nil || (a.GetTypeUrl() == "" && len(a.GetValue()) == 0) {
		return Options{}, nil
	}
	url := strings.TrimPrefix(a.GetTypeUrl(), "type.googleapis.com/")
	var (
		opts Options
		err  error
	)
	switch url {
	case OptionsTypeURL:
		var o runcoptions.Options
		if uerr := proto.Unmarshal(a.GetValue(), &o); uerr != nil {
			return Options{}, fmt.Errorf("decode %s: %v: %w", OptionsTypeURL, uerr, errdefs.ErrInvalidArgument)
		}
		opts = Options{
			BinaryName:    o.GetBinaryName(),
			Root:          o.GetRoot(),
			SystemdCgroup: o.GetSystemdCgroup(),
			NoPivotRoot:   o.GetNoPivotRoot(),
			NoNewKeyring:  o.GetNoNewKeyring(),
			IoUID:         o.GetIoUid(),
			IoGID:         o.GetIoGid(),
			ShimCgroup:    o.GetShimCgroup(),
			CriuImagePath: o.GetCriuImagePath(),
			CriuWorkPath:  o.GetCriuWorkPath(),
		}
	case LegacyCreateOptionsTypeURL:
		opts, err = decodeLegacyCreateOptions(a.GetValue())
	case LegacyRuncOptionsTypeURL:
		opts, err = decodeLegacyRuncOptions(a.GetValue())
	case RuntimeOptionsTypeURL:
		var ro runtimeoptions.Options
		if uerr := proto.Unmarshal(a.GetValue(), &ro); uerr != nil {
			return Options{}, fmt.Errorf("decode %s: %v: %w", RuntimeOptionsTypeURL, uerr, errdefs.ErrInvalidArgument)
		}
		if err := checkConfigTypeURL(ro.GetTypeUrl()); err != nil {
			return Options{}, err
		}
		switch path, body := ro.GetConfigPath(), ro.GetConfigBody(); {
		case path != "" && len(body) > 0:
			return Options{}, fmt.Errorf("runtime options name a config_path (%s) and carry a config_body; containerd sends one or the other: %w", path, errdefs.ErrInvalidArgument)
		case path != "":
			return LoadConfigFile(path)
		case len(body) > 0:
			return ParseConfigBody(body)
		default:
			return Options{}, nil
		}
	default:
		return Options{}, fmt.Errorf("runtime options of type %q are not supported (want %s, %s, %s or %s): %w",
			a.GetTypeUrl(), OptionsTypeURL, LegacyCreateOptionsTypeURL, LegacyRuncOptionsTypeURL, RuntimeOptionsTypeURL, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return Options{}, fmt.Errorf("decode %s: %w", url, err)
	}
	return opts, opts.Validate()
}

// Validate checks that the binary is a bare name or a clean absolute path and
// that the directories are clean absolute paths.
func (o Options) Validate() error {
	if b := o.BinaryName; b != "" && strings.ContainsRune(b, '/') && !paths.CleanAbs(b) {
		return fmt.Errorf("runtime binary %q must be a name or a clean absolute path: %w", b, errdefs.ErrInvalidArgument)
	}
	for _, p := range []string{o.Root, o.CriuImagePath, o.CriuWorkPath} {
		if p != "" {
			if err := paths.Check("path", p); err != nil {
				return err
			}
		}
	}
	return nil
}

// DefaultRoot is the runtime state directory containerd's runc shim uses for
// namespace ns; Tether uses the same, so that tools find the containers.
func DefaultRoot(ns string) string { return filepath.Join("/run/containerd/runc", ns) }

// savedConfig is the content of the file Save writes (the bundle's
// RuntimeConfig).
type savedConfig struct {
	Binary        string `json:"binary"`
	Root          string `json:"root"`
	SystemdCgroup bool   `json:"systemd_cgroup,omitempty"`
}

// Save records the binary, root and cgroup driver of cfg in the file path
// (the bundle's RuntimeConfig), so that `delete` after a dead server runs
// the same ones.
func (c Config) Save(path string) error {
	data, err := json.Marshal(savedConfig{c.Binary, c.Root, c.SystemdCgroup})
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("save runtime config: %w", err)
	}
	return nil
}

// LoadConfig reads what Save recorded in path (a file without a
// systemd_cgroup, as older shims wrote it, means cgroupfs). A missing file
// gives the default binary with the default root of namespace ns; so does a
// file that cannot be read or holds values validation refuses, together
// with the error.
func LoadConfig(path, ns string) (Config, error) {
	cfg := Config{Binary: DefaultBinary, Root: DefaultRoot(ns)}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("load runtime config: %w", err)
	}
	var saved savedConfig
	if err := json.Unmarshal(data, &saved); err != nil {
		return cfg, fmt.Errorf("load runtime config: %w", err)
	}
	loaded := cfg
	if saved.Binary != "" {
		loaded.Binary = saved.Binary
	}
	if saved.Root != "" {
		loaded.Root = saved.Root
	}
	loaded.SystemdCgroup = saved.SystemdCgroup
	if err := (Options{BinaryName: loaded.Binary, Root: loaded.Root}).Validate(); err != nil {
		// Never run what validation refused: fall back to the defaults.
		return cfg, fmt.Errorf("load runtime config: %w", err)
	}
	return loaded, nil
}
