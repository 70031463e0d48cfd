//go:build linux && !386 && !s390x

package sockopt

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// getsockoptTCPInfo reads TCP_INFO into info without allocating, where
// getsockopt is a system call of its own (not on 386 and s390x, where x/sys
// goes through socketcall).
func getsockoptTCPInfo(fd int, info *unix.TCPInfo) error {
	n := uint32(unsafe.Sizeof(*info))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(info)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return e
	}
	return nil
}
