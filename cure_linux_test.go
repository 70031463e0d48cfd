package conntrace

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sys/unix"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// The cure against real loopback sockets. A forgetting server makes its
// connections behave as a NAT that forgot them: a socket filter that drops
// every segment reaching the server's socket means its TCP acknowledges
// nothing, and the client's kernel retransmits the request into the void,
// exactly as it does behind a NAT whose entry expired. No root, no network
// namespace: SO_ATTACH_FILTER is unprivileged. (The NAT lab proves the same
// against the kernel's conntrack: lab/natlab/cure_test.go.)
// Wall clock on purpose: the kernel's retransmission timers are what the cure reads.

// forgettingServer is an httptest server whose open connections the test
// can make go dead at once (forget).
type forgettingServer struct {
	*httptest.Server
	mu    sync.Mutex
	conns []net.Conn
}

func newForgettingServer(t *testing.T, h http.HandlerFunc, h2 bool) *forgettingServer {
	s := &forgettingServer{Server: httptest.NewUnstartedServer(h)}
	s.Config.ConnState = func(c net.Conn, state http.ConnState) {
		if state == http.StateNew {
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	}
	startServer(t, s.Server, h2)
	return s
}

// forget drops everything that reaches the server's connections from now
// on, and returns how many it made forget.
func (s *forgettingServer) forget(t *testing.T) int {
	t.Helper()
	drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}} // return 0: keep no byte
	prog := unix.SockFprog{Len: 1, Filter: (*unix.SockFilter)(unsafe.Pointer(&drop[0]))}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		tc, ok := sockopt.Find[*net.TCPConn](c)
		if !ok {
			t.Fatalf("server connection %T: no TCP socket", c)
		}
		raw, err := tc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := raw.Control(func(fd uintptr) {
			serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
		}); err != nil {
			t.Fatal(err)
		}
		if serr != nil {
			t.Fatalf("SO_ATTACH_FILTER: %v", serr)
		}
	}
	return len(s.conns)
}

// cureClient is conntrace over a base of the server's kind, with its own
// telemetry.
func cureClient(t *testing.T, srv *forgettingServer, opts ...Option) (*http.Client, *telemetry) {
	tel := newTelemetry(t)
	return cureClientWith(t, srv, tel, opts...), tel
}

// cureClientWith is cureClient reporting to tel.
func cureClientWith(t *testing.T, srv *forgettingServer, tel *telemetry, opts ...Option) *http.Client {
	base := &http.Transport{MaxIdleConnsPerHost: 4}
	if srv.TLS != nil {
		base = srv.Client().Transport.(*http.Transport).Clone()
		base.MaxIdleConnsPerHost = 4
	}
	// A dead connection the option leaves alone stays in net/http's pool,
	// its read loop waiting for a FIN the server cannot send (its cwnd is
	// held by a segment whose ACK the filter drops): close what was dialled.
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
		return c, err
	}
	t.Cleanup(func() {
		base.CloseIdleConnections()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	opts = append([]Option{WithNATIdleTimeout(350 * time.Second), WithAlertInterval(time.Nanosecond)}, opts...)
	return &http.Client{Transport: NewTransport(base, tel.options(opts...)...)}
}

// attempt is what a measured request did.
type attempt struct {
	err   error
	wrote time.Time     // its first write
	took  time.Duration // from its first write to its outcome
	body  string
	conns int // GotConn calls
}

// do sends method to url with a deadline and reads the body, noting its
// first write and its connections with a ClientTrace of its own.
func do(client *http.Client, method, url string, header http.Header, body string, deadline time.Duration) attempt {
	var (
		mu sync.Mutex
		a  attempt
	)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { mu.Lock(); a.conns++; mu.Unlock() },
		WroteRequest: func(httptrace.WroteRequestInfo) {
			mu.Lock()
			if a.wrote.IsZero() {
				a.wrote = time.Now()
			}
			mu.Unlock()
		},
	})
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body) // GetBody set: rewindable
	}
	req, _ := http.NewRequestWithContext(ctx, method, url, rd)
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := client.Do(req)
	var b []byte
	if err == nil {
		b, err = io.ReadAll(res.Body)
		res.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	a.err, a.body = err, string(b)
	if !a.wrote.IsZero() {
		a.took = time.Since(a.wrote)
	}
	return a
}

// warm sends n concurrent GETs, each held by the server (?hold) so that
// each gets a connection of its own, and leaves the n connections idle.
func warm(t *testing.T, client *http.Client, url string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = do(client, http.MethodGet, url+"?hold=1", nil, "", 5*time.Second).err })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("warming %d connections: %v", n, err)
	}
}

// cureHandler answers "ok"; ?hold holds the answer 200 ms (so that
// concurrent requests take a connection each); ?delay=d answers d late,
// a slow server.
func cureHandler(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	if r.URL.Query().Has("hold") {
		time.Sleep(200 * time.Millisecond)
	}
	if d, err := time.ParseDuration(r.URL.Query().Get("delay")); err == nil {
		time.Sleep(d)
	}
	io.WriteString(w, "ok")
}

// idlePastGate is how long connections sit idle before the measured
// request: past detect.KernelIdleGate, so that the kernel is read.
const idlePastGate = detect.KernelIdleGate + 200*time.Millisecond

// lastSpan is the span of the measured request: the one that ended last.
func lastSpan(t *testing.T, tel *telemetry) spanView {
	t.Helper()
	spans := tel.Spans.Ended()
	if len(spans) == 0 {
		t.Fatal("no span ended")
	}
	s := spans[len(spans)-1]
	return spanView{raw: s, attrs: attribute.NewSet(s.Attributes()...), status: s.Status().Code}
}

type spanView struct {
	raw    sdktrace.ReadOnlySpan
	attrs  attribute.Set
	status codes.Code
}

// index returns the index of the n-th (from 0) event called name, or -1.
func (v spanView) index(name string, n int) int { return testkit.Index(v.names(), name, n) }

func (v spanView) names() []string { return testkit.EventNames(v.raw) }

func (v spanView) resends() int64 {
	r, _ := v.attrs.Value(semconv.HTTPRequestResendCountKey)
	return r.AsInt64()
}

// TestCloseDead runs the cure against a dead connection, for each kind of
// request, with the option and (as the baseline) without it.
func TestCloseDead(t *testing.T) {
	const (
		deadline = 4 * time.Second        // the request's own
		fast     = 2 * time.Second        // the cure's promise: from the write to the outcome
		verdict  = 850 * time.Millisecond // two RTOs on loopback (200 ms minimum RTO): no sooner
	)
	tests := []struct {
		name      string
		h2        bool
		off       bool // without WithCloseDeadConnections
		method    string
		header    http.Header
		body      string
		idleConns int // dead connections in the pool; 0 means 1

		wantOK      bool
		wantClosed  float64
		wantResends int64
		wantErr     string // in the error's text
	}{
		{name: "GET resent on a new connection", method: http.MethodGet, wantOK: true, wantClosed: 1, wantResends: 1},
		{name: "GET without the option hangs to its deadline", off: true, method: http.MethodGet},
		{name: "POST fails at once, saying why", method: http.MethodPost, body: "order=1", wantClosed: 1,
			wantErr: "a POST is not resent"},
		{name: "POST with an Idempotency-Key resent", method: http.MethodPost, body: "order=1",
			header: http.Header{"Idempotency-Key": {"k1"}}, wantOK: true, wantClosed: 1, wantResends: 1},
		{name: "GET onto a second dead pooled connection: both closed", method: http.MethodGet, idleConns: 2,
			wantOK: true, wantClosed: 2, wantResends: 2},
		{name: "HTTP/2 GET resent by conntrace", h2: true, method: http.MethodGet, wantOK: true, wantClosed: 1, wantResends: 1},
		{name: "HTTP/2 GET without the option hangs to its deadline", h2: true, off: true, method: http.MethodGet},
		{name: "HTTP/2 POST fails at once, saying why", h2: true, method: http.MethodPost, body: "order=1", wantClosed: 1,
			wantErr: "a POST is not resent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newForgettingServer(t, cureHandler, tt.h2)
			var opts []Option
			if !tt.off {
				opts = append(opts, WithCloseDeadConnections())
			}
			client, tel := cureClient(t, srv, opts...)
			n := max(tt.idleConns, 1)
			warm(t, client, srv.URL, n)
			if got := srv.forget(t); got != n {
				t.Fatalf("%d server connections; want %d", got, n)
			}
			time.Sleep(idlePastGate)

			if spans := tel.Spans.Ended(); tt.h2 {
				attrs := attribute.NewSet(spans[0].Attributes()...)
				if v, _ := attrs.Value(semconv.NetworkProtocolVersionKey); v.AsString() != "2" {
					t.Fatalf("first request: HTTP/%s; want HTTP/2", v.AsString())
				}
			}
			a := do(client, tt.method, srv.URL, tt.header, tt.body, deadline)
			t.Logf("%s: %v after the write: %v", tt.name, a.took.Round(time.Millisecond), a.err)
			points := tel.Collect(t)
			span := lastSpan(t, tel)
			if got := points.Total(vocab.MetricClosedDead, semconv.ServerAddress("127.0.0.1")); got != tt.wantClosed {
				t.Errorf("%s: got %v; want %v", vocab.MetricClosedDead, got, tt.wantClosed)
			}
			if got := testkit.Count(span.names(), vocab.EventClosedDead); got != int(tt.wantClosed) {
				t.Errorf("%s events: got %d; want %v (events %q)", vocab.EventClosedDead, got, tt.wantClosed, span.names())
			}
			// Every dead connection was found by the kernel, not the timeout.
			hangs := tel.handledBy(detectors.StaleReuseName)
			if len(hangs) != n {
				t.Fatalf("stale_reuse alerts: got %+v; want %d hang", hangs, n)
			}
			for _, h := range hangs {
				if h.Outcome != detectors.OutcomeHang || h.Evidence != detectors.EvidenceKernel {
					t.Errorf("alert %s from %q evidence; want a hang from kernel evidence", h.Outcome, h.Evidence)
				}
				if says := strings.Contains(h.Message, "WithCloseDeadConnections"); says == tt.off {
					t.Errorf("alert says the connection is closed: %v; want %v: %s", says, !tt.off, h.Message)
				}
			}

			switch {
			case tt.off:
				if !errors.Is(a.err, context.DeadlineExceeded) || a.took < deadline-time.Second {
					t.Fatalf("got %v after %v; want it to hang to its %v deadline", a.err, a.took, deadline)
				}
				return
			case tt.wantOK:
				if a.err != nil || a.body != "ok" {
					t.Fatalf("got %v, body %q; want the answer from a new connection", a.err, a.body)
				}
				if span.status == codes.Error {
					t.Errorf("span status Error; want unset for a request that was answered")
				}
			default:
				if !errors.Is(a.err, ErrDeadConnection) || errors.Is(a.err, context.DeadlineExceeded) || !strings.Contains(a.err.Error(), tt.wantErr) {
					t.Fatalf("got %v; want an ErrDeadConnection saying %q, not the deadline", a.err, tt.wantErr)
				}
				for _, want := range []string{"retransmission timeouts", "on the wire", tt.method} {
					if !strings.Contains(a.err.Error(), want) {
						t.Errorf("error lacks %q: %v", want, a.err)
					}
				}
				if et, _ := span.attrs.Value(semconv.ErrorTypeKey); et.AsString() != vocab.ErrorTypeDeadConnection {
					t.Errorf("error.type: got %q; want %q", et.AsString(), vocab.ErrorTypeDeadConnection)
				}
			}
			if lo, hi := time.Duration(n)*verdict, time.Duration(n)*fast; a.took < lo || a.took > hi {
				t.Errorf("outcome %v after the write; want between %v (the kernel's evidence) and %v", a.took, lo, hi)
			}
			if got := span.resends(); got != tt.wantResends {
				t.Errorf("http.request.resend_count: got %d; want %d", got, tt.wantResends)
			}
			if a.conns != int(tt.wantResends)+1 {
				t.Errorf("GotConn: %d; want %d", a.conns, tt.wantResends+1)
			}
			// The span tells it in order: the alert, the close, and the
			// resend's connection.
			for i := range n {
				alert, closed := span.index(vocab.EventAlert, i), span.index(vocab.EventClosedDead, i)
				if alert < 0 || closed < alert {
					t.Errorf("events %q: want alert %d, then its %s", span.names(), i, vocab.EventClosedDead)
				}
				if next := span.index(vocab.EventGotConn, i+1); tt.wantResends > int64(i) && next < closed {
					t.Errorf("events %q: want got_conn %d after close %d", span.names(), i+2, i+1)
				}
			}
		})
	}
}

// TestCloseDeadUnsampled: on a request whose trace is not sampled, the
// close is shown on the alert span, after its alert, and counted in the
// alert span's context: the count's exemplar names the alert span's trace.
func TestCloseDeadUnsampled(t *testing.T) {
	srv := newForgettingServer(t, cureHandler, false)
	tel, _ := sampledTelemetry(t, alertSampler{sdktrace.NeverSample()})
	client := cureClientWith(t, srv, tel, WithCloseDeadConnections())
	warm(t, client, srv.URL, 1)
	srv.forget(t)
	time.Sleep(idlePastGate)
	if a := do(client, http.MethodGet, srv.URL, nil, "", 4*time.Second); a.err != nil {
		t.Fatalf("GET on a dead connection: %v; want it resent", a.err)
	}
	// The alert span ends on the timer's goroutine once the close is done,
	// which the resent request need not wait for.
	var alertSpan sdktrace.ReadOnlySpan
	testkit.Eventually(5*time.Second, func() bool {
		for _, s := range tel.Spans.Ended() {
			if isAlertSpan(s.Attributes()) {
				alertSpan = s
			}
		}
		return alertSpan != nil
	})
	if alertSpan == nil {
		t.Fatal("no alert span ended within 5 s of the resent request's answer")
	}
	names := testkit.EventNames(alertSpan)
	alert, closed := slices.Index(names, vocab.EventAlert), slices.Index(names, vocab.EventClosedDead)
	if alert < 0 || closed < alert {
		t.Errorf("alert span events %q; want the alert, then %s", names, vocab.EventClosedDead)
	}
	if end := alertSpan.EndTime(); len(alertSpan.Events()) > 0 && end.Before(alertSpan.Events()[len(alertSpan.Events())-1].Time) {
		t.Errorf("alert span ends at %v, before its last event", end)
	}
	ex := tel.exemplars(t, vocab.MetricClosedDead)
	if len(ex) != 1 || trace.TraceID(ex[0].TraceID) != alertSpan.SpanContext().TraceID() {
		t.Errorf("%s exemplars %+v; want one, of the alert span's trace %s", vocab.MetricClosedDead, ex, alertSpan.SpanContext().TraceID())
	}
}

// TestCloseDeadSlowServer: a slow server on a live connection acknowledges
// the request at once; with the option on nothing is closed and the answer
// comes, however late; the alert is beyond_first_hop, at Info.
func TestCloseDeadSlowServer(t *testing.T) {
	srv := newForgettingServer(t, cureHandler, false)
	client, tel := cureClient(t, srv, WithCloseDeadConnections(), WithHangTimeout(time.Second))
	warm(t, client, srv.URL, 1)
	time.Sleep(idlePastGate)
	a := do(client, http.MethodGet, srv.URL+"?delay=2s", nil, "", 5*time.Second)
	if a.err != nil || a.body != "ok" {
		t.Fatalf("slow answer: %v; want it", a.err)
	}
	if got := tel.Collect(t).Total(vocab.MetricClosedDead); got != 0 {
		t.Errorf("%s: got %v; want 0", vocab.MetricClosedDead, got)
	}
	span := lastSpan(t, tel)
	if n := testkit.Count(span.names(), vocab.EventClosedDead); n != 0 || span.resends() != 0 || a.conns != 1 {
		t.Errorf("closed_dead events %d, resends %d, connections %d; want 0, 0, 1", n, span.resends(), a.conns)
	}
	if alerts := tel.handledBy(detectors.StaleReuseName); len(alerts) != 0 {
		t.Errorf("WARN+ stale_reuse alerts: %+v; want none", alerts)
	}
	attrs, ok := testkit.Event(lastSpan(t, tel).raw, vocab.EventAlert)
	if v, _ := attrs.Value(vocab.AttrOutcome); !ok || v.AsString() != detectors.OutcomeBeyondFirstHop {
		t.Errorf("alert event: %v; want %s", v.AsString(), detectors.OutcomeBeyondFirstHop)
	}
}

// TestCloseDeadDecides checks which alerts close a connection, on a real
// connection handed to a request as a reuse after idle (so that the kernel
// is read) or as a fresh dial: only a hang decided by the kernel, while the
// request waits, with the option on, and not if the peer acknowledged the
// request since the verdict's reading.
func TestCloseDeadDecides(t *testing.T) {
	kernelHang := detectors.Alert{Detector: detectors.StaleReuseName, Outcome: detectors.OutcomeHang, Evidence: detectors.EvidenceKernel, Waited: time.Second}
	with := func(a detectors.Alert, f func(*detectors.Alert)) detectors.Alert { f(&a); return a }
	tests := []struct {
		name       string
		off        bool
		fresh      bool // handed out as a fresh dial
		alert      detectors.Alert
		edit       func(r *request)
		ackedSince bool // the peer acknowledges bytes after GotConn's reading
		wantClosed bool
	}{
		{name: "kernel hang", alert: kernelHang, wantClosed: true},
		{name: "option off", off: true, alert: kernelHang},
		{name: "timeout fallback hang", alert: with(kernelHang, func(a *detectors.Alert) { a.Evidence = detectors.EvidenceTimeout })},
		{name: "beyond first hop", alert: with(kernelHang, func(a *detectors.Alert) { a.Outcome = detectors.OutcomeBeyondFirstHop })},
		{name: "another detector", alert: with(kernelHang, func(a *detectors.Alert) { a.Detector = detectors.KeepAliveGapName })},
		{name: "fresh dial", fresh: true, alert: kernelHang},
		{name: "response came", alert: kernelHang, edit: func(r *request) {
			r.returned(httptest.NewRequest(http.MethodGet, "http://example.test/", nil), &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1}, nil)
		}},
		{name: "request ended", alert: kernelHang, edit: func(r *request) { r.end(detect.BodyNone, 0, nil) }},
		{name: "acknowledged since the verdict", alert: kernelHang, ackedSince: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c
				}
				close(accepted)
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if peer := <-accepted; peer != nil {
				defer peer.Close()
				go io.Copy(io.Discard, peer)
			}

			tel := newTelemetry(t)
			var opts []Option
			if !tt.off {
				opts = append(opts, WithCloseDeadConnections())
			}
			tr := NewTransport(roundTripperFunc(nil), tel.options(opts...)...)
			req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
			s := tr.newRequest(req)
			s.begin()
			info := httptrace.GotConnInfo{Conn: c, Reused: true, WasIdle: true, IdleTime: 2 * time.Second}
			if tt.fresh {
				info = httptrace.GotConnInfo{Conn: c}
			}
			s.gotConn(info)
			if !tt.fresh && s.tl.Conns[0].TCP == nil {
				t.Fatal("the kernel was not read at GotConn")
			}
			if tt.ackedSince {
				if _, err := c.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				testkit.WaitFor(t, 2*time.Second, "the write to be acknowledged", func() bool {
					return sockopt.TCPInfo(c, time.Now()).BytesAcked > s.tl.Conns[0].TCP.BytesAcked
				})
			}
			if tt.edit != nil {
				tt.edit(s)
			}
			s.closeDead(s.spanCtx, nil, []detectors.Alert{tt.alert})
			s.end(detect.BodyNone, 0, nil)                  // a second end does nothing
			closed := sockopt.TCPInfo(c, time.Now()) == nil // a closed socket cannot be read
			if closed != tt.wantClosed {
				t.Errorf("closed: %v; want %v", closed, tt.wantClosed)
			}
			if got := tel.Collect(t).Total(vocab.MetricClosedDead); got != float64(b2i(tt.wantClosed)) {
				t.Errorf("%s: got %v; want %v", vocab.MetricClosedDead, got, b2i(tt.wantClosed))
			}
		})
	}
}

// TestNATKeepAlive: keep-alive set on connections conntrace dials, below
// the path's idle timeout (configured, then learned), as the socket itself
// reads back, never lengthened, and nothing without the option.
func TestNATKeepAlive(t *testing.T) {
	const sec = time.Second
	goDefault := &net.Dialer{}                                                                         // 15s idle, 15s interval
	off := &net.Dialer{KeepAlive: -1}                                                                  // off
	short := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: sec, Interval: sec}} // shorter than wanted
	tests := []struct {
		name      string
		dialer    *net.Dialer
		off       bool // without WithNATKeepAlive
		learned   time.Duration
		wantOn    bool
		wantIdle  time.Duration
		wantIntvl time.Duration
	}{
		{name: "off turned on, at half the configured 10s", dialer: off, wantOn: true, wantIdle: 5 * sec, wantIntvl: 5 * sec},
		{name: "Go's default lowered", dialer: goDefault, wantOn: true, wantIdle: 5 * sec, wantIntvl: 5 * sec},
		{name: "a shorter one kept", dialer: short, wantOn: true, wantIdle: sec, wantIntvl: sec},
		{name: "the learned timeout wins", dialer: off, learned: 4 * sec, wantOn: true, wantIdle: 2 * sec, wantIntvl: 2 * sec},
		{name: "without the option, off stays off", dialer: off, off: true},
	}
	srv := newServer(t, hello)
	host, port := srvHostPort(t, srv.URL)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			opts := []Option{WithNATIdleTimeout(10 * sec)}
			if !tt.off {
				opts = append(opts, WithNATKeepAlive())
			}
			base := &http.Transport{DialContext: tt.dialer.DialContext}
			ct := NewTransport(base, tel.options(opts...)...)
			base.DialContext = ct.WrapDialContext(tt.dialer.DialContext)
			defer base.CloseIdleConnections()
			if tt.learned > 0 {
				ct.cure.paths.Dead(host, port, tt.learned)
			}
			var (
				mu  sync.Mutex
				got detect.SocketOptions
			)
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) { mu.Lock(); got = sockopt.Options(i.Conn); mu.Unlock() },
			})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			res, err := (&http.Client{Transport: ct}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			if !got.Known || got.KeepAlive != tt.wantOn || tt.wantOn && (got.Idle != tt.wantIdle || got.Interval != tt.wantIntvl) {
				t.Fatalf("socket: %+v; want keep-alive %v, idle %v, interval %v", got, tt.wantOn, tt.wantIdle, tt.wantIntvl)
			}
			// The got_conn event reads the socket the same; keepalive_gap
			// finds nothing to say of a connection kept alive.
			attrs, _ := testkit.Event(lastSpan(t, tel).raw, vocab.EventGotConn)
			if v, _ := attrs.Value(vocab.AttrSocketKeepAliveIdle); tt.wantOn && v.AsFloat64() != tt.wantIdle.Seconds() {
				t.Errorf("got_conn %s: %v; want %v", vocab.AttrSocketKeepAliveIdle, v.AsFloat64(), tt.wantIdle.Seconds())
			}
			if gap := tel.handledBy(detectors.KeepAliveGapName); (len(gap) != 0) != !tt.wantOn {
				t.Errorf("keepalive_gap alerts: %+v; want one only if keep-alive is off", gap)
			}
		})
	}
}
