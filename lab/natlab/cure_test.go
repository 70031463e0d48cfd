//go:build linux

package natlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// The cure (issue 14) against the kernel's conntrack: a connection the NAT
// forgot is closed on the kernel's evidence, so that a GET is resent at
// once and a POST fails at once, where without the option both hang to
// their deadline; a slow server on a live path is left alone; and
// keep-alive set below the NAT's timeout keeps the connection alive.

const (
	cureDeadline = 10 * time.Second // the measured requests' own deadline
	cureWithin   = 2 * time.Second  // the cure's promise: from the write to the outcome
)

// measured is what one measured request did.
type measured struct {
	err   error
	took  time.Duration // from its first write to its outcome
	conns int           // GotConn calls
	proto int
}

func (m measured) String() string {
	out := "ok"
	if m.err != nil {
		out = m.err.Error()
		if errors.Is(m.err, context.DeadlineExceeded) {
			out = "context deadline exceeded"
		}
	}
	return fmt.Sprintf("%s after %v", out, m.took.Round(time.Millisecond))
}

// measure sends method to u with a body (for a POST) and a deadline, and
// times it from its first write.
func measure(c *http.Client, method, u string, deadline time.Duration) measured {
	var (
		mu    sync.Mutex
		wrote time.Time
		m     measured
	)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { mu.Lock(); m.conns++; mu.Unlock() },
		WroteRequest: func(httptrace.WroteRequestInfo) {
			mu.Lock()
			if wrote.IsZero() {
				wrote = time.Now()
			}
			mu.Unlock()
		},
	})
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("order=42") // a body it can rewind: GetBody is set
	}
	req, _ := http.NewRequestWithContext(ctx, method, u, body)
	res, err := c.Do(req)
	if err == nil {
		m.proto = res.ProtoMajor
		_, err = io.ReadAll(res.Body)
		res.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	m.err = err
	if !wrote.IsZero() {
		m.took = time.Since(wrote)
	}
	return m
}

// sum adds up a counter's points whose attributes include want.
func sum(t *testing.T, r *sdkmetric.ManualReader, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	return int64(testkit.Collect(t, r).Total(name, want...))
}

// TestNATLabCure: the conntrack timeout T of the lab, keep-alive off, the
// connection idle T+2s, requests with a 10 s deadline; (a) and (b) with the
// option and without it, side by side. The subtests run in parallel, each
// client with its own connection.
func TestNATLabCure(t *testing.T) {
	l := newLab(t)
	T := l.ctTimeout
	past := T + 2*time.Second
	u := "http://" + l.server + "/"
	host, port := l.serverHostPort(t)
	server := []attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(port)}

	// cureRun is one client: a first request dials, the connection idles
	// for idle, then the measured request reuses it.
	type cureRun struct {
		o     *observed
		first measured
		m     measured
	}
	// It may run on a goroutine of its own: it reports, never stops, t.
	run := func(t *testing.T, dialer *net.Dialer, idle time.Duration, method, path string, opts ...conntrace.Option) *cureRun {
		base := &http.Transport{DialContext: dialer.DialContext}
		o := newObserved(base, append([]conntrace.Option{conntrace.WithNATIdleTimeout(T), conntrace.WithHangTimeout(time.Second)}, opts...)...)
		t.Cleanup(o.close)
		r := &cureRun{o: o}
		if r.first = measure(o.Client, http.MethodGet, u, firstDeadline); r.first.err != nil {
			t.Errorf("first request: %v", r.first.err)
			return r
		}
		time.Sleep(idle)
		r.m = measure(o.Client, method, u+path, cureDeadline)
		return r
	}
	closedDead := func(t *testing.T, r *cureRun) int64 {
		return sum(t, r.o.reader, vocab.MetricClosedDead, server...)
	}

	// withAndWithout runs the same request past the conntrack timeout with
	// WithCloseDeadConnections and without it, side by side.
	withAndWithout := func(t *testing.T, method string) (on, off *cureRun) {
		var wg sync.WaitGroup
		wg.Go(func() { on = run(t, keepAliveOff, past, method, "", conntrace.WithCloseDeadConnections()) })
		wg.Go(func() { off = run(t, keepAliveOff, past, method, "") })
		wg.Wait()
		return on, off
	}

	t.Run("a_get_resent", func(t *testing.T) {
		t.Parallel()
		on, off := withAndWithout(t, http.MethodGet)
		if t.Failed() {
			return
		}
		t.Logf("MEASURED cure a: GET reused after %v idle (conntrack %v), deadline %v: with WithCloseDeadConnections %v (resent on a new connection); without %v",
			past, T, cureDeadline, on.m, off.m)
		if on.m.err != nil || on.m.took > cureWithin {
			t.Errorf("with the option: %v; want the answer within %v of the write", on.m, cureWithin)
		}
		if !errors.Is(off.m.err, context.DeadlineExceeded) || off.m.took < cureDeadline-time.Second {
			t.Errorf("without the option: %v; want a hang to the %v deadline", off.m, cureDeadline)
		}
		if n := closedDead(t, on); n != 1 {
			t.Errorf("with the option: %s %d; want 1", vocab.MetricClosedDead, n)
		}
		if n := closedDead(t, off); n != 0 {
			t.Errorf("without the option: %s %d; want 0", vocab.MetricClosedDead, n)
		}
		// The span shows it: the kernel's hang, the close, the resend's
		// connection, and http.request.resend_count.
		spans := on.o.spans.Ended()
		span := spans[len(spans)-1]
		names := testkit.EventNames(span)
		alert := testkit.Index(names, vocab.EventAlert, 0)
		closed := testkit.Index(names, vocab.EventClosedDead, 0)
		second := testkit.Index(names, vocab.EventGotConn, 1)
		if alert < 0 || closed < alert || second < closed || on.m.conns != 2 {
			t.Errorf("span events %q, %d connections; want the alert, then %s, then a second got_conn",
				names, on.m.conns, vocab.EventClosedDead)
		}
		attrs := attribute.NewSet(span.Attributes()...)
		if v, _ := attrs.Value(semconv.HTTPRequestResendCountKey); v.AsInt64() != 1 {
			t.Errorf("http.request.resend_count: %d; want 1", v.AsInt64())
		}
		for _, a := range on.o.staleAlerts(time.Time{}, "") {
			if a.outcome != detectors.OutcomeHang || a.evidence != detectors.EvidenceKernel {
				t.Errorf("stale_reuse %s from %q evidence; want only a hang from kernel evidence", a.outcome, a.evidence)
			}
		}
	})

	t.Run("b_post_fails_fast", func(t *testing.T) {
		t.Parallel()
		on, off := withAndWithout(t, http.MethodPost)
		if t.Failed() {
			return
		}
		t.Logf("MEASURED cure b: POST reused after %v idle (conntrack %v), deadline %v: with WithCloseDeadConnections %v; without %v",
			past, T, cureDeadline, on.m, off.m)
		if !errors.Is(on.m.err, conntrace.ErrDeadConnection) || errors.Is(on.m.err, context.DeadlineExceeded) || on.m.took > cureWithin {
			t.Errorf("with the option: %v; want an ErrDeadConnection within %v of the write", on.m, cureWithin)
		}
		for _, want := range []string{"closed the connection to " + l.server + " as dead", "retransmission timeouts", "a POST is not resent"} {
			if on.m.err != nil && !strings.Contains(on.m.err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, on.m.err)
			}
		}
		if !errors.Is(off.m.err, context.DeadlineExceeded) || off.m.took < cureDeadline-time.Second {
			t.Errorf("without the option: %v; want a hang to the %v deadline", off.m, cureDeadline)
		}
		if n := closedDead(t, on); n != 1 || on.m.conns != 1 {
			t.Errorf("%s %d, connections %d; want 1 and 1 (not resent)", vocab.MetricClosedDead, n, on.m.conns)
		}
	})

	t.Run("c_slow_server_not_closed", func(t *testing.T) {
		t.Parallel()
		// Two live paths to a server that answers 2 s late: a connection
		// reused after T/2 (the NAT still knows it), and one reused after
		// T+2s whose keep-alive probes kept the NAT's entry. The kernel
		// sees the request acknowledged: nothing is closed.
		probes := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}}
		var short, kept *cureRun
		var wg sync.WaitGroup
		wg.Go(func() {
			short = run(t, keepAliveOff, T/2, http.MethodGet, "?delay=2s", conntrace.WithCloseDeadConnections())
		})
		wg.Go(func() { kept = run(t, probes, past, http.MethodGet, "?delay=2s", conntrace.WithCloseDeadConnections()) })
		wg.Wait()
		if t.Failed() {
			return
		}
		t.Logf("MEASURED cure c: slow server (2s) with WithCloseDeadConnections: reused after %v idle %v; after %v idle with keep-alive probes %v",
			T/2, short.m, past, kept.m)
		for name, r := range map[string]*cureRun{"idle T/2": short, "keep-alive probes": kept} {
			if r.m.err != nil || r.m.conns != 1 {
				t.Errorf("%s: %v on %d connections; want the slow answer on the reused connection", name, r.m, r.m.conns)
			}
			if n := closedDead(t, r); n != 0 {
				t.Errorf("%s: %s %d; want 0", name, vocab.MetricClosedDead, n)
			}
			for _, a := range r.o.staleAlerts(time.Time{}, "") {
				if a.outcome == detectors.OutcomeHang {
					t.Errorf("%s: a hang (%s evidence); want none on a live path", name, a.evidence)
				}
			}
		}
	})

	t.Run("d_keepalive_prevents", func(t *testing.T) {
		t.Parallel()
		// The dialer turns keep-alive off; WithNATKeepAlive, on the dialer
		// WrapDialContext wraps, turns it on below T.
		base := &http.Transport{}
		o := newObserved(base, conntrace.WithNATIdleTimeout(T), conntrace.WithHangTimeout(time.Second),
			conntrace.WithNATKeepAlive(), conntrace.WithCloseDeadConnections())
		base.DialContext = o.Transport.(*conntrace.Transport).WrapDialContext(keepAliveOff.DialContext)
		defer o.close()
		var (
			mu   sync.Mutex
			opts detect.SocketOptions // of the connection's socket, through conntrace's wrapper
		)
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
			mu.Lock()
			defer mu.Unlock()
			if !ci.Reused {
				opts = sockopt.Options(ci.Conn)
			}
		}})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		res, err := o.Do(req)
		if err != nil {
			t.Fatalf("first request: %v", err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		mu.Lock()
		if !opts.Known || !opts.KeepAlive || opts.Idle >= T || opts.Interval >= T {
			t.Errorf("socket: %+v; want keep-alive read, on, idle and interval below the conntrack timeout %v", opts, T)
		}
		mu.Unlock()
		time.Sleep(past)
		m := measure(o.Client, http.MethodGet, u, cureDeadline)
		t.Logf("MEASURED cure d: WithNATKeepAlive set keep-alive idle %v, interval %v on a dialer with it off; reused after %v idle (conntrack %v): %v",
			opts.Idle, opts.Interval, past, T, m)
		if m.err != nil || m.took > time.Second {
			t.Errorf("reuse: %v; want the answer at once", m)
		}
		if n := sum(t, o.reader, vocab.MetricDials, server...); n != 1 {
			t.Errorf("%s: %d; want 1 (the connection was reused)", vocab.MetricDials, n)
		}
		if n := sum(t, o.reader, vocab.MetricReuses, server...); n != 1 {
			t.Errorf("%s: %d; want 1", vocab.MetricReuses, n)
		}
		for _, outcome := range []string{detectors.OutcomeHang, detectors.OutcomeFailed, detectors.OutcomeRetried} {
			if n := sum(t, o.reader, vocab.MetricStaleReuses, vocab.AttrOutcome.String(outcome)); n != 0 {
				t.Errorf("%s{%s}: %d; want 0", vocab.MetricStaleReuses, outcome, n)
			}
		}
		if n := sum(t, o.reader, vocab.MetricClosedDead); n != 0 {
			t.Errorf("%s: %d; want 0", vocab.MetricClosedDead, n)
		}
		for _, a := range o.staleAlerts(time.Time{}, "") {
			if a.warn() {
				t.Errorf("stale_reuse %s at %s; want none of WARN or above", a.outcome, a.level)
			}
		}
	})
}

// serverHostPort splits the lab server's address.
func (l lab) serverHostPort(t *testing.T) (string, int) {
	host, p, err := net.SplitHostPort(l.server)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	if _, err := fmt.Sscan(p, &port); err != nil {
		t.Fatal(err)
	}
	return host, port
}
