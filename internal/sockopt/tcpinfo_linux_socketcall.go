//go:build linux && (386 || s390x)

package sockopt

import "golang.org/x/sys/unix"

// getsockoptTCPInfo reads TCP_INFO through x/sys, which knows socketcall.
func getsockoptTCPInfo(fd int, info *unix.TCPInfo) error {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err == nil {
		*info = *ti
	}
	return err
}
