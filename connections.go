package conntrace

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/conntrace/conntrace/internal/sockopt"
)

// Connection lifetime metrics: the semconv instruments
// http.client.open_connections{http.connection.state} and
// http.client.connection.duration need to see a connection open and close,
// which httptrace does not report. So they are observed at the dialer: a
// wrapped DialContext counts each connection it returns, as idle, and its
// Close removes it and records its lifetime. The Transport's GotConn hook
// marks it active while requests use it, and their end marks it idle
// again.

// DialFunc is the signature of http.Transport.DialContext and
// net.Dialer.DialContext.
type DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// WrapDialContext returns a DialFunc for http.Transport.DialContext that
// dials with dial (nil means a zero net.Dialer, as http.Transport uses when
// its DialContext is nil) and reports every connection it returns in t's
// http.client.open_connections and, once closed, if it carried at least
// one request, in http.client.connection.duration (from dial to close),
// with the server.address and server.port
// of the dialled address (the proxy's, behind a proxy). With
// [WithNATKeepAlive] it also sets each connection's TCP keep-alive below
// the path's idle timeout.
//
// Use it when you build the base transport yourself, before its first
// request, as the example shows.
//
// Trade-offs: the returned connections are wrapped, so a type assertion to
// *net.TCPConn on them fails (their NetConn method returns the dialled
// connection; conntrace reads socket options through it). Setting
// DialContext turns off net/http's automatic HTTP/2 unless
// ForceAttemptHTTP2 is set. A connection counts as active only while a
// request through t uses it: requests sent through the base directly leave
// it counted as idle. Connections of a DialTLSContext are not seen, and
// behind a SOCKS5 proxy connections are counted but stay idle (net/http
// wraps them in a type conntrace cannot see through). TLS, HTTP/2 and HTTP
// proxies work through it.
func (t *Transport) WrapDialContext(dial DialFunc) DialFunc {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	in := t.inst
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil || c == nil {
			return c, err
		}
		t.cure.setKeepAlive(c, addr) // WithNATKeepAlive (cure.go)
		return newTrackedConn(c, in, addr), nil
	}
}

// closedBit marks a trackedConn closed in its state.
const closedBit = 1 << 62

// trackedConn is a dialled connection counted in the open-connections
// gauge. state is the number of requests using it (0: idle), with
// closedBit once Close has removed it from the gauge; every change is one
// CompareAndSwap, and its gauge update follows from it, so concurrent
// changes leave the gauge right.
type trackedConn struct {
	net.Conn
	in     *instruments
	start  time.Time
	state  atomic.Int64
	used   atomic.Bool   // it carried a request: only then is its lifetime recorded
	idle   attribute.Set // state idle + server address and port
	active attribute.Set
	server attribute.Set // server address and port
}

func newTrackedConn(c net.Conn, in *instruments, addr string) *trackedConn {
	tc := &trackedConn{Conn: c, in: in, start: time.Now()}
	var kvs []attribute.KeyValue
	if host, port, err := net.SplitHostPort(addr); err == nil {
		kvs = append(kvs, semconv.ServerAddress(host))
		if p, err := strconv.Atoi(port); err == nil {
			kvs = append(kvs, semconv.ServerPort(p))
		}
	} else {
		kvs = append(kvs, semconv.ServerAddress(addr))
	}
	// attribute.NewSet sorts the slice it is given: each set gets its own.
	with := func(kv attribute.KeyValue) []attribute.KeyValue { return append([]attribute.KeyValue{kv}, kvs...) }
	tc.idle = attribute.NewSet(with(connState(httpconv.ConnectionStateIdle))...)
	tc.active = attribute.NewSet(with(connState(httpconv.ConnectionStateActive))...)
	tc.server = attribute.NewSet(kvs...)
	in.open.AddSet(context.Background(), 1, tc.idle)
	return tc
}

func connState(s httpconv.ConnectionStateAttr) attribute.KeyValue {
	return attribute.String("http.connection.state", string(s))
}

// NetConn returns the dialled connection.
func (c *trackedConn) NetConn() net.Conn { return c.Conn }

// acquire marks c in use by one more request. It is safe on a nil c.
func (c *trackedConn) acquire() {
	if c == nil {
		return
	}
	for {
		v := c.state.Load()
		if v&closedBit != 0 {
			return
		}
		if c.state.CompareAndSwap(v, v+1) {
			c.used.Store(true)
			if v == 0 {
				c.move(c.idle, c.active)
			}
			return
		}
	}
}

// release marks c in use by one request fewer. It is safe on a nil c.
func (c *trackedConn) release() {
	if c == nil {
		return
	}
	for {
		v := c.state.Load()
		if v&closedBit != 0 || v == 0 {
			return
		}
		if c.state.CompareAndSwap(v, v-1) {
			if v == 1 {
				c.move(c.active, c.idle)
			}
			return
		}
	}
}

func (c *trackedConn) move(from, to attribute.Set) {
	ctx := context.Background()
	c.in.open.AddSet(ctx, -1, from)
	c.in.open.AddSet(ctx, 1, to)
}

// Close removes c from the gauge, records its lifetime if it carried a
// request (semconv: "successfully established HTTP connections"; HTTP/2
// dials one connection per waiting request and closes the spares unused),
// and closes it.
func (c *trackedConn) Close() error {
	for {
		v := c.state.Load()
		if v&closedBit != 0 {
			break
		}
		if c.state.CompareAndSwap(v, v|closedBit) {
			ctx := context.Background()
			if v == 0 {
				c.in.open.AddSet(ctx, -1, c.idle)
			} else {
				c.in.open.AddSet(ctx, -1, c.active)
			}
			if c.used.Load() {
				c.in.duration.RecordSet(ctx, time.Since(c.start).Seconds(), c.server)
			}
			break
		}
	}
	return c.Conn.Close()
}

// ReadFrom keeps the dialled connection's io.ReaderFrom (sendfile, splice
// for request bodies) reachable through the wrapper.
func (c *trackedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// trackedOf returns the trackedConn under c, or nil.
func trackedOf(c net.Conn) *trackedConn {
	tc, _ := sockopt.Find[*trackedConn](c)
	return tc
}
