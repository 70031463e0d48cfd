package conntrace

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// callEveryHook calls every hook of ct, as a hostile caller may, with
// plausible and odd arguments alike.
func callEveryHook(ct *httptrace.ClientTrace) {
	if ct == nil {
		return
	}
	call := func(f func()) { f() }
	if ct.GetConn != nil {
		call(func() { ct.GetConn("example.test:8080") })
	}
	if ct.GotConn != nil {
		ct.GotConn(httptrace.GotConnInfo{Conn: testConn, Reused: true, WasIdle: true, IdleTime: time.Hour})
		ct.GotConn(httptrace.GotConnInfo{}) // no connection at all
		ct.GotConn(httptrace.GotConnInfo{Conn: fakeConn{remote: (*net.TCPAddr)(nil), local: (*net.TCPAddr)(nil)}})
	}
	if ct.PutIdleConn != nil {
		ct.PutIdleConn(nil)
		ct.PutIdleConn(errTooManyIdle)
	}
	if ct.WroteRequest != nil {
		ct.WroteRequest(httptrace.WroteRequestInfo{Err: errors.New("late")})
	}
	if ct.GotFirstResponseByte != nil {
		ct.GotFirstResponseByte()
	}
	if ct.DNSStart != nil {
		ct.DNSStart(httptrace.DNSStartInfo{Host: "example.test"})
		ct.DNSDone(httptrace.DNSDoneInfo{})
	}
	if ct.ConnectStart != nil {
		ct.ConnectStart("tcp", "127.0.0.2:8080")
		ct.ConnectDone("tcp", "127.0.0.2:8080", errors.New("late"))
	}
	if ct.TLSHandshakeStart != nil {
		ct.TLSHandshakeStart()
		ct.TLSHandshakeDone(tls.ConnectionState{}, nil)
	}
}

var errTooManyIdle = fmt.Errorf("http: putIdleConn: too many idle connections for host")

// TestLateHooksReachNoOtherRequest plays the hostile callers: code that
// kept a request's ClientTrace while its body was open, and calls every
// hook, again and again, from several goroutines, after that request ended
// and while the same Transport serves others. No hook may panic or block,
// and the other requests' spans and metrics must be exactly theirs.
func TestLateHooksReachNoOtherRequest(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	testkit.Get(t, client, srv.URL) // the kept request reuses this connection: the path most worth optimising

	res, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	kept := httptrace.ContextClientTrace(res.Request.Context())
	if kept == nil {
		t.Fatal("the request's context holds no ClientTrace while its body is open")
	}
	keptHooks := *kept // a copy of the funcs, as httptrace's composition keeps them
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	first := len(tel.Spans.Ended())

	stop := make(chan struct{})
	var hostile sync.WaitGroup
	for range 4 {
		hostile.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				callEveryHook(kept)
				callEveryHook(&keptHooks)
			}
		})
	}
	const others = 50
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range others {
			if got := testkit.Get(t, client, srv.URL); got != "hello" {
				t.Errorf("body: %q", got)
			}
		}
	}()
	// Wall clock on purpose: a watchdog only; in a bubble the spinning hostile goroutines would keep fake time still.
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("requests blocked while late hooks ran")
	}
	close(stop)
	hostile.Wait()

	spans := tel.Spans.Ended()[first:]
	if len(spans) != others {
		t.Fatalf("spans of the other requests: %d; want %d", len(spans), others)
	}
	for _, s := range spans {
		evs := testkit.EventNames(s)
		for name, want := range map[string]int{vocab.EventGotConn: 1, vocab.EventPutIdleConn: 1, vocab.EventAlert: 0, vocab.EventDNSStart: 0, vocab.EventConnectStart: 0, vocab.EventTLSStart: 0} {
			if got := testkit.Count(evs, name); got != want {
				t.Errorf("another request's span has %d %s events; want %d: late hooks wrote into it", got, name, want)
			}
		}
		checkMoments(t, s) // a late write or first byte would show as an event, or out of order
		if got, _ := testkit.Event(s, vocab.EventGotConn); got.Len() > 0 {
			if v, _ := got.Value(vocab.AttrIdleTime); v.AsFloat64() > 60 {
				t.Errorf("another request's got_conn says idle %vs: the late GotConn's hour", v.AsFloat64())
			}
		}
	}
	points := tel.Collect(t)
	host := []attribute.KeyValue{semconv.ServerPort(srv.Listener.Addr().(*net.TCPAddr).Port)}
	if got := points.Total("http.client.request.duration", host...); got != others+2 {
		t.Errorf("request durations: %v; want %d", got, others+2)
	}
	if got := points.Total("http.client.active_requests", host...); got != 0 {
		t.Errorf("active requests after all ended: %v; want 0", got)
	}
	if got := points.Total(vocab.MetricStaleReuses); got != 0 {
		t.Errorf("stale reuses: %v; want 0 (a late GotConn said idle an hour, for a request that had ended)", got)
	}
}

// mirror is a base RoundTripper that sends each request, and a copy of it
// with the same context to a second transport after the first has
// answered: a mirroring proxy's, or a hedging client's. The copy's hooks
// fire after the original request has ended.
type mirror struct {
	primary, shadow *http.Transport
	wg              sync.WaitGroup
}

func (m *mirror) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := m.primary.RoundTrip(r)
	m.wg.Go(func() {
		// Wall clock on purpose: this only lets the original end first; the test is -race over net/http's real goroutines.
		time.Sleep(5 * time.Millisecond) // the original has ended by now, usually
		if res, err := m.shadow.RoundTrip(r.Clone(r.Context())); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	})
	return res, err
}

// TestMirroringBase: the shadow copies' hooks run late, on net/http's own
// goroutines, through the real transport; the requests' telemetry stays
// their own, and nothing races (go test -race) or leaks.
func TestMirroringBase(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	m := &mirror{primary: &http.Transport{}, shadow: &http.Transport{}}
	defer m.primary.CloseIdleConnections()
	defer m.shadow.CloseIdleConnections()
	client := &http.Client{Transport: NewTransport(m, tel.options(WithoutAudit())...)}
	const n = 30
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for range n / 3 {
				if got := testkit.Get(t, client, srv.URL); got != "hello" {
					t.Errorf("body: %q", got)
				}
			}
		})
	}
	wg.Wait()
	m.wg.Wait()
	spans := tel.Spans.Ended()
	if len(spans) != n {
		t.Fatalf("spans: %d; want %d", len(spans), n)
	}
	for _, s := range spans {
		if got := testkit.Count(testkit.EventNames(s), vocab.EventGotConn); got < 1 {
			t.Errorf("a span without its got_conn: %q", testkit.EventNames(s))
		}
	}
	if got := tel.Collect(t).Total("http.client.active_requests"); got != 0 {
		t.Errorf("active requests after all ended: %v; want 0", got)
	}
}

// TestPanickingHookLeavesNothingLocked: a caller's own ClientTrace hook
// that panics (composed after conntrace's) goes up through RoundTrip; the
// request is ended, and the next requests are served, within their own
// deadlines.
func TestPanickingHookLeavesNothingLocked(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	testkit.Get(t, client, srv.URL) // a pooled connection, so GotConn runs on this goroutine

	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Error("the caller's hook panicked, and RoundTrip did not pass it on")
			}
		}()
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(httptrace.GotConnInfo) { panic("caller's hook") },
		})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		client.Transport.RoundTrip(req)
	}()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/"+strconv.Itoa(i), nil)
		res, err := client.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("request after the panic: %v", err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		cancel()
	}
	if got := tel.Collect(t).Total("http.client.active_requests"); got != 0 {
		t.Errorf("active requests: %v; want 0 (the panicked request was ended)", got)
	}
}

// TestRequestsStayApart: many concurrent requests to several servers; each
// span describes its own request only: its server port, url.full, and the
// got_conn event of its own connection.
func TestRequestsStayApart(t *testing.T) {
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	var ports []int
	var urls []string
	for range 3 {
		srv := newServer(t, hello)
		urls = append(urls, srv.URL)
		ports = append(ports, srv.Listener.Addr().(*net.TCPAddr).Port)
	}
	const perWorker = 40
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range perWorker {
				if got := testkit.Get(t, client, urls[(w+i)%len(urls)]); got != "hello" {
					t.Errorf("body: got %q", got)
					return
				}
			}
		})
	}
	wg.Wait()

	spans := tel.Spans.Ended()
	if len(spans) != 6*perWorker {
		t.Fatalf("got %d spans; want %d", len(spans), 6*perWorker)
	}
	perPort := map[int]int{}
	for _, s := range spans {
		attrs := attribute.NewSet(s.Attributes()...)
		port, _ := attrs.Value(semconv.ServerPortKey)
		url, _ := attrs.Value(semconv.URLFullKey)
		if want := "http://127.0.0.1:" + strconv.Itoa(int(port.AsInt64())); url.AsString() != want {
			t.Errorf("span of %s: url.full %q; want %q", port.Emit(), url.AsString(), want)
		}
		got, ok := testkit.Event(s, vocab.EventGotConn)
		if !ok {
			t.Errorf("span without got_conn: %q", testkit.EventNames(s))
			continue
		}
		if peer, _ := got.Value(semconv.NetworkPeerPortKey); peer.AsInt64() != port.AsInt64() {
			t.Errorf("span to port %d: got_conn from peer port %d: two requests mixed", port.AsInt64(), peer.AsInt64())
		}
		if n := testkit.Count(testkit.EventNames(s), vocab.EventGotConn); n != 1 {
			t.Errorf("span to port %d: %d %s events; want 1 (%q)", port.AsInt64(), n, vocab.EventGotConn, testkit.EventNames(s))
		}
		checkMoments(t, s)
		perPort[int(port.AsInt64())]++
	}
	points := tel.Collect(t)
	for _, p := range ports {
		host := []attribute.KeyValue{semconv.ServerPort(p)}
		if got := points.Total("http.client.request.duration", host...); got != float64(perPort[p]) {
			t.Errorf("request durations for port %d: got %v; want %d", p, got, perPort[p])
		}
		if got := points.Total("http.client.active_requests", host...); got != 0 {
			t.Errorf("active requests for port %d after all ended: got %v; want 0", p, got)
		}
	}
}

// TestContextAfterEnd: the request's context that outlives it
// (res.Request.Context()) no longer holds conntrace's hooks, so a request
// built on it later carries none of the old request's.
func TestContextAfterEnd(t *testing.T) {
	srv := newServer(t, hello)
	client, _ := newClient(t, WithoutSpans())
	res, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := res.Request.Context()
	if httptrace.ContextClientTrace(ctx) == nil {
		t.Fatalf("while the body is unread, the request's context holds no ClientTrace; want conntrace's")
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if ct := httptrace.ContextClientTrace(ctx); ct != nil {
		t.Errorf("after the body's EOF, the request's context still holds a ClientTrace; want none")
	}
	if ctx.Err() != nil {
		t.Errorf("the request's context was cancelled: %v", ctx.Err())
	}
}

// TestOnlyWhatIsRecordedIsHooked: a request whose span records gets every
// hook; one that records no span (metrics only, or not sampled) only the
// two the detectors and metrics need (and, when tracing, WroteRequest, for
// an alert span's timeline); the dial's hooks come through the context, at
// the first dial.
func TestOnlyWhatIsRecordedIsHooked(t *testing.T) {
	tel := newTelemetry(t)
	req, _ := http.NewRequest(http.MethodGet, "http://example.test:8080/x", nil)
	for _, tt := range []struct {
		name      string
		opts      []Option
		wantEvent bool
	}{
		{"recording span", tel.options(), true},
		{"metrics only", tel.options(WithoutSpans()), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := NewTransport(nil, append(tt.opts, WithoutAudit())...).newRequest(req)
			h := httptrace.ContextClientTrace(r.sendCtx())
			if h == nil || h.GotConn == nil || h.PutIdleConn == nil {
				t.Fatalf("hooks %+v; want at least GotConn and PutIdleConn", h)
			}
			if got := h.WroteRequest != nil || h.GetConn != nil || h.TLSHandshakeDone != nil; got != tt.wantEvent {
				t.Errorf("event hooks bound: %v; want %v", got, tt.wantEvent)
			}
			if h.DNSStart != nil || h.ConnectDone != nil {
				t.Errorf("dial hooks bound before any dial")
			}
			if r.dial.Load() != nil {
				t.Errorf("dial state made before any dial")
			}
			r.end(0, 0, nil)
		})
	}
}
