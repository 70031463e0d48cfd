package sockopt

import (
	"net"
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

// SetKeepAlive writes o's keep-alive options to the socket under c (looking
// through *tls.Conn and conntrace's dialer wrapper), in the order that
// makes them take effect at once: turning keep-alive on, SO_KEEPALIVE
// first, then TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT, so that an idle
// time shorter than the socket's silence so far sends a probe now (setting
// TCP_KEEPIDLE on a socket with keep-alive on re-arms its timer); turning
// it off, the times first and SO_KEEPALIVE last, so that a socket restored
// to its own options is left exactly as they were. A zero Idle, Interval
// or Count is left as it is. Only what o says is written: o need not be
// Known.
func SetKeepAlive(c net.Conn, o detect.SocketOptions) error {
	sc, ok := Find[syscall.Conn](c)
	if !ok {
		return errNoSocket
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	set := func(fd, level, opt, v int) {
		if serr == nil {
			serr = unix.SetsockoptInt(fd, level, opt, v)
		}
	}
	times := func(fd int) {
		if o.Idle > 0 {
			set(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs(o.Idle))
		}
		if o.Interval > 0 {
			set(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs(o.Interval))
		}
		if o.Count > 0 {
			set(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, o.Count)
		}
	}
	cerr := raw.Control(func(fd uintptr) {
		f := int(fd)
		if o.KeepAlive {
			set(f, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
			times(f)
			return
		}
		times(f)
		set(f, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
	})
	if cerr != nil {
		return cerr
	}
	return serr
}

// secs is d in whole seconds, rounded up, at least 1: what the kernel
// counts keep-alive in.
func secs(d time.Duration) int {
	return max(int((d+time.Second-1)/time.Second), 1)
}
