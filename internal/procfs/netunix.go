package procfs

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
)

// UnixSocket is a line of /proc/net/unix.
type UnixSocket struct {
	Inode uint64
	// Path is the bound path; "@..." for an abstract socket, "" for none.
	Path string
	// Listening: the socket accepts connections (__SO_ACCEPTCON).
	Listening bool
}

// soAcceptCon is the __SO_ACCEPTCON bit of /proc/net/unix's Flags.
const soAcceptCon = 0x10000

// UnixSockets reads the unix sockets of this network namespace.
func UnixSockets() ([]UnixSocket, error) {
	data, err := os.ReadFile(Root + "/net/unix")
	if err != nil {
		return nil, err
	}
	return ParseNetUnix(data), nil
}

// ParseNetUnix parses /proc/net/unix: "Num RefCount Protocol Flags Type St
// Inode [Path]" after a header line. Lines it cannot read are skipped; a
// path keeps its spaces.
func ParseNetUnix(data []byte) []UnixSocket {
	var out []UnixSocket
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	first := true
	for sc.Scan() {
		line := sc.Text()
		if first {
			first = false
			if strings.HasPrefix(line, "Num") {
				continue
			}
		}
		rest := line
		var f [7]string
		ok := true
		for i := range f {
			rest = strings.TrimLeft(rest, " ")
			end := strings.IndexByte(rest, ' ')
			if end < 0 {
				end = len(rest)
			}
			f[i], rest = rest[:end], rest[end:]
			if f[i] == "" {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err != nil {
			continue
		}
		ino, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			continue
		}
		out = append(out, UnixSocket{
			Inode:     ino,
			Path:      strings.TrimPrefix(rest, " "),
			Listening: flags&soAcceptCon != 0,
		})
	}
	return out
}
