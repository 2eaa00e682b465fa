package stdio

import (
	"fmt"
	"os"
	"path/filepath"
)

// openFile connects stdout and stderr to one file, opened for appending
// and created (with its directory) if needed. Writes of the two copies do
// not interleave within a write: the file is opened O_APPEND. The file is
// closed by Close, after both copies ended.
func (p *IO) openFile(out, errOut output) error {
	path := out.path
	if out.kind != kindFile {
		path = errOut.path
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("stdio: log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("stdio: open log file: %w", err)
	}
	p.file = f
	if out.kind == kindFile {
		if err := p.pipe(roleOut, &p.stdoutR, &p.stdoutW, f, nil); err != nil {
			return err
		}
	}
	if errOut.kind == kindFile {
		if err := p.pipe(roleErr, &p.stderrR, &p.stderrW, f, nil); err != nil {
			return err
		}
	}
	return nil
}
