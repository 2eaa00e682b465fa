package upgrade

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// CheckFlag is the first argument of the dry run: `<binary> -upgrade-check
// <state version> <build of the asking image>`.
const CheckFlag = "-upgrade-check"

// checkTimeout bounds the dry run.
const checkTimeout = 10 * time.Second

// maxAnswer bounds what the dry run may print.
const maxAnswer = 64 << 10

// Answer is what a binary prints, as one JSON object, to the dry run.
type Answer struct {
	// Shim is "containerd-shim-tether-v2": the binary is a Tether shim.
	Shim string `json:"shim"`
	// Version is its build.
	Version string `json:"version"`
	// Reads lists the state versions it can take over.
	Reads []int `json:"reads"`
	// OK tells whether it takes over the version asked.
	OK bool `json:"ok"`
	// Reason says why not, when OK is false.
	Reason string `json:"reason,omitempty"`
}

// shimName is Answer.Shim of a Tether shim.
const shimName = "containerd-shim-tether-v2"

// RunCheck implements the dry run in the new binary: args are what follows
// CheckFlag. It writes the Answer to out and returns the exit code: 0 if this
// build takes the state version over, 1 if not, 2 on bad arguments.
func RunCheck(args []string, version string, out io.Writer) int {
	a := Answer{Shim: shimName, Version: version, Reads: Reads()}
	if len(args) != 2 {
		a.Reason = fmt.Sprintf("want %s <state version> <build>, got %d arguments", CheckFlag, len(args))
		_ = json.NewEncoder(out).Encode(a)
		return 2
	}
	v, err := strconv.Atoi(args[0])
	if err != nil {
		err = fmt.Errorf("state version %q is not a number", args[0])
	} else {
		err = CanTake(v)
	}
	return answer(out, a, err)
}

// answer completes a with err (ok without one), writes it to out and
// returns the dry run's exit code: 0 if ok, 1 if not.
func answer(out io.Writer, a Answer, err error) int {
	a.OK = err == nil
	if err != nil {
		a.Reason = err.Error()
	}
	_ = json.NewEncoder(out).Encode(a)
	if !a.OK {
		return 1
	}
	return 0
}

// ErrRefused is wrapped by every error of an upgrade that was refused before
// anything changed.
var ErrRefused = errors.New("upgrade refused")

// Binary is the new binary, opened: the dry run and execve both go through
// its descriptor, so the binary that answered is the one executed even if
// the path changes in between.
type Binary struct {
	// Path is where it was opened.
	Path string
	// Answer is its answer to the dry run.
	Answer Answer
	f      *os.File
}

// FD is the descriptor to execute (through /proc/self/fd).
func (b *Binary) FD() int { return int(b.f.Fd()) }

// Close closes the descriptor.
func (b *Binary) Close() error { return b.f.Close() }

// Probe opens the binary at path and asks it, by a dry run, whether it
// takes over StateVersion from this build (version). It refuses (ErrRefused)
// a binary that is missing, not a regular executable ELF file, not a Tether
// shim, or that cannot read the state version; the caller must Close the
// returned Binary.
func Probe(ctx context.Context, path, version string) (*Binary, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: new binary: %w", ErrRefused, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: new binary: %w", ErrRefused, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		f.Close()
		return nil, fmt.Errorf("%w: new binary %s is not an executable file (mode %v)", ErrRefused, path, fi.Mode())
	}
	// execve through /proc/self/fd of a close-on-exec descriptor works for
	// an ELF binary only: an interpreter could not open a script's path,
	// and the shim would be gone.
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 0); err != nil || string(magic[:]) != "\x7fELF" {
		f.Close()
		return nil, fmt.Errorf("%w: new binary %s is not an ELF executable (a script cannot be re-executed in place)", ErrRefused, path)
	}
	a, stderr, runErr, err := dryRun(ctx, f, nil, CheckFlag, strconv.Itoa(StateVersion), version)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: new binary %s gave no answer to %s (not a Tether shim with live upgrade?): %v: %q",
			ErrRefused, path, CheckFlag, runErr, stderr)
	}
	if !a.OK || runErr != nil {
		f.Close()
		return nil, fmt.Errorf("%w: new binary %s (version %s, reads state versions %v) cannot take over state version %d: %s",
			ErrRefused, path, a.Version, a.Reads, StateVersion, a.Reason)
	}
	return &Binary{Path: path, Answer: a, f: f}, nil
}

// limited is a writer that keeps the first n bytes.
type limited struct {
	w io.Writer
	n int
}

// Write keeps what fits and reports all of p written.
func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(l.n, len(p))
		l.n -= k
		_, _ = l.w.Write(p[:k])
	}
	return len(p), nil
}

// CheckStateFlag is the first argument of the second dry run: the new
// binary reads the very state document it is to take over on its stdin and
// answers whether it can (see RunCheckState).
const CheckStateFlag = "-upgrade-check-state"

// RunCheckState implements the second dry run in the new binary: it reads a
// state document from in, decodes it (Decode) and gives it to validate,
// which checks the shim description as the new image would before adopting
// it, without taking any descriptor. It writes an Answer to out and returns
// the exit code: 0 if the document would be taken over, 1 if not.
func RunCheckState(in io.Reader, version string, validate func(State) error, out io.Writer) int {
	a := Answer{Shim: shimName, Version: version, Reads: Reads()}
	data, err := io.ReadAll(io.LimitReader(in, maxState+1))
	if err == nil {
		var s State
		if s, err = Decode(data); err == nil && validate != nil {
			err = validate(s)
		}
	}
	return answer(out, a, err)
}

// CheckState runs the second dry run: it gives the new binary the state
// document it is about to take over and fails unless the binary answers
// that it can read every part of it. It runs after the shim is quiesced, so
// a binary that would fail after execve with the shim's containers is
// caught while the old image can still serve on.
func (b *Binary) CheckState(ctx context.Context, doc []byte) error {
	a, stderr, runErr, err := dryRun(ctx, b.f, doc, CheckStateFlag)
	if err != nil {
		return fmt.Errorf("new binary %s gave no answer to %s: %v: %q", b.Path, CheckStateFlag, runErr, stderr)
	}
	if !a.OK || runErr != nil {
		return fmt.Errorf("new binary %s (version %s) cannot take this shim's state over: %s", b.Path, a.Version, a.Reason)
	}
	return nil
}

// dryRun runs the binary open as f with args (10 s bound, stdin from
// stdin if not nil) and decodes its Answer. err is set when it gave none
// (not a Tether shim); runErr is how it ran, stderr what it said.
func dryRun(ctx context.Context, f *os.File, stdin []byte, args ...string) (a Answer, stderr []byte, runErr, err error) {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	var stdout, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.Stdout = &limited{w: &stdout, n: maxAnswer}
	cmd.Stderr = &limited{w: &errOut, n: maxAnswer}
	cmd.Env = []string{"GOMAXPROCS=1"}
	// Its output goes through pipes: a binary that leaves a child holding
	// them must not keep Run (and the exit monitor's Hold) past ctx.
	cmd.WaitDelay = time.Second
	runErr = cmd.Run()
	if err = json.Unmarshal(stdout.Bytes(), &a); err == nil && a.Shim != shimName {
		err = fmt.Errorf("answer of %q, not %s", a.Shim, shimName)
	}
	return a, bytes.TrimSpace(errOut.Bytes()), runErr, err
}
