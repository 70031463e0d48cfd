package conntrace

import (
	"net"
	"syscall"

	"go.opentelemetry.io/otel/attribute"

	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/vocab"
)

// The keepalive_gap detector ([detect.KeepAliveGap]) judges a new
// connection by its real socket options. They are read here, once per new
// connection (at its GotConn, since ConnectDone carries no socket), never for
// a reused one.

// socketOptions reads the keep-alive options of the socket under c, looking
// through *tls.Conn and conntrace's dialer wrapper. Where there is no socket
// to read (net.Pipe, a custom net.Conn) or the platform is not Linux, the
// options are not Known.
func socketOptions(c net.Conn) detect.SocketOptions {
	if sc, ok := findConn[syscall.Conn](c); ok {
		return readSocketOptions(sc)
	}
	return detect.SocketOptions{}
}

// appendSocketAttrs appends the socket options of a new connection to its
// got_conn event.
func appendSocketAttrs(attrs []attribute.KeyValue, s detect.SocketOptions) []attribute.KeyValue {
	switch {
	case !s.Known:
		return append(attrs, vocab.AttrSocketKeepAlive.String("unknown"))
	case !s.KeepAlive:
		return append(attrs, vocab.AttrSocketKeepAlive.String("off"), vocab.AttrSocketUserTimeout.Float64(s.UserTimeout.Seconds()))
	default:
		return append(attrs, vocab.AttrSocketKeepAlive.String("on"),
			vocab.AttrSocketKeepAliveIdle.Float64(s.Idle.Seconds()),
			vocab.AttrSocketKeepAliveInterval.Float64(s.Interval.Seconds()),
			vocab.AttrSocketKeepAliveCount.Int(s.Count),
			vocab.AttrSocketUserTimeout.Float64(s.UserTimeout.Seconds()))
	}
}

// netConner is a net.Conn that wraps another, as *tls.Conn and
// conntrace's dialer wrapper do.
type netConner interface{ NetConn() net.Conn }

// findConn returns the first of c and the connections it wraps that is a
// T. It looks a few layers deep at most.
func findConn[T any](c net.Conn) (T, bool) {
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
