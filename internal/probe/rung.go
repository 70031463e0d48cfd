package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric/noop"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/sockopt"
)

// Result is what a rung saw when it reused its idle connection.
type Result string

// Results of a rung. The first three are measurements; the others say why
// a rung has none.
const (
	ReusedOK     Result = "reused-ok"      // answered on the same connection
	ClosedByPeer Result = "closed-by-peer" // closed while idle, or closed (FIN or reset) when reused
	SilentDrop   Result = "silent-drop"    // no answer and no reset within the timeout
	Failed       Result = "error"          // the rung could not measure (see Detail)
	Skipped      Result = "skipped"        // stopped: a shorter idle period already changed
	Interrupted  Result = "interrupted"    // stopped by the caller (Ctrl-C)
)

// Changed reports whether r is a change from "reused ok": a measurement
// that ends the idle period the path tolerates.
func (r Result) Changed() bool { return r == ClosedByPeer || r == SilentDrop }

// Label is r for people: "reused ok", "closed by peer", ...
func (r Result) Label() string {
	switch r {
	case ReusedOK:
		return "reused ok"
	case ClosedByPeer:
		return "closed by peer"
	case SilentDrop:
		return "silent drop"
	case "":
		return "pending"
	}
	return string(r)
}

// When a connection was closed by the peer, or why it was a silent drop:
// the values of Rung.How. Rung.End says whether a close was a FIN or a
// reset.
const (
	HowReused        = "reused"            // reused ok
	HowClosedIdle    = "closed-while-idle" // FIN or reset while idle: the pool dialled anew
	HowClosedOnReuse = "closed-on-reuse"   // the reused connection failed at once: FIN or reset
	HowNoResponse    = "no-response"       // silent drop
)

// State is how far a rung has got.
type State int

// States of a rung, in order.
const (
	Connecting State = iota // dialling and making the first request
	Idle                    // the connection sits in the pool
	Waiting                 // the second request was sent on it
	Done                    // Result is set
)

// Rung is one measurement: one connection, left idle for Idle.
type Rung struct {
	Round  int           // 0 for the ladder, then 1, 2, ... for refining rounds
	Idle   time.Duration // the idle period asked for
	State  State
	Result Result
	How    string // one of the How* values, for a measurement
	End    End    // for ClosedByPeer: a FIN or a reset
	Detail string // what was seen, for people

	// Measured, when reused: how long net/http says the connection sat idle
	// (httptrace.GotConnInfo.IdleTime), and how long the second request
	// took to get its answer, fail or be declared silent.
	IdleTime time.Duration
	Waited   time.Duration
	// Alert is the conntrace stale_reuse alert the rung's Transport raised
	// on the second request, if any (hang, retried or failed).
	Alert *detectors.Alert

	// For progress: when the rung started, and when its second request is
	// or was sent (zero until its connection is pooled).
	Started time.Time
	SendAt  time.Time
}

// due is when the rung's verdict is expected at the latest.
func (r *Rung) due(timeout time.Duration) time.Time {
	if r.SendAt.IsZero() {
		// Not pooled yet: the first request is usually quick.
		return r.Started.Add(r.Idle + timeout)
	}
	return r.SendAt.Add(timeout)
}

// connTrace is what the httptrace hooks and the conntrace alert handler of
// one rung saw. The hooks run on net/http's goroutines and the handler on
// conntrace's hang timer, hence the lock.
type connTrace struct {
	mu       sync.Mutex
	conns    []httptrace.GotConnInfo
	first    *watchedConn // the connection of the first request: the one left idle
	remote   string       // the server address of the first connection
	pooled   bool         // PutIdleConn(nil): the connection went back to the pool
	pooledAt time.Time    // when
	poolErr  error        // PutIdleConn(err): it did not
	alerts   []detectors.Alert
	cancel   context.CancelFunc // of the request in flight: a hang alert ends it
}

func (c *connTrace) hooks() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			var remote string
			var w *watchedConn
			if info.Conn != nil {
				if a := info.Conn.RemoteAddr(); a != nil {
					remote = a.String()
				}
				w, _ = sockopt.Find[*watchedConn](info.Conn) // under a *tls.Conn, say
			}
			info.Conn = nil // keep what was seen, not the connection
			c.mu.Lock()
			c.conns = append(c.conns, info)
			if c.remote == "" {
				c.remote = remote
			}
			if c.first == nil {
				c.first = w
			}
			c.mu.Unlock()
		},
		PutIdleConn: func(err error) {
			now := time.Now()
			c.mu.Lock()
			defer c.mu.Unlock()
			if err != nil {
				c.poolErr = err
				return
			}
			// net/http has just set the connection's idle clock (idleAt)
			// before calling this hook, so the idle period is timed from here.
			c.pooled, c.pooledAt = true, now
		},
	}
}

// alert is the rung Transport's conntrace.AlertHandler. A hang alert is
// the verdict "silent drop": waiting longer teaches nothing.
func (c *connTrace) alert(_ context.Context, a detectors.Alert) {
	c.mu.Lock()
	c.alerts = append(c.alerts, a)
	cancel := c.cancel
	c.mu.Unlock()
	if a.Outcome == detectors.OutcomeHang && cancel != nil {
		cancel()
	}
}

// startSecond forgets what the first request saw, and lets a hang alert
// cancel the second.
func (c *connTrace) startSecond(cancel context.CancelFunc) {
	c.mu.Lock()
	c.conns, c.alerts, c.cancel = nil, nil, cancel
	c.mu.Unlock()
}

type seen struct {
	conns  []httptrace.GotConnInfo
	alerts []detectors.Alert
	// ended is the first read error of the connection left idle: io.EOF
	// for a FIN, ECONNRESET for a reset; nil while it is open.
	ended error
}

func (c *connTrace) seen() seen {
	c.mu.Lock()
	defer c.mu.Unlock()
	return seen{
		conns:  append([]httptrace.GotConnInfo(nil), c.conns...),
		alerts: append([]detectors.Alert(nil), c.alerts...),
		ended:  c.first.ended(),
	}
}

var http1 = func() *http.Protocols {
	var p http.Protocols
	p.SetHTTP1(true)
	return &p
}()

// transport builds a rung's own transports: base is the *http.Transport
// that holds its one connection, rt the conntrace Transport around it,
// whose stale_reuse detector watches the reuse after idle.
func (s *settings) transport(idle time.Duration, ct *connTrace) (base *http.Transport, rt http.RoundTripper) {
	dial := s.DialContext
	if dial == nil {
		// Keep-alive probes carry no payload, yet a NAT refreshes its entry
		// on them: with them on, the probe would measure nothing.
		d := &net.Dialer{Timeout: s.Timeout, KeepAlive: -1, KeepAliveConfig: net.KeepAliveConfig{Enable: false}}
		dial = d.DialContext
	}
	base = &http.Transport{
		// Each connection is watched, to tell a FIN from a reset; over TLS
		// above the TLS layer, which reads a close_notify and not the FIN.
		DialContext:         watch(dial),
		DialTLSContext:      watchTLS(dial, s.TLSClientConfig, s.Timeout),
		Protocols:           http1,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     0, // only the path may end the connection
		// With compression, net/http's gzip reader may stop before the
		// body's end, and a connection whose body was not read to EOF is
		// never pooled.
		DisableCompression: true,
	}
	rt = conntrace.NewTransport(base,
		conntrace.WithoutSpans(),
		conntrace.WithMeterProvider(noop.NewMeterProvider()),
		conntrace.WithLogger(slog.New(slog.DiscardHandler)),
		// A reuse after this rung's idle period is what the probe tests, so
		// it is what the detector suspects.
		conntrace.WithNATIdleTimeout(idle),
		conntrace.WithHangTimeout(s.Timeout),
		conntrace.WithAlertHandler(ct.alert),
	)
	return base, rt
}

// get makes one GET through rt and reads the body to its end, so that the
// connection can go back to the pool.
func (s *settings) get(ctx context.Context, rt http.RoundTripper, ct *connTrace) (*http.Response, error) {
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, ct.hooks()), http.MethodGet, s.target.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "conntrace-probe/"+conntrace.Version)
	res, err := rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if _, err := io.Copy(io.Discard, res.Body); err != nil {
		return nil, fmt.Errorf("reading the body: %w", err)
	}
	return res, nil
}

// errSkipped is the cancel cause of a rung stopped because a shorter one
// already changed.
var errSkipped = errors.New("a shorter idle period already changed")

// measure runs one rung: a connection, a first GET, idle for idle, a
// second GET on the same connection. update reports progress.
func (s *settings) measure(ctx context.Context, idle time.Duration, update func(func(*Rung))) {
	ct := &connTrace{}
	base, rt := s.transport(idle, ct)
	defer base.CloseIdleConnections()

	stopped := func(r *Rung) {
		if errors.Is(context.Cause(ctx), errSkipped) {
			r.Result, r.Detail = Skipped, "not needed: "+errSkipped.Error()
		} else {
			r.Result, r.Detail = Interrupted, "stopped before its verdict"
		}
	}
	done := func(f func(*Rung)) {
		update(func(r *Rung) {
			f(r)
			r.State = Done
		})
	}

	first, cancel := context.WithTimeout(ctx, s.Timeout)
	_, err := s.get(first, rt, ct)
	cancel()
	if err != nil {
		done(func(r *Rung) {
			if ctx.Err() != nil {
				stopped(r)
				return
			}
			r.Result, r.Detail = Failed, "first request: "+err.Error()
		})
		return
	}
	ct.mu.Lock()
	pooled, pooledAt, poolErr := ct.pooled, ct.pooledAt, ct.poolErr
	ct.mu.Unlock()
	if !pooled {
		done(func(r *Rung) {
			r.Result, r.Detail = Failed, notPooled(poolErr)
		})
		return
	}

	sendAt := pooledAt.Add(idle)
	update(func(r *Rung) { r.State, r.SendAt = Idle, sendAt })
	timer := time.NewTimer(time.Until(sendAt))
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		done(stopped)
		return
	}

	update(func(r *Rung) { r.State = Waiting })
	// The hang alert ends the request after Timeout; the deadline is only a
	// backstop should the alert not come (no reuse, a stuck dial).
	second, cancel := context.WithTimeout(ctx, 2*s.Timeout)
	defer cancel()
	ct.startSecond(cancel)
	sent := time.Now()
	_, err = s.get(second, rt, ct)
	waited := time.Since(sent)
	got := ct.seen()
	done(func(r *Rung) {
		if ctx.Err() != nil && hang(got.alerts) == nil {
			stopped(r)
			return
		}
		v := classify(got, err, s.Timeout)
		r.Result, r.How, r.End, r.Detail, r.Alert = v.result, v.how, v.end, v.detail, v.alert
		r.IdleTime, r.Waited = v.idleTime, waited
	})
}

func notPooled(err error) string {
	if err != nil {
		return "the connection was not kept for reuse after the first request: " + err.Error()
	}
	return "the server did not keep the connection open after the first request (Connection: close?); nothing to measure"
}

func hang(alerts []detectors.Alert) *detectors.Alert {
	for i := range alerts {
		if alerts[i].Outcome == detectors.OutcomeHang {
			return &alerts[i]
		}
	}
	return nil
}

// verdict is what classify makes of a second request.
type verdict struct {
	result   Result
	how      string
	end      End
	detail   string
	alert    *detectors.Alert
	idleTime time.Duration
}

// classify judges the second request of a rung from the connections it was
// handed (GotConn, in order), its error, and the alerts conntrace raised.
func classify(got seen, err error, timeout time.Duration) verdict {
	var v verdict
	for i := range got.alerts {
		if got.alerts[i].Detector == detectors.StaleReuseName {
			v.alert = &got.alerts[i]
			break
		}
	}
	if a := hang(got.alerts); a != nil {
		v.alert = a
		v.result, v.how = SilentDrop, HowNoResponse
		if a.Evidence == detectors.EvidenceKernel {
			// Linux: the kernel saw the request unacknowledged through
			// retransmission timeouts, in about a second, whatever --timeout.
			v.detail = fmt.Sprintf("the request went unacknowledged through %d retransmission timeouts in %v, no reset (kernel; conntrace stale_reuse/hang)",
				a.TCP.Retransmits, Human(a.Waited))
		} else {
			v.detail = fmt.Sprintf("no answer and no reset within %v on the reused connection (conntrace stale_reuse/hang)", Human(timeout))
		}
		v.idleTime = a.IdleTime
		return v
	}
	if len(got.conns) == 0 {
		v.result, v.detail = Failed, "second request: "+errText(err)
		return v
	}
	first := got.conns[0]
	if first.Reused {
		v.idleTime = first.IdleTime
	}
	// How the peer ended the connection left idle, as its reads saw it.
	end := endOf(got.ended)
	switch {
	case !first.Reused && err != nil:
		v.result, v.detail = Failed, "the connection was gone when reused, and a new one failed: "+err.Error()
	case !first.Reused:
		v.result, v.how, v.end = ClosedByPeer, HowClosedIdle, end
		switch end {
		case EndFIN:
			v.detail = "closed while idle by a FIN from the peer; net/http dialled a new connection"
		case EndReset:
			v.detail = "reset while idle (a TCP reset); net/http dialled a new connection"
		default:
			v.detail = "closed while idle (" + endText(got.ended) + "); net/http dialled a new connection"
		}
	case len(got.conns) > 1:
		v.result, v.how, v.end = ClosedByPeer, HowClosedOnReuse, end
		switch end {
		case EndFIN:
			v.detail = "the peer answered the reused connection's request with a FIN, no response; net/http retried on a new one"
		case EndReset:
			v.detail = "the reused connection was reset at once (a TCP reset); net/http retried on a new one"
		default:
			v.detail = "the reused connection failed at once (" + endText(got.ended) + "); net/http retried on a new one"
		}
		if v.alert != nil {
			v.detail += " (conntrace stale_reuse/" + v.alert.Outcome + ")"
		}
	case err != nil && isTimeout(err):
		// No hang alert, yet no answer: the backstop deadline ended it.
		v.result, v.how = SilentDrop, HowNoResponse
		v.detail = "no answer and no reset on the reused connection: " + err.Error()
	case err != nil:
		// net/http did not retry (it returns the read error it got).
		if end == EndUnknown {
			end = endOf(err)
		}
		v.result, v.how, v.end = ClosedByPeer, HowClosedOnReuse, end
		v.detail = "the reused connection failed at once: " + err.Error()
	default:
		v.result, v.how = ReusedOK, HowReused
		v.detail = "answered on the same connection"
	}
	return v
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// endText is what ended a connection whose end is unknown.
func endText(err error) string {
	if err == nil {
		return "a FIN or reset"
	}
	return err.Error()
}

func errText(err error) string {
	if err == nil {
		return "no connection was handed out"
	}
	return err.Error()
}
