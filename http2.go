package conntrace

import (
	"context"

	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// HTTP/2 and stale connections. An HTTP/2 connection is shared by all the
// requests to a host, and net/http reports each request's GotConn with reuse
// and idle time (time since its last stream), so stale reuse is detected as
// for HTTP/1.1; PutIdleConn never fires. What HTTP/2 adds is a health check:
// with http.HTTP2Config.SendPingTimeout set, a connection that has received
// no frame for that long is pinged, and closed if no answer comes within
// PingTimeout (default 15s). Pings sent before the NAT idle timeout keep the
// NAT's entry alive; a ping that goes unanswered closes a dead connection
// instead of leaving requests on it.

// CountHTTP2Errors returns a function for an HTTP/2 transport's CountError
// hook that counts each error in the conntrace.http2.errors metric, with
// error.type set to the error's name, and then calls next, if not nil, so
// an existing hook keeps working (see the example). A lost ping is counted
// as error.type=conn_close_lost_ping.
//
// Where it is called: golang.org/x/net/http2.Transport calls its CountError
// on client errors, including lost pings. net/http's own HTTP/2 client (Go
// 1.26) does not call http.HTTP2Config.CountError; only its HTTP/2 server
// does. Setting it on a Transport's HTTP2Config is harmless, but counts
// nothing there until Go wires it.
func (t *Transport) CountHTTP2Errors(next func(errType string)) func(errType string) {
	counter := t.inst.http2Errors
	return func(errType string) {
		counter.Add(context.Background(), 1, metric.WithAttributes(semconv.ErrorTypeKey.String(errType)))
		if next != nil {
			next(errType)
		}
	}
}
