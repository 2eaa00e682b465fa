//go:build linux && (amd64 || arm64)

package exits

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfo is the kernel's siginfo_t as filled by waitid for SIGCHLD, laid out
// for linux/amd64 and linux/arm64 (64-bit: the union after si_code is 8-byte
// aligned, hence the padding). Other architectures need their own layout
// (mips swaps si_errno and si_code; 32-bit ones have no padding).
type siginfo struct {
	Signo  int32  // si_signo @0
	Errno  int32  // si_errno @4
	Code   int32  // si_code @8: CLD_EXITED, CLD_KILLED, CLD_DUMPED
	_      int32  // padding @12
	Pid    int32  // si_pid @16; 0 if WNOHANG found nothing
	UID    uint32 // si_uid @20
	Status int32  // si_status @24: exit code or signal number
	_      [128 - 28]byte
}

// waitid is the raw waitid(2) system call (without rusage), retried on EINTR.
// info must be zeroed by the caller so that si_pid reads 0 when WNOHANG finds
// no exited child.
func waitid(idtype, id int, info *siginfo, options int) error {
	for {
		_, _, e := unix.Syscall6(unix.SYS_WAITID, uintptr(idtype), uintptr(id),
			uintptr(unsafe.Pointer(info)), uintptr(options), 0, 0)
		switch {
		case e == 0:
			return nil
		case errors.Is(e, unix.EINTR):
			continue
		default:
			return e
		}
	}
}
