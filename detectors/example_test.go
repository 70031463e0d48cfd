package detectors_test

import (
	"fmt"
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
