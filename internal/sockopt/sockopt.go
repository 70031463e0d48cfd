// Package sockopt reads what the kernel holds for a connection's socket:
// its keep-alive options (for keepalive_gap) and TCP_INFO (for
// stale_reuse). It looks through the wrappers a connection comes in:
// *tls.Conn and conntrace's dialer wrapper, both of which have a NetConn
// method. Outside Linux it reads nothing, and says so.
package sockopt

import (
	"errors"
	"net"
	"syscall"

	"github.com/conntrace/conntrace/internal/detect"
)

// Options reads the keep-alive options of the socket under c. Where there
// is no socket to read (net.Pipe, a custom net.Conn) or the platform is not
// Linux, the options are not Known.
func Options(c net.Conn) detect.SocketOptions {
	if sc, ok := Find[syscall.Conn](c); ok {
		return readOptions(sc)
	}
	return detect.SocketOptions{}
}

// netConner is a net.Conn that wraps another, as *tls.Conn and
// conntrace's dialer wrapper do.
type netConner interface{ NetConn() net.Conn }

// Find returns the first of c and the connections it wraps that is a T. It
// looks a few layers deep at most.
func Find[T any](c net.Conn) (T, bool) {
	for range 4 {
		if t, ok := c.(T); ok {
			return t, true
		}
		w, ok := c.(netConner)
		if !ok {
			break
		}
		if c = w.NetConn(); c == nil {
			break
		}
	}
	var zero T
	return zero, false
}

var (
	errNoSocket    = errors.New("conntrace: no socket under the connection")
	errUnsupported = errors.New("conntrace: socket options are not written on this platform")
)
