package handover

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAddKeepsNonBlockingAndTakeRestoresCloexec: a pipe handed over stays
// in the netpoller (a deadline works on the taken file), the duplicate is
// close-on-exec until taken, and Take makes it close-on-exec again.
func TestAddKeepsNonBlockingAndTakeRestoresCloexec(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var h Files
	fd, err := h.Add(r)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.FDs(); len(got) != 1 || got[0] != fd {
		t.Fatalf("FDs() = %v, want [%d]", got, fd)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("duplicate flags %#x (%v), want close-on-exec", flags, err)
	}
	// What the upgrade does just before execve.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
		t.Fatal(err)
	}
	f, err := Take(fd, "stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("taken descriptor flags %#x, want close-on-exec", flags)
	}
	if st, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); st&unix.O_NONBLOCK == 0 {
		t.Fatalf("status flags %#x, want O_NONBLOCK kept", st)
	}
	if err := f.SetReadDeadline(time.Now()); err != nil {
		t.Fatalf("deadline on the taken pipe: %v (not in the netpoller)", err)
	}
	if _, err := f.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v, want ErrDeadlineExceeded", err)
	}
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	// The original still works: the hand-over did not change it.
	buf := make([]byte, 1)
	if n, err := r.Read(buf); n != 1 || err != nil {
		t.Fatalf("read original: %d, %v", n, err)
	}
}

func TestTakeRefusesBadDescriptors(t *testing.T) {
	for _, fd := range []int{-1, 0, 2, maxFD + 1, 999999} {
		if _, err := Take(fd, "x"); !errors.Is(err, ErrBadFD) {
			t.Errorf("Take(%d) = %v, want ErrBadFD", fd, err)
		}
	}
}

func TestCloseClosesDuplicates(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var h Files
	fd, err := h.Add(w)
	if err != nil {
		t.Fatal(err)
	}
	fd2, err := h.AddFD(int(fd))
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	for _, d := range []int{fd, fd2} {
		if _, err := unix.FcntlInt(uintptr(d), unix.F_GETFD, 0); err != unix.EBADF {
			t.Errorf("descriptor %d after Close: %v, want EBADF", d, err)
		}
	}
	if len(h.FDs()) != 0 {
		t.Errorf("FDs after Close = %v", h.FDs())
	}
}

// TestCloseUntakenClosesOnlyWhatNoPartTook: after an upgrade's execve every
// handed descriptor is without close-on-exec; Take sets it again, and
// CloseUntaken closes the rest.
func TestCloseUntakenClosesOnlyWhatNoPartTook(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var h Files
	taken, err := h.Add(r)
	if err != nil {
		t.Fatal(err)
	}
	left, err := h.Add(w)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range h.FDs() { // what upgrade.Exec does
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Take(taken, "taken")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := CloseUntaken(h.FDs()); n != 1 {
		t.Fatalf("CloseUntaken closed %d, want the one not taken", n)
	}
	if _, err := unix.FcntlInt(uintptr(left), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("the descriptor no part took: %v, want closed", err)
	}
	if _, err := unix.FcntlInt(uintptr(taken), unix.F_GETFD, 0); err != nil {
		t.Errorf("the taken descriptor: %v, want open", err)
	}
}
