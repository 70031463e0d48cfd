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

// IdleConnTimeoutBelow is the IdleConnTimeout suggested for a path whose
// connections must stay idle less than limit: a tenth below it.
func IdleConnTimeoutBelow(limit time.Duration) time.Duration {
	return limit - limit/10
}

// KeepAliveEvery is the keep-alive idle time and interval (or HTTP/2 ping
// interval) suggested for a path whose connections must stay idle less than
// limit: half of it, in whole seconds (the kernel counts keep-alive in
// seconds, and Go rounds up), at least one second.
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
// KeepAliveConfig.Enable false, at 15 s idle and 15 s interval
// (http.DefaultTransport: 30 s idle); Go rounds both up to whole seconds.
const KeepAliveNote = "Dialer.KeepAlive alone sets only Idle; Go's defaults are 15s idle and 15s interval, " +
	"30s idle in http.DefaultTransport; a negative Dialer.KeepAlive turns probes off"

// Cure is the advice that keeps a path's pooled connections from going
// stale when it forgets connections idle for limit: retire them before,
// or keep them alive with probes (only where limit leaves room for one).
func Cure(limit time.Duration) string {
	s := fmt.Sprintf("Set http.Transport.IdleConnTimeout below %s (for example %s)", Round(limit), Round(IdleConnTimeoutBelow(limit)))
	if limit > time.Second {
		s += fmt.Sprintf(", or keep it alive with TCP keep-alive probes more often than that: %s (%s)", KeepAliveSetting(limit), KeepAliveNote)
	}
	return s
}

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
