package detectors

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"
)

// StaleReuseName is the name of the [StaleReuse] detector.
const StaleReuseName = "stale_reuse"

// Outcomes of a stale reuse, the Alert.Outcome values of [StaleReuse].
const (
	// OutcomeHang: no first response byte within the hang timeout after the
	// request was written. Raised while the request is still waiting.
	OutcomeHang = "hang"
	// OutcomeFailed: the round trip failed before any response byte.
	OutcomeFailed = "failed"
	// OutcomeRetried: the transport gave up on the stale connection and
	// retried the request on another one.
	OutcomeRetried = "retried"
	// OutcomeOK: the stale-looking connection worked.
	OutcomeOK = "ok"
	// OutcomeBeyondFirstHop: the request on a reused connection was
	// acknowledged by the peer's TCP (the kernel saw its bytes acked), yet
	// no response came within the hang timeout. The connection is alive as
	// far as the first hop; the delay is beyond it (a proxy, load balancer
	// or the server itself). Info level: never counted as a stale reuse.
	OutcomeBeyondFirstHop = "beyond_first_hop"
)

// Values of Alert.Evidence: what decided a stale-reuse verdict.
const (
	// EvidenceKernel: the kernel's TCP state of the socket (Linux
	// TCP_INFO): the request stayed unacknowledged through retransmission
	// timeouts, or the peer acknowledged it.
	EvidenceKernel = "kernel"
	// EvidenceTimeout: the fallback where the kernel cannot be read: the
	// connection sat idle at least the configured NAT idle timeout, and no
	// response came within the hang timeout.
	EvidenceTimeout = "timeout"
)

// Defaults of [StaleReuse].
const (
	// DefaultNATIdleTimeout is AWS NAT Gateway's idle timeout (350 s). Azure
	// NAT Gateway defaults to 4 min, GCP Cloud NAT to 20 min for established
	// TCP flows.
	DefaultNATIdleTimeout = 350 * time.Second
	// DefaultHangTimeout is how long a suspect request may wait for its first
	// response byte before it is reported as hanging.
	DefaultHangTimeout = 10 * time.Second
)

// StalePolicy reports whether a connection handed to a request is suspect:
// likely forgotten by a NAT whose idle timeout is natIdle.
type StalePolicy func(c Conn, natIdle time.Duration) bool

// DefaultStalePolicy suspects a connection that was reused from the idle pool
// after sitting idle for at least natIdle.
func DefaultStalePolicy(c Conn, natIdle time.Duration) bool {
	return c.Reused && c.WasIdle && c.IdleTime >= natIdle
}

// StaleReuse detects requests sent on a pooled connection that sat idle
// longer than the NAT idle timeout, and reports how each such request fared:
// [OutcomeHang] while it hangs, then nothing more; otherwise, when the round
// trip returns ([StepResponse]), [OutcomeFailed], [OutcomeRetried] or
// [OutcomeOK] (the last at Info level).
//
// The zero value is ready to use with the defaults. A StaleReuse must not be
// changed after first use; it keeps no state, so one value may serve any
// number of concurrent requests.
type StaleReuse struct {
	NATIdleTimeout time.Duration // zero means DefaultNATIdleTimeout
	HangTimeout    time.Duration // zero means DefaultHangTimeout
	IsStale        StalePolicy   // nil means DefaultStalePolicy
}

// Name returns [StaleReuseName].
func (*StaleReuse) Name() string { return StaleReuseName }

func (d *StaleReuse) natIdle() time.Duration {
	if d.NATIdleTimeout > 0 {
		return d.NATIdleTimeout
	}
	return DefaultNATIdleTimeout
}

func (d *StaleReuse) hangTimeout() time.Duration {
	if d.HangTimeout > 0 {
		return d.HangTimeout
	}
	return DefaultHangTimeout
}

func (d *StaleReuse) isStale(c Conn) bool {
	if d.IsStale != nil {
		return d.IsStale(c, d.natIdle())
	}
	return DefaultStalePolicy(c, d.natIdle())
}

// Observe implements [Detector]. The current connection decides: a stale
// one can hang or fail; a healthy one after a stale one means the
// transport retried. (A retry may land on another stale pooled connection,
// which then hangs or fails in its turn.)
func (d *StaleReuse) Observe(now time.Time, step Step, t *Timeline) ([]Alert, time.Duration) {
	cur, ok := t.Conn()
	if !ok || t.Raised(StaleReuseName) {
		return nil, 0
	}
	if !d.isStale(cur) {
		if step != StepResponse {
			return nil, 0
		}
		for _, c := range t.Conns {
			if d.isStale(c) {
				return []Alert{d.alert(now, t, c, OutcomeRetried, 0)}, 0
			}
		}
		return nil, 0
	}
	switch step {
	case StepWroteRequest, StepTimer:
		if !t.FirstByte.IsZero() || t.WroteRequest.IsZero() {
			return nil, 0
		}
		waited := now.Sub(t.WroteRequest)
		if left := d.hangTimeout() - waited; left > 0 {
			return nil, left
		}
		return []Alert{d.alert(now, t, cur, OutcomeHang, waited)}, 0
	case StepResponse:
		if t.Err != nil && t.FirstByte.IsZero() {
			return []Alert{d.alert(now, t, cur, OutcomeFailed, 0)}, 0
		}
		return []Alert{d.alert(now, t, cur, OutcomeOK, 0)}, 0
	}
	return nil, 0
}

func (d *StaleReuse) alert(now time.Time, t *Timeline, c Conn, outcome string, waited time.Duration) Alert {
	natIdle := d.natIdle()
	a := Alert{
		Detector:  StaleReuseName,
		Outcome:   outcome,
		Level:     slog.LevelError,
		Time:      now,
		Host:      t.Host,
		Port:      t.Port,
		IdleTime:  c.IdleTime,
		Threshold: natIdle,
		Waited:    waited,
	}
	seen := fmt.Sprintf("%s %s reused a connection (to %s) that had sat idle %s (NAT idle timeout: %s)",
		t.Method, hostPort(t.Host, t.Port), orUnknown(c.RemoteAddr), Round(c.IdleTime), Round(natIdle))
	cure := fmt.Sprintf("Set http.Transport.IdleConnTimeout below the NAT idle timeout (for example %s)",
		Round(suggestIdleConnTimeout(natIdle)))
	if natIdle > time.Second {
		// Checked against net/dial.go, net/tcpsock.go and
		// net/tcpsockopt_unix.go (Go 1.26), and in the NAT lab: keep-alive is
		// on unless Dialer.KeepAlive < 0 with KeepAliveConfig.Enable false,
		// at 15s idle and 15s interval (http.DefaultTransport: 30s idle);
		// Go rounds both up to whole seconds, and Linux sends the next probe
		// an Interval after the last, so both must be below the timeout.
		cure += fmt.Sprintf(", or keep it alive with TCP keep-alive probes more often than that: %s "+
			"(Dialer.KeepAlive alone sets only Idle; Go's defaults are 15s idle and 15s interval, "+
			"30s idle in http.DefaultTransport; a negative Dialer.KeepAlive turns probes off)", KeepAliveAdvice(natIdle))
	}
	switch outcome {
	case OutcomeHang:
		a.Message = fmt.Sprintf("%s, and has had no response for %s since the request was written: "+
			"a NAT or firewall on the path has most likely forgotten the connection and drops its packets silently, "+
			"so the request will hang until its deadline", seen, Round(waited))
		a.Advice = cure + ". Also bound the wait with http.Transport.ResponseHeaderTimeout or a request deadline."
	case OutcomeFailed:
		a.Message = fmt.Sprintf("%s, and failed before any response: %v", seen, t.Err)
		a.Advice = cure + "."
	case OutcomeRetried:
		a.Level = slog.LevelWarn
		a.Message = seen + "; it failed and the transport retried the request on another connection"
		a.Advice = cure + ". The retry hid it this time, but net/http retries only requests it may replay " +
			"(idempotent methods, or a body with GetBody and an Idempotency-Key), and only when the failure is quick."
	case OutcomeOK:
		a.Level = slog.LevelInfo
		a.Message = seen + ", and it worked: the path kept the connection (TCP keep-alive, HTTP/2 health-check pings, or a NAT idle timeout longer than configured)"
		a.Advice = "Nothing to fix. If this is common, the configured NAT idle timeout may be lower than the real one."
	}
	return a
}

// suggestIdleConnTimeout leaves a margin of a tenth below the NAT timeout.
func suggestIdleConnTimeout(natIdle time.Duration) time.Duration {
	return natIdle - natIdle/10
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

func hostPort(host string, port int) string {
	if port == 0 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func orUnknown(a net.Addr) string {
	if a == nil {
		return "unknown address"
	}
	return a.String()
}
