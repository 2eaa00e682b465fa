package bundle

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/containerd/errdefs"
)

// maxSpecSize bounds how much of a bundle's config.json is read. Specs with
// many mounts and a large environment stay far below it.
const maxSpecSize = 16 << 20

// Spec is what the shim reads of a bundle's OCI spec (config.json): only
// the fields it acts on. The runtime reads the whole spec itself.
type Spec struct {
	// CgroupsPath is linux.cgroupsPath: a cgroupfs path, or systemd's
	// "slice:prefix:name".
	CgroupsPath string
	// SharesPidNamespace is set when the container has no pid namespace of
	// its own (none listed, or one joined by path): its processes do not
	// die with the init.
	SharesPidNamespace bool
}

// Spec reads the bundle's OCI config. A missing config.json is
// errdefs.ErrNotFound (and os.ErrNotExist); one that is not a regular file,
// is larger than 16 MiB or is not JSON is errdefs.ErrInvalidArgument.
func (b Bundle) Spec() (Spec, error) {
	data, err := b.readConfig()
	if err != nil {
		return Spec{}, err
	}
	return parseSpec(data, b.Config())
}

// Annotations returns the annotations of the bundle's OCI config. Errors are
// those of Spec, and an annotation that is not a string is
// errdefs.ErrInvalidArgument.
func (b Bundle) Annotations() (map[string]string, error) {
	data, err := b.readConfig()
	if err != nil {
		return nil, err
	}
	var raw struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse %s: %v: %w", b.Config(), err, errdefs.ErrInvalidArgument)
	}
	return raw.Annotations, nil
}

// readConfig reads config.json, refusing what is not a regular file or is
// larger than maxSpecSize.
func (b Bundle) readConfig() ([]byte, error) {
	path := b.Config()
	// Non-blocking, so that a fifo planted as config.json is refused
	// rather than waited on.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bundle %s has no %s: %w: %w", b.dir, configFile, errdefs.ErrNotFound, err)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s): %w", path, st.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSpecSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxSpecSize {
		return nil, fmt.Errorf("%s is larger than %d bytes: %w", path, maxSpecSize, errdefs.ErrInvalidArgument)
	}
	return data, nil
}

// parseSpec decodes the fields of Spec from a config.json; path names it
// in errors.
func parseSpec(data []byte, path string) (Spec, error) {
	var raw struct {
		Linux *struct {
			CgroupsPath string `json:"cgroupsPath"`
			Namespaces  []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return Spec{}, fmt.Errorf("parse %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	var s Spec
	if raw.Linux == nil {
		return s, nil
	}
	s.CgroupsPath = raw.Linux.CgroupsPath
	s.SharesPidNamespace = true
	for _, ns := range raw.Linux.Namespaces {
		if ns.Type == "pid" {
			s.SharesPidNamespace = ns.Path != ""
			break
		}
	}
	return s, nil
}
