package detectors

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/conntrace/conntrace/internal/advice"
)

// Names of the findings Audit can report, the Finding.Name values.
const (
	findingIdleConnTimeout       = "idle_conn_timeout"
	findingDialerKeepAlive       = "dialer_keepalive"
	findingMaxIdleConnsPerHost   = "max_idle_conns_per_host"
	findingResponseHeaderTimeout = "response_header_timeout"
	findingTLSHandshakeTimeout   = "tls_handshake_timeout"
	findingDisableKeepAlives     = "disable_keep_alives"
	findingHTTP2Ping             = "http2_ping"
)

// Finding is one result of [Audit]: a setting of an http.Transport that
// makes one of the failures conntrace detects likely, or hides it.
type Finding struct {
	Name     string     // stable identifier: idle_conn_timeout, dialer_keepalive, max_idle_conns_per_host, response_header_timeout, tls_handshake_timeout, disable_keep_alives or http2_ping
	Severity slog.Level // Info: worth knowing; Warn: likely to cause trouble
	Setting  string     // the setting to change, such as "http.Transport.IdleConnTimeout"
	What     string     // what the configuration is
	Why      string     // why that matters
	Advice   string     // what to change it to
}

// String formats f on one line.
func (f Finding) String() string {
	return fmt.Sprintf("%s %s (%s): %s. %s. %s", f.Severity, f.Name, f.Setting, f.What, f.Why, f.Advice)
}

// Audit inspects the configuration of t for the failures conntrace detects
// at run time, against a NAT (or firewall, or load balancer) that forgets
// connections idle for natIdle (zero means advice.DefaultNATIdleTimeout). Each
// finding names the setting to change. It returns nil for a nil t.
//
// The dialer's keep-alive is known only where it can be read: a nil
// DialContext and Dial (net/http then uses a zero net.Dialer: keep-alive
// on, first probe after 15 s), and http.DefaultTransport itself (its
// dialer has KeepAlive 30 s). A DialContext (or DialTLSContext) is
// otherwise a function value whose dialer cannot be inspected; [AuditDialer] takes that dialer, and
// the keepalive_gap detector reads the real socket of every new connection.
func Audit(t *http.Transport, natIdle time.Duration) []Finding {
	return audit(t, natIdle, dialerKeepAlive(t))
}

// AuditDialer is [Audit] for a t whose DialContext is d.DialContext, so
// that d's keep-alive settings can be checked. A nil d is the same as Audit.
func AuditDialer(t *http.Transport, d *net.Dialer, natIdle time.Duration) []Finding {
	if d == nil || t == nil {
		return Audit(t, natIdle)
	}
	return audit(t, natIdle, keepAliveOf(d, "the given net.Dialer"))
}

// keepAlive is what is known of a dialer's TCP keep-alive.
type keepAlive struct {
	known  bool
	on     bool
	idle   time.Duration // as the kernel gets it: whole seconds; zero with kernelIdle
	kernel bool          // idle is the kernel's default (net.ipv4.tcp_keepalive_time, 2 h unless tuned)
	// interval is the time between probes, whole seconds; Linux sends the
	// next probe an interval after the last one, so it too must be below
	// the NAT timeout. Zero means the kernel's default (75 s).
	interval time.Duration
	source   string // which dialer, for the finding's text
}

func dialerKeepAlive(t *http.Transport) keepAlive {
	switch {
	case t == nil:
		return keepAlive{}
	case t.DialTLSContext != nil || t.DialTLS != nil:
		// HTTPS connections come from a TLS dialer that cannot be inspected.
		return keepAlive{source: "DialTLSContext"}
	case t.DialContext == nil && t.Dial == nil:
		return keepAliveOf(&net.Dialer{}, "the zero net.Dialer net/http uses when DialContext is nil")
	case isDefaultTransport(t):
		// net/http/transport.go: DefaultTransport's dialer has
		// Timeout 30s, KeepAlive 30s.
		return keepAliveOf(&net.Dialer{KeepAlive: advice.DefaultTransportKeepAlive}, "http.DefaultTransport's net.Dialer")
	default:
		return keepAlive{source: "DialContext"}
	}
}

func isDefaultTransport(t *http.Transport) bool {
	dt, ok := http.DefaultTransport.(*http.Transport)
	return ok && dt == t
}

// keepAliveOf follows net.newTCPConn and TCPConn.SetKeepAliveConfig (Go
// 1.26): KeepAliveConfig wins if enabled; else a non-negative KeepAlive
// enables probes with it as the idle time; else Go leaves the socket alone,
// and sockets start with keep-alive off.
func keepAliveOf(d *net.Dialer, source string) keepAlive {
	cfg := d.KeepAliveConfig
	if !cfg.Enable {
		if d.KeepAlive < 0 {
			return keepAlive{known: true, source: source}
		}
		cfg = net.KeepAliveConfig{Enable: true, Idle: d.KeepAlive}
	}
	ka := keepAlive{known: true, on: true, source: source}
	switch {
	case cfg.Idle == 0:
		ka.idle = advice.GoKeepAliveIdle
	case cfg.Idle < 0:
		ka.kernel = true
	default:
		ka.idle = wholeSeconds(cfg.Idle)
	}
	switch {
	case cfg.Interval == 0:
		ka.interval = advice.GoKeepAliveInterval
	case cfg.Interval > 0:
		ka.interval = wholeSeconds(cfg.Interval)
	}
	return ka
}

// wholeSeconds rounds d up to whole seconds, as Go does before it sets a
// keep-alive option: the kernel counts them in seconds.
func wholeSeconds(d time.Duration) time.Duration {
	return (d + time.Second - 1).Truncate(time.Second)
}

// covers reports whether keep-alive probes start, and repeat, before
// natIdle. The kernel's defaults (2 h idle, 75 s interval) are assumed not
// to.
func (ka keepAlive) covers(natIdle time.Duration) bool {
	return ka.known && ka.on && !ka.kernel && ka.idle < natIdle && ka.interval > 0 && ka.interval < natIdle
}

func (ka keepAlive) String() string {
	switch {
	case !ka.known:
		return "unknown"
	case !ka.on:
		return "off"
	case ka.kernel:
		return "on, first probe after the kernel's default idle time (net.ipv4.tcp_keepalive_time, 2h unless tuned)"
	case ka.interval == 0:
		return fmt.Sprintf("on, first probe after %s idle, then every kernel default interval (net.ipv4.tcp_keepalive_intvl, 75s unless tuned)", ka.idle)
	default:
		return fmt.Sprintf("on, first probe after %s idle, then every %s", ka.idle, ka.interval)
	}
}

func audit(t *http.Transport, natIdle time.Duration, ka keepAlive) []Finding {
	if t == nil {
		return nil
	}
	if natIdle <= 0 {
		natIdle = advice.DefaultNATIdleTimeout
	}
	var out []Finding
	pools := !t.DisableKeepAlives && t.MaxIdleConnsPerHost >= 0
	poolHolds := t.IdleConnTimeout <= 0 || t.IdleConnTimeout >= natIdle
	idleTimeout := "0 (no limit)"
	if t.IdleConnTimeout > 0 {
		idleTimeout = advice.Round(t.IdleConnTimeout).String()
	}

	switch {
	case t.DisableKeepAlives:
		out = append(out, Finding{
			Name: findingDisableKeepAlives, Severity: slog.LevelWarn, Setting: "http.Transport.DisableKeepAlives",
			What:   "DisableKeepAlives is true: every request dials a new connection, and for HTTPS does a new TLS handshake",
			Why:    "Nothing is pooled, so every request pays the dial (and handshake) latency and leaves a socket in TIME_WAIT",
			Advice: "Set DisableKeepAlives to false and, if stale connections were the reason, " + advice.IdleConnTimeout(natIdle),
		})
	case t.MaxIdleConnsPerHost < 0:
		out = append(out, Finding{
			Name: findingMaxIdleConnsPerHost, Severity: slog.LevelWarn, Setting: "http.Transport.MaxIdleConnsPerHost",
			What:   fmt.Sprintf("MaxIdleConnsPerHost is %d: a negative value disables the idle pool", t.MaxIdleConnsPerHost),
			Why:    "No connection is ever reused: every request dials (and handshakes) again",
			Advice: advice.PoolSize("the peak number of concurrent requests per host"),
		})
	case t.MaxIdleConnsPerHost == 0:
		out = append(out, Finding{
			Name: findingMaxIdleConnsPerHost, Severity: slog.LevelInfo, Setting: "http.Transport.MaxIdleConnsPerHost",
			What: fmt.Sprintf("MaxIdleConnsPerHost is 0, so net/http keeps at most %d idle connections per host", http.DefaultMaxIdleConnsPerHost),
			Why: "With more concurrent requests to one host than that, the extra connections are closed after each burst " +
				"and dialled again (the pool_overflow detector reports it when it happens)",
			Advice: advice.PoolSize("the peak number of concurrent requests per host"),
		})
	}

	if pools && poolHolds {
		f := Finding{
			Name: findingIdleConnTimeout, Severity: slog.LevelWarn, Setting: "http.Transport.IdleConnTimeout",
			What: fmt.Sprintf("IdleConnTimeout is %s, not below the NAT idle timeout of %s", idleTimeout, advice.Round(natIdle)),
			Why: "The pool may hand out a connection idle longer than the NAT keeps its entry; a request written " +
				"on it then hangs until its deadline (the stale_reuse detector reports it)",
			Advice: "Set " + advice.IdleConnTimeout(natIdle),
		}
		if ka.covers(natIdle) {
			f.Severity = slog.LevelInfo
			f.Why = fmt.Sprintf("The pool may keep a connection idle longer than the NAT keeps its entry, but the dialer's "+
				"TCP keep-alive (%s, from %s) refreshes the entry first, for NATs that count probes as traffic, as "+
				"conntrack-based ones do", ka, ka.source)
		}
		out = append(out, f)

		switch {
		case !ka.known:
			out = append(out, Finding{
				Name: findingDialerKeepAlive, Severity: slog.LevelInfo, Setting: "net.Dialer.KeepAlive",
				What: "The dialer's TCP keep-alive cannot be known: http.Transport.DialContext is a function, and the dialer " +
					"behind it cannot be inspected",
				Why: "If its keep-alive is off or starts at or after the NAT idle timeout, pooled connections go stale; the " +
					"keepalive_gap detector checks the real socket options of every new connection",
				Advice: fmt.Sprintf("Make sure the dialer's keep-alive idle time and interval are both below %s, for example %s, "+
					"or pass the dialer to AuditDialer", advice.Round(natIdle), advice.KeepAliveSetting(natIdle)),
			})
		case !ka.covers(natIdle):
			out = append(out, Finding{
				Name: findingDialerKeepAlive, Severity: slog.LevelWarn, Setting: "net.Dialer.KeepAlive",
				What: fmt.Sprintf("TCP keep-alive of %s is %s: the NAT idle timeout of %s can pass without a probe", ka.source, ka, advice.Round(natIdle)),
				Why: fmt.Sprintf("With IdleConnTimeout %s, a pooled connection can sit idle until the NAT forgets it, "+
					"and nothing refreshes the NAT's entry before then", idleTimeout),
				Advice: fmt.Sprintf("Set the dialer's keep-alive idle time and interval both below %s, for example %s (%s); "+
					"or set IdleConnTimeout below it", advice.Round(natIdle), advice.KeepAliveSetting(natIdle), advice.KeepAliveNote),
			})
		}
	}

	if t.ResponseHeaderTimeout <= 0 {
		out = append(out, Finding{
			Name: findingResponseHeaderTimeout, Severity: slog.LevelWarn, Setting: "http.Transport.ResponseHeaderTimeout",
			What: "ResponseHeaderTimeout is 0: after writing a request the transport waits for the response headers without limit",
			Why: "A request on a connection a NAT forgot hangs until the request's context deadline or http.Client.Timeout, " +
				"if it has one (Audit cannot see those)",
			Advice: advice.BoundWait,
		})
	}
	if t.TLSHandshakeTimeout <= 0 {
		out = append(out, Finding{
			Name: findingTLSHandshakeTimeout, Severity: slog.LevelWarn, Setting: "http.Transport.TLSHandshakeTimeout",
			What:   "TLSHandshakeTimeout is 0: a TLS handshake may wait without limit",
			Why:    "A handshake with an unresponsive peer holds the request until its own deadline, if it has one",
			Advice: "Set TLSHandshakeTimeout, for example 10s as http.DefaultTransport does",
		})
	}

	if http2Enabled(t) {
		var ping time.Duration
		if t.HTTP2 != nil {
			ping = t.HTTP2.SendPingTimeout
		}
		switch {
		case ping <= 0:
			out = append(out, Finding{
				Name: findingHTTP2Ping, Severity: slog.LevelWarn, Setting: "http.Transport.HTTP2.SendPingTimeout",
				What: "HTTP/2 is enabled without a health check: HTTP2.SendPingTimeout is 0",
				Why: "HTTP/2 sends the requests to a host over one shared connection. If a NAT forgets it, requests keep " +
					"going to it (up to the server's concurrent-stream limit of them), each hanging until its own deadline, " +
					"until the kernel gives up retransmitting: about 15 minutes with Linux's default tcp_retries2",
				Advice: "Set " + advice.HTTP2Ping(natIdle) + ": " + advice.HTTP2PingNote,
			})
		case ping >= natIdle:
			out = append(out, Finding{
				Name: findingHTTP2Ping, Severity: slog.LevelInfo, Setting: "http.Transport.HTTP2.SendPingTimeout",
				What: fmt.Sprintf("HTTP2.SendPingTimeout is %s, not below the NAT idle timeout of %s", advice.Round(ping), advice.Round(natIdle)),
				Why: "The health check closes a dead HTTP/2 connection after SendPingTimeout plus PingTimeout, but its pings " +
					"come too late to keep the NAT's entry alive",
				Advice: "Set SendPingTimeout below the NAT idle timeout: " + advice.HTTP2Ping(natIdle),
			})
		}
	}
	return out
}

// http2Enabled reports whether t may use HTTP/2, following
// http.Transport.protocols (net/http/transport.go, Go 1.26). The GODEBUG
// setting http2client=0 is seen only in the environment, not in go.mod or
// //go:debug lines.
func http2Enabled(t *http.Transport) bool {
	if t.Protocols != nil {
		return t.Protocols.HTTP2() || t.Protocols.UnencryptedHTTP2()
	}
	if t.TLSNextProto != nil {
		// An empty map is the documented way to turn HTTP/2 off.
		return t.TLSNextProto["h2"] != nil
	}
	if !t.ForceAttemptHTTP2 && (t.TLSClientConfig != nil || t.Dial != nil || t.DialContext != nil ||
		t.DialTLS != nil || t.DialTLSContext != nil) {
		return false
	}
	for _, kv := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if strings.TrimSpace(kv) == "http2client=0" {
			return false
		}
	}
	return true
}
