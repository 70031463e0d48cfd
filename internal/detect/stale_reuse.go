package detect

import (
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
)

// The detector's name, outcomes and evidence: the detectors package's,
// which says what each means, named here as the detector's code uses them.
const (
	StaleReuseName        = detectors.StaleReuseName
	OutcomeHang           = detectors.OutcomeHang
	OutcomeFailed         = detectors.OutcomeFailed
	OutcomeRetried        = detectors.OutcomeRetried
	OutcomeOK             = detectors.OutcomeOK
	OutcomeBeyondFirstHop = detectors.OutcomeBeyondFirstHop
	EvidenceKernel        = detectors.EvidenceKernel
	EvidenceTimeout       = detectors.EvidenceTimeout
)

// Defaults of [StaleReuse].
const (
	// DefaultNATIdleTimeout is AWS NAT Gateway's idle timeout (350 s). Azure
	// NAT Gateway defaults to 4 min, GCP Cloud NAT to 20 min for established
	// TCP flows.
	DefaultNATIdleTimeout = advice.DefaultNATIdleTimeout
	// DefaultHangTimeout is how long a request on a suspect connection may
	// wait for its response, once sent, before it is reported as hanging.
	DefaultHangTimeout = 10 * time.Second
)

// Suspect reports whether a connection handed to a request is likely
// forgotten by a NAT whose idle timeout is natIdle: it was reused from the
// idle pool after sitting idle at least that long.
func Suspect(c *Conn, natIdle time.Duration) bool {
	return c.Reused && c.WasIdle && c.IdleTime >= natIdle
}

// StaleReuse detects requests sent on a pooled connection that something on
// the path (a NAT, a firewall) had forgotten, and reports how each fared:
// [OutcomeHang] while it hangs; otherwise, when the round trip returns
// ([StepResponse]), [OutcomeFailed], [OutcomeRetried] or [OutcomeOK] (the
// last at Info level).
//
// Where the kernel can be read (Linux, a connection reused after at least
// [KernelIdleGate] of idle, its [Conn.TCP] read), the hang verdict rests on
// evidence, whatever the idle time and the configured NAT idle timeout: the
// request stayed unacknowledged through two retransmission timeouts in a
// row (about 0.85 s on a LAN), or four where that would contradict what is
// known (a path that has lost packets, or that carried a request after as
// long an idle). A request the peer acknowledged is never a stale hang,
// however slow the answer; if none comes within HangTimeout, an Info alert,
// [OutcomeBeyondFirstHop], says that the delay is past the first hop.
//
// Elsewhere, and only there, the fallback rule holds: a connection reused
// after sitting idle at least NATIdleTimeout ([Suspect]) is suspect, and a
// hang is reported once its request has had no response for HangTimeout. [OutcomeFailed] and
// [OutcomeRetried] follow the fallback rule in both cases.
//
// Each connection a request is handed is judged on its own while the
// request waits: a request resent onto another pooled connection (net/http
// retries on the next idle one) can hang on that one too. When the round
// trip returns, a request that has had a hang reported gets no further
// verdict.
//
// The zero value is ready to use with the defaults. A StaleReuse must not be
// changed after first use. Apart from Paths it keeps no state, so one value
// may serve any number of concurrent requests.
type StaleReuse struct {
	NATIdleTimeout time.Duration // zero means DefaultNATIdleTimeout
	HangTimeout    time.Duration // zero means DefaultHangTimeout
	// Paths, when not nil, learns each path's idle timeout from the
	// verdicts on connections with a kernel reading, and its brackets
	// shape the evidence asked for and the advice given.
	Paths *PathTimeouts
	// CloseDead says that the transport closes a connection the kernel
	// found dead (conntrace's WithCloseDeadConnections), so that the
	// request is resent or fails at once: the hang alert says so instead
	// of predicting a hang until the deadline.
	CloseDead bool
}

// Name returns [StaleReuseName].
func (*StaleReuse) Name() string { return StaleReuseName }

// Steps returns [StepGotConn], [StepTimer] and [StepResponse].
func (*StaleReuse) Steps() StepSet { return StepsOf(StepGotConn, StepTimer, StepResponse) }

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

func (d *StaleReuse) isStale(c *Conn) bool {
	return Suspect(c, d.natIdle())
}

// Observe implements [Detector]. The current connection decides: a stale
// one can hang or fail; a healthy one after a stale one means the
// transport retried. (A retry may land on another stale pooled connection,
// which then hangs or fails in its turn.)
func (d *StaleReuse) Observe(now time.Time, step Step, t *Timeline) ([]Alert, time.Duration) {
	cur := t.Conn()
	if cur == nil {
		return nil, 0
	}
	switch step {
	case StepGotConn, StepTimer:
		switch {
		case raisedSince(t, cur.At) || !t.Response.IsZero():
			return nil, 0
		case cur.TCP != nil:
			return d.watch(now, step, t, cur)
		case !d.isStale(cur):
			return nil, 0
		}
		return d.fallback(now, t, cur)
	case StepResponse:
		if t.Raised(StaleReuseName) {
			return nil, 0 // a hang was reported: the request's verdict is given
		}
		return d.verdict(now, t, cur), 0
	}
	return nil, 0
}

// raisedSince reports whether stale_reuse has raised an alert on t since
// at: on the connection handed out then.
func raisedSince(t *Timeline, at time.Time) bool {
	for i := range t.Alerts {
		if a := &t.Alerts[i]; a.Detector == StaleReuseName && !a.Time.Before(at) {
			return true
		}
	}
	return false
}

// fallback reports a hang once the request on a suspect connection has
// waited HangTimeout, since the connection was handed to it, for a
// response.
func (d *StaleReuse) fallback(now time.Time, t *Timeline, cur *Conn) ([]Alert, time.Duration) {
	waited := now.Sub(cur.At)
	if left := d.hangTimeout() - waited; left > 0 {
		return nil, left
	}
	return []Alert{d.alert(now, t, cur, OutcomeHang, EvidenceTimeout, waited)}, 0
}

// watch asks the kernel about a reused connection, from its reading at
// hand-out and, at each StepTimer, a fresh one (t.TCP). It asks to be woken
// past the second retransmission timeout, then every half RTO while the
// verdict is pending.
func (d *StaleReuse) watch(now time.Time, step Step, t *Timeline, cur *Conn) ([]Alert, time.Duration) {
	if step == StepGotConn {
		if lossy(cur.TCP) {
			d.Paths.lossyAt(t.Host, t.Port, now)
		}
		return nil, firstCheck(cur.TCP)
	}
	waited := now.Sub(cur.At)
	switch judgeTCP(cur.TCP, t.TCP, d.requiredRTOs(now, t, cur)) {
	case tcpDead:
		d.Paths.Dead(t.Host, t.Port, cur.TCP.WireIdle())
		return []Alert{d.alert(now, t, cur, OutcomeHang, EvidenceKernel, waited)}, 0
	case tcpAcked:
		d.Paths.Alive(t.Host, t.Port, cur.TCP.WireIdle())
		if left := d.hangTimeout() - waited; left > 0 {
			return nil, left
		}
		return []Alert{d.alert(now, t, cur, OutcomeBeyondFirstHop, EvidenceKernel, waited)}, 0
	}
	// Pending: ask again. The fallback rule does not apply where the kernel
	// can be read: a kernel still undecided at the hang timeout (a long RTO,
	// as after a lost SYN, or nothing sent yet) is no evidence of a dead
	// connection, and guessing there raised false hangs on live, lossy paths.
	return nil, pollEvery(cur.TCP)
}

// requiredRTOs is how many retransmission timeouts in a row make cur dead:
// more where a dead verdict would contradict what is known of its path:
// it has lost packets (on this connection, or another to the same server
// lately), or it has carried a request after as long an idle time.
func (d *StaleReuse) requiredRTOs(now time.Time, t *Timeline, cur *Conn) int {
	if lossy(cur.TCP) || d.Paths.lossySince(t.Host, t.Port, now) || d.Paths.aliveAt(t.Host, t.Port, cur.TCP.WireIdle()) {
		return doubtRTOs
	}
	return deadRTOs
}

// verdict gives the outcome once the round trip has returned, and learns
// from it: a connection with a kernel reading that answered was alive at its
// wire idle time; a stale one that failed, or was given up for a retry, was
// dead.
func (d *StaleReuse) verdict(now time.Time, t *Timeline, cur *Conn) []Alert {
	if cur.TCP != nil && t.Err == nil {
		d.Paths.Alive(t.Host, t.Port, cur.TCP.WireIdle())
	}
	if !d.isStale(cur) {
		for i := range len(t.Conns) - 1 {
			if c := &t.Conns[i]; d.isStale(c) {
				if c.TCP != nil {
					d.Paths.Dead(t.Host, t.Port, c.TCP.WireIdle())
				}
				return []Alert{d.alert(now, t, c, OutcomeRetried, EvidenceTimeout, 0)}
			}
		}
		return nil
	}
	if t.Err != nil {
		if cur.TCP != nil {
			d.Paths.Dead(t.Host, t.Port, cur.TCP.WireIdle())
		}
		return []Alert{d.alert(now, t, cur, OutcomeFailed, EvidenceTimeout, 0)}
	}
	return []Alert{d.alert(now, t, cur, OutcomeOK, EvidenceTimeout, 0)}
}

func (d *StaleReuse) alert(now time.Time, t *Timeline, c *Conn, outcome, evidence string, waited time.Duration) Alert {
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
		Evidence:  evidence,
	}
	if evidence == EvidenceKernel {
		a.Threshold = 0 // no configured timeout decided it
		a.WireIdle, a.TCP = c.TCP.WireIdle(), t.TCP
	}
	idle := advice.Round(c.IdleTime).String()
	if c.TCP != nil {
		idle = fmt.Sprintf("%s in the pool and %s on the wire", advice.Round(c.IdleTime), advice.Round(c.TCP.WireIdle()))
	}
	seen := fmt.Sprintf("%s %s reused a connection (to %s) that had sat idle %s", t.Method, advice.HostPort(t.Host, t.Port), advice.Addr(c.RemoteAddr), idle)
	if evidence == EvidenceTimeout {
		seen += fmt.Sprintf(" (NAT idle timeout: %s)", advice.Round(natIdle))
	}
	cure := d.cure(t, c)
	switch outcome {
	case OutcomeHang:
		switch {
		case evidence == EvidenceKernel:
			a.Message = fmt.Sprintf("%s, and the peer has acknowledged nothing of the request in the %s since it was sent, "+
				"through %d retransmission timeouts (kernel: %s): a NAT or firewall on the path has forgotten the connection "+
				"and drops its packets", seen, advice.Round(waited), t.TCP.Retransmits, t.TCP)
			if d.CloseDead {
				a.Message += ". The connection is closed (WithCloseDeadConnections): net/http resends the request on " +
					"a new connection if it may replay it, and fails it now otherwise"
			} else {
				a.Message += ", so the request will hang until its deadline"
			}
		default:
			a.Message = fmt.Sprintf("%s, and has had no response for %s since the request was sent on it: "+
				"a NAT or firewall on the path has most likely forgotten the connection and drops its packets silently, "+
				"so the request will hang until its deadline", seen, advice.Round(waited))
		}
		a.Advice = cure + ". " + advice.BoundWait + "."
	case OutcomeFailed:
		a.Message = fmt.Sprintf("%s, and failed before any response: %v", seen, t.Err)
		a.Advice = cure + "."
	case OutcomeRetried:
		a.Level = slog.LevelWarn
		a.Message = seen + "; it failed and the transport retried the request on another connection"
		a.Advice = cure + ". The retry hid it this time, but net/http retries only requests it may replay (" +
			advice.Replayable + "), and only when the failure is quick."
	case OutcomeOK:
		a.Level = slog.LevelInfo
		a.Message = seen + ", and it worked: the path kept the connection (TCP keep-alive, HTTP/2 health-check pings, or a NAT idle timeout longer than configured)"
		a.Advice = "Nothing to fix. If this is common, the configured NAT idle timeout may be lower than the real one."
	case OutcomeBeyondFirstHop:
		a.Level = slog.LevelInfo
		a.Message = fmt.Sprintf("%s; the peer's TCP acknowledged the request (kernel: %s), yet no response has come for %s: "+
			"the connection is alive as far as its first hop, so the delay is beyond it, in a proxy, load balancer or sidecar "+
			"that terminates TCP, or in the server itself. This is not a stale connection", seen, t.TCP, advice.Round(waited))
		a.Advice = "If a proxy or load balancer sits in between, its own pooled connections may be the stale ones: check its idle timeouts. " +
			"Otherwise the server is slow. " + advice.BoundWait + "."
	}
	a.Summary = d.summary(t, c, outcome, evidence, waited)
	return a
}

// summary is the alert on one line ([Alert.Summary]): the idle time, and
// what decided, in plain units.
func (d *StaleReuse) summary(t *Timeline, c *Conn, outcome, evidence string, waited time.Duration) string {
	head := StaleReuseName + "/" + outcome + ": "
	reused := "reused after " + advice.Short(c.IdleTime) + " idle"
	if evidence == EvidenceTimeout {
		reused += " (NAT timeout " + advice.Short(d.natIdle()) + ")"
	}
	switch outcome {
	case OutcomeHang:
		if evidence != EvidenceKernel {
			return head + reused + ", no reply in " + advice.Short(waited) + ": the path likely forgot the connection"
		}
		line := head + reused + ", no ACK through " + strconv.Itoa(t.TCP.Retransmits) + " RTOs: the path forgot the connection"
		if d.CloseDead {
			line += "; closed it"
		}
		return line
	case OutcomeFailed:
		return head + reused + ", failed before any response"
	case OutcomeRetried:
		return head + "a connection " + reused + " failed; the request was resent on another"
	case OutcomeOK:
		return head + reused + " and answered: the path kept the connection"
	case OutcomeBeyondFirstHop:
		return head + "the peer ACKed the request, no reply in " + advice.Short(waited) + ": the delay is past the first hop"
	}
	return ""
}

// cure is the advice that prevents a stale reuse on this path: from the
// path's learned idle timeout where there is one, else from the configured
// NAT idle timeout.
func (d *StaleReuse) cure(t *Timeline, c *Conn) string {
	b := d.Paths.Get(t.Host, t.Port)
	limit, why := b.Limit(d.natIdle()), ""
	switch {
	case b.Upper > 0 && b.Lower > 0:
		why = fmt.Sprintf("This path forgot a connection idle %s on the wire and kept one idle %s. ", advice.Round(b.Upper), advice.Round(b.Lower))
	case b.Upper > 0:
		why = fmt.Sprintf("This path forgot a connection idle %s on the wire, and conntrace has not yet seen one survive "+
			"a shorter idle time (conntrace probe measures it). ", advice.Round(b.Upper))
	}
	return why + advice.Cure(limit)
}
