package detectors_test

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// Audit a transport built with only a per-host pool size: against AWS NAT
// Gateway's 350s it finds the missing timeouts and HTTP/2 health check; the
// pool keeping idle connections forever is only Info, because the zero
// net.Dialer net/http uses sends keep-alive probes after 15s.
func ExampleAudit() {
	t := &http.Transport{MaxIdleConnsPerHost: 32}
	for _, f := range detectors.Audit(t, 350*time.Second) {
		fmt.Printf("%s %s: %s\n", f.Severity, f.Name, f.Advice)
	}
	// Output:
	// INFO idle_conn_timeout: Set http.Transport.IdleConnTimeout below 5m50s (for example 5m15s)
	// WARN response_header_timeout: Bound the wait with http.Transport.ResponseHeaderTimeout (the longest time the servers may take to start answering) or a request deadline
	// WARN tls_handshake_timeout: Set TLSHandshakeTimeout, for example 10s as http.DefaultTransport does
	// WARN http2_ping: Set http.Transport.HTTP2 = &http.HTTP2Config{SendPingTimeout: 2m55s}: a connection without frames for that long is pinged, which keeps the NAT's entry alive, and closed if the ping is not answered within PingTimeout (default 15s)
}

// A DialContext is a function whose dialer Audit cannot inspect;
// AuditDialer is told the dialer. This one turns TCP keep-alive off, and
// the pool keeps idle connections forever (IdleConnTimeout 0), so nothing
// stops a pooled connection from outliving the NAT.
func ExampleAuditDialer() {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: -1}
	t := &http.Transport{
		DialContext:           dialer.DialContext,
		MaxIdleConnsPerHost:   32,
		ResponseHeaderTimeout: 30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
	}
	for _, f := range detectors.AuditDialer(t, dialer, 350*time.Second) {
		fmt.Printf("%s %s (%s): %s\n", f.Severity, f.Name, f.Setting, f.What)
	}
	// Output:
	// WARN idle_conn_timeout (http.Transport.IdleConnTimeout): IdleConnTimeout is 0 (no limit), not below the NAT idle timeout of 5m50s
	// WARN dialer_keepalive (net.Dialer.KeepAlive): TCP keep-alive of the given net.Dialer is off: the NAT idle timeout of 5m50s can pass without a probe
}
