package detectors_test

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// A request is sent on a pooled connection that sat idle for 400s, longer
// than the 350s NAT idle timeout, where the kernel cannot be read. StaleReuse
// asks to be woken after the hang timeout; no response has come by then, so
// it raises a hang alert.
func ExampleStaleReuse_Observe() {
	d := &detectors.StaleReuse{} // defaults: 350s NAT idle timeout, 10s hang timeout
	sent := time.Date(2024, time.March, 1, 12, 0, 0, 0, time.UTC)
	tl := &detectors.Timeline{
		Host:   "api.example.com",
		Port:   443,
		Method: "GET",
		Start:  sent.Add(-time.Millisecond),
		Conns: []detectors.Conn{{
			At:         sent,
			Reused:     true,
			WasIdle:    true,
			IdleTime:   400 * time.Second,
			RemoteAddr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 443},
		}},
	}

	_, wake := d.Observe(sent, detectors.StepGotConn, tl)
	fmt.Println("wake after:", wake)

	alerts, _ := d.Observe(sent.Add(wake), detectors.StepTimer, tl)
	for _, a := range alerts {
		fmt.Println(a.Detector, a.Outcome, a.Level)
		fmt.Println("idle:", a.IdleTime, "threshold:", a.Threshold, "waited:", a.Waited)
		fmt.Println(a.Message)
	}
	// Output:
	// wake after: 10s
	// stale_reuse hang ERROR
	// idle: 6m40s threshold: 5m50s waited: 10s
	// GET api.example.com:443 reused a connection (to 10.0.0.7:443) that had sat idle 6m40s (NAT idle timeout: 5m50s), and has had no response for 10s since the request was sent on it: a NAT or firewall on the path has most likely forgotten the connection and drops its packets silently, so the request will hang until its deadline
}

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
	// INFO idle_conn_timeout: Set IdleConnTimeout below the NAT idle timeout, for example 5m15s
	// WARN response_header_timeout: Set ResponseHeaderTimeout to the longest time the servers may take to start answering, or give every request a deadline
	// WARN tls_handshake_timeout: Set TLSHandshakeTimeout, for example 10s as http.DefaultTransport does
	// WARN http2_ping: Set http.Transport.HTTP2 = &http.HTTP2Config{SendPingTimeout: 2m55s}: a connection without frames for that long is pinged, which keeps the NAT's entry alive, and closed if the ping is not answered within PingTimeout (default 15s)
}
