package conntrace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/vocab"
)

// The cure: two options, off by default, that act on what the detectors
// found instead of only reporting it.
//
// WithCloseDeadConnections closes a reused connection once the kernel says
// it is dead, so that net/http resends or fails its request at once instead
// of letting it hang to its deadline. What net/http does then (Go 1.26,
// net/http/transport.go and h2_bundle.go, checked on real sockets):
//
//   - HTTP/1: the connection's read loop, blocked in a read, gets "use of
//     closed network connection" and hands the request a
//     transportReadFromServerError. Transport.roundTrip asks
//     persistConn.shouldRetryRequest: the connection was reused, so a
//     request it may replay (Request.isReplayable: GET, HEAD, OPTIONS or
//     TRACE, or an Idempotency-Key or X-Idempotency-Key header; no body, or
//     a GetBody to rewind it) is sent again on another connection (a second
//     GotConn); any other returns that read error at once.
//   - HTTP/2: the ClientConn's read loop fails, marks the connection dead in
//     the pool and aborts every stream on it with the read error;
//     http2canRetryError says no (only REFUSED_STREAM, a GOAWAY or an unusable
//     connection are retried), and the http2 transport is reached before
//     Transport.roundTrip's retry loop, so nothing is resent, not even a GET.
//     conntrace resends a replayable request itself, by net/http's HTTP/1
//     rule, once per connection it closed under it. Other requests
//     multiplexed on the same connection were as stuck; they fail at once
//     with the read error, and are not resent by conntrace (their requests
//     did not watch the connection).
//
// A request that is not resent fails with an error that says why
// (errors.Is(err, ErrDeadConnection)), not with its context's deadline.
//
// WithNATKeepAlive sets TCP keep-alive on each connection conntrace dials,
// below the path's idle timeout, so that its NAT entry never expires.

// ErrDeadConnection is in the error of a request whose connection conntrace
// closed as dead (see [WithCloseDeadConnections]) and that was not resent:
// errors.Is(err, ErrDeadConnection) reports it. The error's text says what
// the kernel saw and why the request was not resent; it wraps the error
// net/http returned (a read on the closed connection), and its error.type
// is [vocab.ErrorTypeDeadConnection].
var ErrDeadConnection = errors.New("conntrace: connection closed as dead")

// WithCloseDeadConnections makes the Transport close a reused connection
// that the kernel shows to be dead: the stale_reuse detector's hang decided
// by kernel evidence (the request unacknowledged through two retransmission
// timeouts, about 0.9 s on a LAN; four where the path is doubted). net/http
// then resends a request it may replay (GET, HEAD, OPTIONS, TRACE, or one
// with an Idempotency-Key header, whose body is empty or can be rewound
// with Request.GetBody) on a new connection, and fails any other at once,
// with an error that wraps [ErrDeadConnection], instead of letting it hang
// until its deadline. For HTTP/2, where net/http resends nothing after a
// connection is lost, conntrace resends such a request itself; other
// requests multiplexed on that connection fail at once.
//
// It also closes the connection of a request waiting for data (a stream, a
// watch, a long poll) that the stream_stall detector found dead: silent
// past the path's idle timeout, and two keep-alive probes on its socket
// unanswered. The wait fails at once, a body's Read or the round trip,
// with an error that wraps [ErrDeadConnection] and the read's own (it is
// not resent: the caller's retry, a watch's re-list or an SSE reconnect,
// runs instead of never). A stream whose probe is answered is never
// closed; an HTTP/2 connection, shared by other streams, only on that same
// kernel evidence, when they are all as stuck.
//
// It never acts on the timeout fallback (where the kernel cannot be read,
// a slow server and a dead path look alike), on a connection whose peer
// acknowledged the request (however slow the answer), or on a connection
// dialled for the request. Each connection closed so is counted in
// conntrace.connection.closed_dead and shown on the span as a
// conntrace.connection.closed_dead event after the alert.
//
// It is off by default: it changes what happens to requests, on the
// strength of a verdict that is rarely but not never wrong (on a path that
// loses 15 % of its packets each way, about one live request in 170 looks
// dead through two retransmission timeouts before conntrace has seen the
// path lose packets, one in 2,000 after, when it asks for four), and a
// resent request reaches the server twice if its first copy did arrive. It
// does nothing where the kernel cannot be read (not Linux).
func WithCloseDeadConnections() Option {
	return optionFunc(func(c *config) { c.closeDead = true })
}

// WithNATKeepAlive makes the Transport set TCP keep-alive on each
// connection dialled through [Transport.WrapDialContext] (not those of a
// DialTLSContext, which conntrace does not see) so that probes start, and repeat, below the
// idle timeout of the path: half of the timeout learned for the dialled
// host and port (conntrace.path.idle_timeout: the lower bound where both
// bounds are known, else the upper one), or, before anything is learned,
// half of [WithNATIdleTimeout], in whole seconds, at least 1 s. It sets
// Idle and Interval together (Linux sends the next probe an Interval after
// the last) and leaves Count as it is.
//
// It never lengthens what the dialer set: an Idle or Interval already at
// or below the wanted one stays. It turns keep-alive on where the dialer
// left it off (a negative net.Dialer.KeepAlive), since that is the
// connection it exists for: to keep a connection's keep-alive off, do not
// use it. Connections dialled before the path's timeout was learned keep
// what they got. It reads the socket first and does nothing where it
// cannot (not Linux), so that it never lengthens a setting it cannot see.
//
// It also keeps streams and long waits alive, on their own sockets,
// without touching any dialer: a request waiting for data (response
// headers, or body bytes while the caller is in a Read) on a connection
// silent for half the path's idle timeout gets keep-alive on its socket,
// every half timeout (at least 1 s), so that the NAT keeps the flow
// through a pause longer than its timeout. Its probes also judge it: one
// unanswered means the path forgot the flow already (the stream_stall
// alert, and the close WithCloseDeadConnections). The socket's options
// are put back when the request ends, so that a connection returned to the
// pool is as its dialer left it (a new request may take it from the pool a
// moment before they are).
//
// It is off by default: it changes the dialer's socket options, and each
// probe is a packet every few seconds on each idle connection, which a
// user should choose. NewTransport panics if WithNATIdleTimeout is 1 s or
// less: keep-alive counts whole seconds, so no probe comes before it.
func WithNATKeepAlive() Option {
	return optionFunc(func(c *config) { c.natKeepAlive = true })
}

// checkCure rejects option combinations the cure cannot honour.
func (c *config) checkCure() {
	if c.natKeepAlive && !advice.KeepAliveHelps(c.natIdleTimeout) {
		c.errs = append(c.errs, fmt.Errorf("conntrace: WithNATKeepAlive with WithNATIdleTimeout(%v): TCP keep-alive counts whole seconds, "+
			"so no probe can come before an idle timeout of 1s or less", c.natIdleTimeout))
	}
}

// cure is what a Transport needs of the two options.
type cure struct {
	closeDead bool
	keepAlive bool
	natIdle   time.Duration
	paths     *detect.PathTimeouts // the learned path idle timeouts
}

func newCure(c *config, paths *detect.PathTimeouts) cure {
	return cure{closeDead: c.closeDead, keepAlive: c.natKeepAlive, natIdle: c.natIdleTimeout, paths: paths}
}

// deadClose is a connection conntrace closed under a request, and why.
type deadClose struct {
	conn  int // its index in the request's Timeline.Conns
	alert detectors.Alert
}

// maxResends bounds conntrace's resends of one request (HTTP/2): each
// follows a fresh kernel verdict on yet another dead connection.
const maxResends = 4

// closeDead closes the connection of req if alerts hold a hang that the
// kernel decided on it, for WithCloseDeadConnections, and returns when, or
// the zero time if it did not. raise calls it just after the alerts were
// delivered, so that the log and the AlertHandler tell the cause before the
// request fails (a handler must return quickly: AlertHandler), and before
// an alert span ends: the close is counted in ctx, raise's, and shown on
// alertSpan (nil if none) as on the request's. req.mu must not be held.
func (req *request) closeDead(ctx context.Context, alertSpan trace.Span, alerts []detectors.Alert) time.Time {
	if !req.t.cure.closeDead {
		return time.Time{}
	}
	i := slices.IndexFunc(alerts, func(a detectors.Alert) bool {
		return a.Detector == detectors.StaleReuseName && a.Outcome == detectors.OutcomeHang && a.Evidence == detectors.EvidenceKernel
	})
	if i < 0 {
		return time.Time{}
	}
	// watched is the connection, reused, whose kernel reading at hand-out
	// (cur.TCP) the verdict compared later ones with; nil once a close or a
	// new connection has been seen.
	req.mu.Lock()
	conn, n := req.watched, len(req.tl.Conns)
	var handedOut *detect.TCPInfo
	if cur := req.tl.Conn(); cur != nil {
		handedOut = cur.TCP
	}
	req.mu.Unlock()
	if conn == nil || handedOut == nil {
		// Nothing watched, or no reading left to compare with (an ended
		// request's, given back with its timer).
		return time.Time{}
	}
	// A last look, a microsecond's syscall: bytes acknowledged since the
	// hand-out mean the peer is there after all, and a state other than
	// ESTABLISHED (a reset) that net/http is about to see the error itself.
	if now := sockopt.TCPInfo(conn, time.Time{}); now == nil || now.BytesAcked > handedOut.BytesAcked || now.State != "ESTABLISHED" {
		return time.Time{}
	}
	a := alerts[i]
	req.mu.Lock()
	if req.ended.Load() || !req.tl.Response.IsZero() || len(req.tl.Conns) != n {
		req.mu.Unlock()
		return time.Time{}
	}
	req.closed = &deadClose{conn: n - 1, alert: a}
	req.watched = nil
	// Under mu, as observe adds alert events: the close follows its alert
	// on the span, and end cannot end the span in between.
	attrs := []attribute.KeyValue{vocab.AttrWaited.Float64(a.Waited.Seconds()), vocab.AttrWireIdle.Float64(a.WireIdle.Seconds())}
	req.event(vocab.EventClosedDead, attrs...)
	req.mu.Unlock()
	at := time.Now()
	if alertSpan != nil {
		alertSpan.AddEvent(vocab.EventClosedDead, trace.WithTimestamp(at), trace.WithAttributes(attrs...))
	}
	req.count(ctx, req.t.inst.closedDead) // before the close: the request may fail the moment it is done
	// The socket rather than conn: a *tls.Conn's Close first writes a
	// close_notify alert, with a 5 s deadline, that a dead path would only
	// swallow. net/http closes conn itself once its read fails; a failed
	// Close here can only mean it already has.
	if sock, ok := sockopt.Find[*net.TCPConn](conn); ok {
		_ = sock.Close()
	} else {
		_ = conn.Close()
	}
	return at
}

// resendAfterClose runs after the base's round trip. If conntrace closed
// the request's connection as dead and the round trip failed on it (no
// later connection: net/http did not resend it), it resends a replayable
// request (HTTP/2, where net/http does not), or returns an error that says
// why the request failed. Otherwise it returns res and err unchanged.
func (req *request) resendAfterClose(r *http.Request, res *http.Response, err error) (*http.Response, error) {
	if err == nil || !req.t.cure.closeDead {
		return res, err
	}
	var prev *deadClose
	for resent := 0; ; resent++ {
		req.mu.Lock()
		dc, conns := req.closed, len(req.tl.Conns)
		req.mu.Unlock()
		if dc == nil || dc == prev || dc.conn != conns-1 || r.Context().Err() != nil {
			// Not closed by conntrace, resent since (by net/http, or by
			// conntrace and failed for a reason of its own, a dial error
			// say), or ended by its context: the error is the request's own.
			return res, err
		}
		prev = dc
		if dc.alert.Detector == detectors.StreamStallName {
			// A long wait closed as dead is not resent: another wait on a new
			// connection is the caller's call (a long poll's next round).
			return res, &deadConnError{dc: dc, method: r.Method, why: "it is not resent", err: err}
		}
		again, why := replay(r)
		if again != nil && resent == maxResends {
			again, why = nil, fmt.Sprintf("conntrace resent it %d times already", resent)
		}
		if again == nil {
			return res, &deadConnError{dc: dc, method: r.Method, why: why, err: err}
		}
		if res, err = req.t.base.RoundTrip(again); err == nil {
			return res, nil
		}
	}
}

// replay returns r ready to send again, as net/http would resend it on
// another connection (Request.isReplayable, rewindBody), or nil and why not.
func replay(r *http.Request) (*http.Request, string) {
	_, key := r.Header["Idempotency-Key"]
	_, xkey := r.Header["X-Idempotency-Key"]
	switch r.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
	default:
		if !key && !xkey {
			return nil, fmt.Sprintf("a %s is not resent (only these are: %s)", r.Method, advice.Replayable)
		}
	}
	if r.Body == nil || r.Body == http.NoBody {
		return r, ""
	}
	if r.GetBody == nil {
		return nil, "it is not resent: its body cannot be rewound (Request.GetBody is nil)"
	}
	body, err := r.GetBody()
	if err != nil {
		return nil, "it is not resent: rewinding its body failed (Request.GetBody: " + err.Error() + ")"
	}
	again := *r
	again.Body = body
	return &again, ""
}

// deadConnError is the error of a request that failed on a connection
// conntrace closed as dead. It wraps the round trip's error.
type deadConnError struct {
	dc     *deadClose
	method string
	why    string // why it was not resent
	err    error
}

func (e *deadConnError) Error() string {
	a := e.dc.alert
	if a.Detector == detectors.StreamStallName {
		return fmt.Sprintf("conntrace: closed the connection to %s as dead: the %s request waited for data on it, and it had "+
			"received nothing for %s, past the path's idle timeout (%s), and answered none of two keep-alive probes "+
			"(a NAT or firewall on the path has forgotten it); %s: %v",
			advice.HostPort(a.Host, a.Port), e.method, advice.Round(a.WireIdle), advice.Round(a.Threshold), e.why, e.err)
	}
	return fmt.Sprintf("conntrace: closed the connection to %s as dead: the peer acknowledged nothing of the %s request "+
		"through %d retransmission timeouts in the %s after it was sent, after the connection had sat idle %s on the wire "+
		"(a NAT or firewall on the path has forgotten it); %s: %v",
		advice.HostPort(a.Host, a.Port), e.method, a.TCP.Retransmits, advice.Round(a.Waited), advice.Round(a.WireIdle), e.why, e.err)
}

func (e *deadConnError) Unwrap() error { return e.err }

// Is makes errors.Is(err, ErrDeadConnection) true.
func (e *deadConnError) Is(target error) bool { return target == ErrDeadConnection }

// ErrorType is the error's error.type: [vocab.ErrorTypeDeadConnection].
func (e *deadConnError) ErrorType() string { return vocab.ErrorTypeDeadConnection }

// stalledError returns err, a response body's read error, wrapped as a
// deadConnError if the watcher closed the connection under the read as
// dead (WithCloseDeadConnections); else err itself.
func (req *request) stalledError(err error) error {
	req.mu.Lock()
	dc := req.closed
	req.mu.Unlock()
	if dc == nil || dc.alert.Detector != detectors.StreamStallName {
		return err
	}
	return &deadConnError{dc: dc, method: req.tl.Method, why: "the caller's retry may run now", err: err}
}

// setKeepAlive sets keep-alive on c, just dialled to addr, below the path's
// idle timeout, for WithNATKeepAlive.
func (cu *cure) setKeepAlive(c net.Conn, addr string) {
	if !cu.keepAlive {
		return
	}
	tc, ok := sockopt.Find[*net.TCPConn](c)
	if !ok {
		return
	}
	have := sockopt.Options(tc)
	if !have.Known {
		return // what the dialer set cannot be read: never lengthen it blind
	}
	cfg, change := keepAliveConfig(have, advice.KeepAliveEvery(cu.limit(addr)))
	if !change {
		return
	}
	if err := tc.SetKeepAliveConfig(cfg); err != nil {
		otel.Handle(fmt.Errorf("conntrace: WithNATKeepAlive: setting keep-alive on the connection to %s: %w", addr, err))
	}
}

// limit is the idle time connections to addr must stay below: the path's
// learned one, else the configured NAT idle timeout.
func (cu *cure) limit(addr string) time.Duration {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return cu.natIdle
	}
	port, _ := strconv.Atoi(p)
	return cu.paths.Get(host, port).Limit(cu.natIdle)
}

// keepAliveConfig is the change that makes a socket with options have send
// keep-alive probes after want of idle and every want after: Idle and
// Interval lowered to want where they are above it (or unset), keep-alive
// turned on, nothing lengthened, Count untouched. change is false when the
// socket already does as well.
func keepAliveConfig(have detect.SocketOptions, want time.Duration) (cfg net.KeepAliveConfig, change bool) {
	cfg = net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1} // negative: left as it is
	change = !have.KeepAlive
	if have.Idle <= 0 || have.Idle > want {
		cfg.Idle, change = want, true
	}
	if have.Interval <= 0 || have.Interval > want {
		cfg.Interval, change = want, true
	}
	return cfg, change
}
