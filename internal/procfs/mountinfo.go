package procfs

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Mount is one line of a mountinfo file (proc(5)).
type Mount struct {
	// Dev is major:minor, Root the mount's root within its filesystem,
	// Point the mount point (both unescaped).
	Dev, Root, Point string
	// FSType, Source and SuperOpts follow the " - " separator.
	FSType, Source, SuperOpts string
}

// Mounts reads this process's mounts (/proc/self/mountinfo).
func Mounts() ([]Mount, error) {
	data, err := os.ReadFile(Root + "/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return ParseMountinfo(data)
}

// ParseMountinfo parses a mountinfo file: "id parent major:minor root point
// options [optional...] - fstype source superoptions". Blank lines are
// skipped; a line without its separator or fields is an error.
func ParseMountinfo(data []byte) ([]Mount, error) {
	var out []Mount
	for i, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if sep < 6 || len(f) < sep+4 {
			return nil, fmt.Errorf("mountinfo line %d %q: malformed", i+1, line)
		}
		out = append(out, Mount{
			Dev:       f[2],
			Root:      Unescape(f[3]),
			Point:     Unescape(f[4]),
			FSType:    f[sep+1],
			Source:    Unescape(f[sep+2]),
			SuperOpts: f[sep+3],
		})
	}
	return out, nil
}

// Unescape undoes the octal escapes (\040 for a space) of mountinfo.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
