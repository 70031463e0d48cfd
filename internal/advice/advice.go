// Package advice is what conntrace tells people to change, written once:
// the alerts, the audit, conntrace probe and the docs take their settings
// and their words from here, so that a fact about Go's keep-alive is stated
// in one place.
package advice

import (
	"fmt"
	"net"
	"strconv"
	"time"
)

// DefaultNATIdleTimeout is AWS NAT Gateway's idle timeout (350 s). Azure NAT
// Gateway defaults to 4 min, GCP Cloud NAT to 20 min for established TCP
// flows.
const DefaultNATIdleTimeout = 350 * time.Second

// Go's keep-alive defaults (net/dial.go, Go 1.23 and later): a Dialer
// whose KeepAlive is zero, or whose KeepAliveConfig leaves Idle or
// Interval zero, gets these; http.DefaultTransport's dialer sets KeepAlive
// to DefaultTransportKeepAlive, which is the idle time only. KeepAliveNote
// says the same in words; TestSocketOptions (internal/sockopt) pins them on
// real sockets.
const (
	GoKeepAliveIdle           = 15 * time.Second
	GoKeepAliveInterval       = 15 * time.Second
	DefaultTransportKeepAlive = 30 * time.Second
)

// IdleConnTimeoutBelow is the IdleConnTimeout suggested for a path whose
// connections must stay idle less than limit: a tenth below it.
func IdleConnTimeoutBelow(limit time.Duration) time.Duration {
	return limit - limit/10
}

// IdleConnTimeout is the pool setting that retires connections before a
// path that forgets them after limit does: "http.Transport.IdleConnTimeout
// below 5m50s (for example 5m15s)". It is a phrase, for the caller's verb.
func IdleConnTimeout(limit time.Duration) string {
	return fmt.Sprintf("http.Transport.IdleConnTimeout below %s (for example %s)", Round(limit), Round(IdleConnTimeoutBelow(limit)))
}

// KeepAliveEvery is the keep-alive idle time and interval (or HTTP/2 ping
// interval) suggested for a path whose connections must stay idle less than
// limit: half of it, in whole seconds (the kernel counts keep-alive in
// seconds, and Go rounds up), at least one second.
// conntrace probe, which has measured the path's bracket itself, keeps
// its probes only a tenth below it instead (probe.Advice), as it does the
// IdleConnTimeout.
func KeepAliveEvery(limit time.Duration) time.Duration {
	return max((limit / 2).Truncate(time.Second), time.Second)
}

// KeepAliveSetting is the dialer setting that keeps a connection alive
// through limit: probes that start, and repeat, within it. Linux sends the
// next probe an Interval after the last, so both are set.
func KeepAliveSetting(limit time.Duration) string {
	ka := KeepAliveEvery(limit)
	return fmt.Sprintf("net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: %s, Interval: %s}}", ka, ka)
}

// KeepAliveNote is why the setting has both fields. Checked against
// net/dial.go, net/tcpsock.go and net/tcpsockopt_unix.go (Go 1.26), and in
// the NAT lab: keep-alive is on unless Dialer.KeepAlive < 0 with
// KeepAliveConfig.Enable false, at GoKeepAliveIdle and GoKeepAliveInterval
// (http.DefaultTransport: DefaultTransportKeepAlive idle); Go rounds both
// up to whole seconds.
const KeepAliveNote = "Dialer.KeepAlive alone sets only Idle; Go's defaults are 15s idle and 15s interval, " +
	"30s idle in http.DefaultTransport; a negative Dialer.KeepAlive turns probes off"

// KeepAliveHelps reports whether TCP keep-alive can keep a connection
// alive through limit: probes count whole seconds, so only a limit above
// one second leaves room for one.
func KeepAliveHelps(limit time.Duration) bool { return limit > time.Second }

// Cure is the advice that keeps a path's pooled connections from going
// stale when it forgets connections idle for limit: retire them before,
// or keep them alive with probes (only where limit leaves room for one).
// It is a sentence without its final period. The stale_reuse and
// keepalive_gap alerts give it.
func Cure(limit time.Duration) string {
	s := "Set " + IdleConnTimeout(limit)
	if KeepAliveHelps(limit) {
		s += fmt.Sprintf(", or keep it alive with TCP keep-alive probes more often than that: %s (%s)", KeepAliveSetting(limit), KeepAliveNote)
	}
	return s
}

// HTTP2Ping is the HTTP/2 health check that keeps a connection alive
// through limit: "http.Transport.HTTP2 = &http.HTTP2Config{SendPingTimeout:
// 2m55s}". It is a phrase, for the caller's verb.
func HTTP2Ping(limit time.Duration) string {
	return fmt.Sprintf("http.Transport.HTTP2 = &http.HTTP2Config{SendPingTimeout: %s}", KeepAliveEvery(limit))
}

// HTTP2PingNote is what the HTTP/2 health check does (net/http's
// HTTP2Config, Go 1.24 and later; the PingTimeout default is its own).
const HTTP2PingNote = "a connection without frames for that long is pinged, which keeps the NAT's entry alive, " +
	"and closed if the ping is not answered within PingTimeout (default 15s)"

// BoundWait is the advice that caps how long a request can hang, whatever
// the cause: the stale_reuse alerts and the audit give it.
const BoundWait = "Bound the wait with http.Transport.ResponseHeaderTimeout (the longest time the servers may take " +
	"to start answering) or a request deadline"

// PoolSize is the advice for an idle pool smaller than the concurrency;
// atLeast says how large, in words ("8, the peak concurrency seen"). It is
// a sentence without its final period. The pool_overflow alert and the
// audit give it.
func PoolSize(atLeast string) string {
	return "Set http.Transport.MaxIdleConnsPerHost to at least " + atLeast +
		", and keep http.Transport.MaxIdleConns (0: no limit) at least the sum over all hosts"
}

// DrainBody is the advice for a response body closed before EOF, which
// costs net/http the connection: the body_not_drained alert gives it.
const DrainBody = "Read the body to EOF before closing it: io.Copy(io.Discard, res.Body), then res.Body.Close(). " +
	"A json.Decoder stops at the end of the value and leaves the rest unread, so drain after Decode too. " +
	"If the rest may be large, drain a bounded amount (io.CopyN(io.Discard, res.Body, 64<<10)): " +
	"past that, closing and dialling again is the cheaper choice."

// Replayable says which requests net/http sends again on another
// connection after a reused one failed (Request.isReplayable and
// rewindBody, Go 1.26), and which conntrace resends after it closed a
// dead HTTP/2 connection (WithCloseDeadConnections).
const Replayable = "GET, HEAD, OPTIONS or TRACE, or a request with an Idempotency-Key or X-Idempotency-Key header, " +
	"whose body is empty or can be rewound by Request.GetBody"

// Round shortens d for people: whole seconds from a minute up, milliseconds
// from a second up, microseconds below.
func Round(d time.Duration) time.Duration {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(time.Millisecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// Short writes d for a one-line summary: tenths of a second below a
// minute ("6.0s", "0.9s"), whole seconds from a minute up ("5m50s").
func Short(d time.Duration) string {
	if d >= time.Minute {
		return d.Round(time.Second).String()
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
}

// HostPort is host:port, or host for a zero port.
func HostPort(host string, port int) string {
	if port == 0 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// Addr is a's text, or "unknown address".
func Addr(a net.Addr) string {
	if a == nil {
		return "unknown address"
	}
	return a.String()
}
