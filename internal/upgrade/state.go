// Package upgrade is the hand-over of live upgrade: a running shim server
// re-executes itself, under the same pid, into the binary now installed at
// the path it was started from, and the new image resumes serving the
// connections the old one had open (docs/design.md, "Live upgrade").
//
// The package holds the mechanism only: the versioned state document that
// crosses execve (State), the dry run that asks a binary whether it can take
// a state version over (Check, Answer), the quiescing of the server's
// connections at a request boundary (Quiescer), the execve itself with the
// descriptors to pass (Exec), and the ttrpc service that triggers it
// (Service). Package bootstrap wires it into the server.
//
// Invariant: an upgrade either completes, the new image serving every
// connection the old one had and holding every container, process, exit and
// event the old one held, or is refused (or fails before execve) and leaves
// the shim as it was. What the state document carries beyond the listener
// and the connections is package bootstrap's description of the shim
// (State.Shim), opaque here.
package upgrade

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// StateVersion is the version of the state document this build writes.
// Version 1 carried the listening socket and the server's connections only;
// version 2 adds the shim's description (State.Shim: its containers,
// processes, exit monitor and undelivered events) and the descriptors it
// names (State.FDs).
const StateVersion = 2

// Reads returns the state versions this build takes over: its own, and
// version 1, which is version 2 with no shim description.
func Reads() []int { return []int{1, 2} }

// EnvState names the environment variable through which the old image tells
// the new one the descriptor of the state document. The new image unsets it
// before it starts any child.
const EnvState = "TETHER_UPGRADE_STATE"

// maxState bounds the state document a new image reads: about a hundred
// thousand undelivered events, or thousands of containers.
const maxState = 32 << 20

// ErrVersion is returned (wrapped) by Decode for a document of a version
// this build cannot read.
var ErrVersion = errors.New("unsupported upgrade state version")

// ErrNotHandedOver is returned (wrapped) when the shim holds something the
// hand-over cannot carry (a Create under way, a container being restored).
var ErrNotHandedOver = errors.New("state that this version of the hand-over cannot carry")

// State is the document the old image writes for the new one. Descriptor
// numbers are valid in the process across execve: the old image clears
// their close-on-exec flag just before execve.
type State struct {
	// Version is StateVersion of the writer.
	Version int `json:"version"`
	// Generation counts the upgrades this server went through: 1 after its
	// first.
	Generation int `json:"generation"`
	// From is the build (version string) of the image that wrote the
	// document.
	From string `json:"from"`
	// Exe is the path the server was first started from, which every later
	// upgrade re-executes.
	Exe string `json:"exe"`
	// ListenerFD is the server's listening socket.
	ListenerFD int `json:"listener_fd"`
	// Conns are the server's accepted connections, each quiesced at a
	// request boundary: every request read was answered, no byte of a
	// later one was read.
	Conns []Conn `json:"conns"`
	// Shim is the description of the shim's state besides its
	// connections (version 2), written and read by package bootstrap;
	// absent in version 1.
	Shim json.RawMessage `json:"shim,omitempty"`
	// FDs are the descriptors Shim names (handover.Files), absent in
	// version 1.
	FDs []int `json:"fds,omitempty"`
}

// Conn is one connection handed over.
type Conn struct {
	// FD is its descriptor.
	FD int `json:"fd"`
	// PeerPID is the pid of the peer when it connected, for the log.
	PeerPID int `json:"peer_pid"`
	// Replay are ttrpc request frames the old image read and did not
	// answer (a Wait for a process that has not exited), in stream id
	// order: the new image reads them first, as if they had just arrived,
	// and answers them (version 2).
	Replay [][]byte `json:"replay,omitempty"`
}

// Encode returns the document of s, which must be valid (as Decode checks).
func Encode(s State) ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// Decode parses a document. It refuses a version not in Reads
// (ErrVersion), unknown fields, and descriptors that cannot be right.
func Decode(data []byte) (State, error) {
	if len(data) > maxState {
		return State{}, fmt.Errorf("upgrade state of %d bytes, more than %d", len(data), maxState)
	}
	var head struct {
		Version json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return State{}, fmt.Errorf("upgrade state: %w", err)
	}
	v, err := strconv.Atoi(string(head.Version))
	if err != nil {
		return State{}, fmt.Errorf("upgrade state: version %q is not a number", head.Version)
	}
	if err := CanTake(v); err != nil {
		return State{}, err
	}
	var s State
	if err := DecodeStrict(data, &s); err != nil {
		return State{}, fmt.Errorf("upgrade state: %w", err)
	}
	if err := s.validate(); err != nil {
		return State{}, err
	}
	return s, nil
}

// CanTake reports whether this build can take over a state document of
// version v: nil, or an error wrapping ErrVersion.
func CanTake(v int) error {
	if !slices.Contains(Reads(), v) {
		return fmt.Errorf("%w: %d (this build reads versions %v)", ErrVersion, v, Reads())
	}
	return nil
}

// validate checks what the document promises: its version, a generation,
// descriptors above stdio and distinct, nothing its version cannot carry.
func (s State) validate() error {
	if err := CanTake(s.Version); err != nil {
		return err
	}
	if s.Generation < 1 {
		return fmt.Errorf("upgrade state: generation %d, want 1 or more", s.Generation)
	}
	if s.Exe == "" || s.Exe[0] != '/' {
		return fmt.Errorf("upgrade state: exe %q is not an absolute path", s.Exe)
	}
	if s.Version < 2 && (len(s.Shim) > 0 || len(s.FDs) > 0) {
		return fmt.Errorf("upgrade state: version %d has no shim description", s.Version)
	}
	if len(s.Shim) > 0 && !json.Valid(s.Shim) {
		return errors.New("upgrade state: the shim description is not JSON")
	}
	seen := make(map[int]bool, len(s.Conns)+len(s.FDs)+1)
	check := func(what string, fd int) error {
		if fd < 3 || fd > 1<<20 {
			return fmt.Errorf("upgrade state: %s descriptor %d out of range", what, fd)
		}
		if seen[fd] {
			return fmt.Errorf("upgrade state: descriptor %d given twice", fd)
		}
		seen[fd] = true
		return nil
	}
	if err := check("listener", s.ListenerFD); err != nil {
		return err
	}
	for _, c := range s.Conns {
		if err := check("connection", c.FD); err != nil {
			return err
		}
		if s.Version < 2 && len(c.Replay) > 0 {
			return fmt.Errorf("upgrade state: version %d replays no request", s.Version)
		}
		var last uint32
		for i, f := range c.Replay {
			id, err := checkRequestFrame(f)
			if err != nil {
				return fmt.Errorf("upgrade state: connection %d, request %d to replay: %w", c.FD, i, err)
			}
			if i > 0 && id <= last {
				return fmt.Errorf("upgrade state: connection %d: requests to replay out of stream order (%d after %d)", c.FD, id, last)
			}
			last = id
		}
	}
	for _, fd := range s.FDs {
		if err := check("shim", fd); err != nil {
			return err
		}
	}
	return nil
}

// Descriptors lists every descriptor the document names: the listener
// first, then the connections in order, then the shim description's.
func (s State) Descriptors() []int {
	fds := []int{s.ListenerFD}
	for _, c := range s.Conns {
		fds = append(fds, c.FD)
	}
	return append(fds, s.FDs...)
}

// writeMemfd puts data in a new sealed memfd, close-on-exec (Exec clears
// that), and returns it.
func writeMemfd(data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("tether-upgrade-state", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tether-upgrade-state")
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("write upgrade state: %w", err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal upgrade state: %w", err)
	}
	return f, nil
}

// Inherited reads the state document an upgrade left to this image, if
// any: it looks up EnvState, unsets it (no child must see it), reads and
// closes the descriptor it names, and decodes the document. ok is false when
// this image was not started by an upgrade.
func Inherited() (s State, ok bool, err error) {
	v, found := os.LookupEnv(EnvState)
	if !found {
		return State{}, false, nil
	}
	if err := os.Unsetenv(EnvState); err != nil {
		return State{}, true, err
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return State{}, true, fmt.Errorf("%s=%q is not a descriptor", EnvState, v)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "tether-upgrade-state")
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(io.NewSectionReader(f, 0, maxState+1), maxState+1))
	if err != nil {
		return State{}, true, fmt.Errorf("read upgrade state: %w", err)
	}
	s, err = Decode(data)
	return s, true, err
}

// checkRequestFrame checks that f is one whole ttrpc request frame within
// ttrpc's size limit, and returns its stream id.
func checkRequestFrame(f []byte) (uint32, error) {
	if len(f) < frameHeader {
		return 0, fmt.Errorf("a frame of %d bytes", len(f))
	}
	length := binary.BigEndian.Uint32(f[:4])
	if int(length) != len(f)-frameHeader || length > maxRequest {
		return 0, fmt.Errorf("a frame declaring %d bytes with %d", length, len(f)-frameHeader)
	}
	if f[8] != typeRequest {
		return 0, fmt.Errorf("a frame of type %d, not a request", f[8])
	}
	id := binary.BigEndian.Uint32(f[4:8])
	if id%2 != 1 {
		return 0, fmt.Errorf("stream id %d is not a client's (odd)", id)
	}
	return id, nil
}

// maxRequest is ttrpc's limit on a message.
const maxRequest = 4 << 20

// DecodeStrict decodes the one JSON document data into v, refusing unknown
// fields and anything after the document: the state document and every
// part of it are written by another build, and a field this build does not
// know is state it would silently drop.
func DecodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the document")
	}
	return nil
}
