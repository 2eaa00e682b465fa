package procfs

import (
	"bytes"
	"fmt"
	"os"
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
	return parseMountinfo(data, nil)
}

// ParseMountinfoOf parses a mountinfo file as ParseMountinfo does, every
// line checked the same, but returns only the mounts of the given file
// system types. A line of another type allocates nothing: a caller that
// wants a few mounts of a long file (cgroups, at every container's start)
// makes no garbage of the others. Each Mount's strings are its own, not
// views of data. Asked for no type, it returns nothing, without reading
// data.
func ParseMountinfoOf(data []byte, fstypes ...string) ([]Mount, error) {
	if len(fstypes) == 0 {
		return nil, nil
	}
	return parseMountinfo(data, fstypes)
}

// parseMountinfo parses data, keeping the mounts of fstypes (all if nil).
func parseMountinfo(data []byte, fstypes []string) ([]Mount, error) {
	var out []Mount
	var buf [24][]byte // a line's fields, without allocating for most lines
	n := 0
	for line := range bytes.Lines(data) {
		n++
		f := appendFields(buf[:0], line)
		if len(f) == 0 {
			continue
		}
		sep := -1
		for i, field := range f {
			if len(field) == 1 && field[0] == '-' {
				sep = i
				break
			}
		}
		if sep < 6 || len(f) < sep+4 {
			return nil, fmt.Errorf("mountinfo line %d %q: malformed", n, bytes.TrimRight(line, "\n"))
		}
		if fstypes != nil && !hasType(fstypes, f[sep+1]) {
			continue
		}
		out = append(out, Mount{
			Dev:       string(f[2]),
			Root:      unescapeBytes(f[3]),
			Point:     unescapeBytes(f[4]),
			FSType:    string(f[sep+1]),
			Source:    unescapeBytes(f[sep+2]),
			SuperOpts: string(f[sep+3]),
		})
	}
	return out, nil
}

// appendFields appends the fields of line, split at ASCII white space (all
// white space in mountinfo: the kernel escapes it within a field), to dst.
func appendFields(dst [][]byte, line []byte) [][]byte {
	for {
		i := 0
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		line = line[i:]
		if len(line) == 0 {
			return dst
		}
		j := 0
		for j < len(line) && !isSpace(line[j]) {
			j++
		}
		dst = append(dst, line[:j])
		line = line[j:]
	}
}

// hasType reports whether fstype is one of fstypes.
func hasType(fstypes []string, fstype []byte) bool {
	for _, t := range fstypes {
		if t == string(fstype) {
			return true
		}
	}
	return false
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// unescapeBytes is Unescape of a field, as a string of its own.
func unescapeBytes(b []byte) string {
	if bytes.IndexByte(b, '\\') < 0 {
		return string(b)
	}
	return Unescape(string(b))
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
