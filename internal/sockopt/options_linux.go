package sockopt

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conntrace/conntrace/internal/detect"
)

// readOptions reads the keep-alive options of c's socket through
// syscall.RawConn, as the kernel holds them: five getsockopt calls. A
// failed read gives options that are not Known.
func readOptions(c syscall.Conn) detect.SocketOptions {
	raw, err := c.SyscallConn()
	if err != nil {
		return detect.SocketOptions{}
	}
	var s detect.SocketOptions
	var on, idle, intvl, cnt, user int
	cerr := raw.Control(func(fd uintptr) {
		f := int(fd)
		if on, err = unix.GetsockoptInt(f, unix.SOL_SOCKET, unix.SO_KEEPALIVE); err != nil {
			return
		}
		if idle, err = unix.GetsockoptInt(f, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); err != nil {
			return
		}
		if intvl, err = unix.GetsockoptInt(f, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL); err != nil {
			return
		}
		if cnt, err = unix.GetsockoptInt(f, unix.IPPROTO_TCP, unix.TCP_KEEPCNT); err != nil {
			return
		}
		user, err = unix.GetsockoptInt(f, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	})
	if cerr != nil || err != nil {
		return detect.SocketOptions{}
	}
	s.Known = true
	s.KeepAlive = on != 0
	s.Idle = time.Duration(idle) * time.Second
	s.Interval = time.Duration(intvl) * time.Second
	s.Count = cnt
	s.UserTimeout = time.Duration(user) * time.Millisecond
	return s
}
