package conntrace

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

func newServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// startServer starts s, made by httptest.NewUnstartedServer: over TLS,
// offering HTTP/2, if h2; plain HTTP/1.1 if not. It is closed when the
// test ends.
func startServer(t *testing.T, s *httptest.Server, h2 bool) {
	if h2 {
		s.EnableHTTP2 = true
		s.StartTLS()
	} else {
		s.Start()
	}
	t.Cleanup(s.Close)
}

func hello(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello") }

// newClient returns a client whose conntrace Transport wraps a fresh
// *http.Transport, closed when the test ends.
func newClient(t *testing.T, opts ...Option) (*http.Client, *http.Transport) {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	return &http.Client{Transport: NewTransport(base, opts...)}, base
}

// TestReuse follows two requests over one connection end to end: the first
// dials, the second reuses, and spans and metrics say so.
func TestReuse(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	for range 2 {
		if got := testkit.Get(t, client, srv.URL); got != "hello" {
			t.Fatalf("body: got %q; want %q", got, "hello")
		}
	}

	spans := tel.Spans.Ended()
	if len(spans) != 2 {
		t.Fatalf("got %d spans; want 2", len(spans))
	}
	for i, s := range spans {
		if s.Name() != "GET" || s.SpanKind() != trace.SpanKindClient {
			t.Errorf("span %d: got %q kind %v; want \"GET\" client", i, s.Name(), s.SpanKind())
		}
		attrs := attribute.NewSet(s.Attributes()...)
		for _, kv := range []attribute.KeyValue{
			semconv.HTTPRequestMethodKey.String("GET"), semconv.ServerAddress("127.0.0.1"),
			semconv.HTTPResponseStatusCode(200), semconv.NetworkProtocolVersion("1.1"), semconv.URLFull(srv.URL),
		} {
			if v, ok := attrs.Value(kv.Key); !ok || v != kv.Value {
				t.Errorf("span %d: %s = %v; want %v", i, kv.Key, v.Emit(), kv.Value.Emit())
			}
		}
		got, _ := testkit.Event(s, vocab.EventGotConn)
		if v, _ := got.Value(vocab.AttrReused); v.AsBool() != (i == 1) {
			t.Errorf("span %d: %s = %v; want %v", i, vocab.AttrReused, v.AsBool(), i == 1)
		}
		names := testkit.EventNames(s)
		if dials := testkit.Count(names, vocab.EventConnectStart); dials != 1-i {
			t.Errorf("span %d: %d connect events; want %d (%q)", i, dials, 1-i, names)
		}
		for _, want := range []string{vocab.EventGetConn, vocab.EventGotConn, vocab.EventWroteRequest, vocab.EventFirstByte, vocab.EventPutIdleConn} {
			if testkit.Count(names, want) != 1 {
				t.Errorf("span %d: want one %s event in %q", i, want, names)
			}
		}
	}

	points := tel.Collect(t)
	host := []attribute.KeyValue{semconv.ServerAddress("127.0.0.1")}
	for _, tt := range []struct {
		name  string
		attrs []attribute.KeyValue
		want  float64
	}{
		{"http.client.request.duration", append(host, semconv.HTTPResponseStatusCode(200), semconv.HTTPRequestMethodKey.String("GET")), 2},
		{"http.client.active_requests", host, 0},
		{vocab.MetricDials, host, 1},
		{vocab.MetricReuses, append(host, vocab.AttrWasIdle.Bool(true)), 1},
		{vocab.MetricIdleTime, host, 1},
		{vocab.MetricPutIdle, append(host, vocab.AttrOutcome.String(vocab.OutcomePooled)), 2},
	} {
		if got := points.Total(tt.name, tt.attrs...); got != tt.want {
			t.Errorf("%s%v: got %v; want %v", tt.name, tt.attrs, got, tt.want)
		}
	}
	if len(points["http.client.active_requests"]) == 0 {
		t.Errorf("http.client.active_requests was never recorded")
	}
}

func TestPropagation(t *testing.T) {
	var header atomic.Value
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		header.Store(r.Header.Get("traceparent"))
	})
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithPropagators(propagation.TraceContext{}))...)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()

	if req.Header.Get("traceparent") != "" {
		t.Errorf("the caller's request was modified: it has a traceparent header")
	}
	span := tel.Spans.Ended()[0]
	got, _ := header.Load().(string)
	if !strings.Contains(got, span.SpanContext().TraceID().String()) || !strings.Contains(got, span.SpanContext().SpanID().String()) {
		t.Errorf("traceparent: got %q; want trace %s span %s", got, span.SpanContext().TraceID(), span.SpanContext().SpanID())
	}
}

// TestStackedUnderOtelhttp: otelhttp outside makes the client span;
// conntrace adds its events to that span instead of making a second one.
func TestStackedUnderOtelhttp(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: otelhttp.NewTransport(
		NewTransport(base, tel.options()...),
		otelhttp.WithTracerProvider(tel.TP), otelhttp.WithMeterProvider(tel.MP))}
	testkit.Get(t, client, srv.URL)

	spans := tel.Spans.Ended()
	if len(spans) != 1 {
		t.Fatalf("got %d spans; want 1 (otelhttp's)", len(spans))
	}
	if got := spans[0].InstrumentationScope().Name; got == ScopeName {
		t.Errorf("the span is conntrace's; want otelhttp's")
	}
	names := testkit.EventNames(spans[0])
	for _, want := range []string{vocab.EventGotConn, vocab.EventWroteRequest, vocab.EventFirstByte, vocab.EventPutIdleConn} {
		if testkit.Count(names, want) != 1 {
			t.Errorf("want one %s event on otelhttp's span, got %q", want, names)
		}
	}
}

// TestStackedAlertOnEarlyClose: otelhttp ends its span as soon as the body
// is closed, before conntrace hears of it; the stale-reuse verdict must
// already be on the span by then. A 1ns NAT timeout makes every reuse
// suspect, and a healthy one gives the Info-level "ok" verdict.
func TestStackedAlertOnEarlyClose(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, strings.Repeat("x", 1<<16)) })
	tel := newTelemetry(t)
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: otelhttp.NewTransport(
		NewTransport(base, tel.options(WithNATIdleTimeout(time.Nanosecond))...),
		otelhttp.WithTracerProvider(tel.TP), otelhttp.WithMeterProvider(tel.MP))}
	testkit.Get(t, client, srv.URL)
	res, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Read(make([]byte, 10))
	res.Body.Close() // before EOF

	spans := tel.Spans.Ended()
	if len(spans) != 2 {
		t.Fatalf("got %d spans; want 2", len(spans))
	}
	ev, ok := testkit.Event(spans[1], vocab.EventAlert)
	if v, _ := ev.Value(vocab.AttrOutcome); !ok || v.AsString() != "ok" {
		t.Errorf("otelhttp's span lacks the stale_reuse verdict: events %q", testkit.EventNames(spans[1]))
	}
}

// TestNotAClientSpan: a server span in the context is a parent, not a span
// to annotate.
func TestNotAClientSpan(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	ctx, parent := tel.TP.Tracer("test").Start(context.Background(), "handler", trace.WithSpanKind(trace.SpanKindServer))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	parent.End()

	spans := tel.Spans.Ended()
	if len(spans) != 2 {
		t.Fatalf("got %d spans; want 2", len(spans))
	}
	if spans[0].Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("client span's parent: got %s; want %s", spans[0].Parent().SpanID(), parent.SpanContext().SpanID())
	}
	if len(spans[1].Events()) != 0 {
		t.Errorf("server span got events %q; want none", testkit.EventNames(spans[1]))
	}
}

func TestWithoutSpans(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithoutSpans())...)
	testkit.Get(t, client, srv.URL)
	if got := len(tel.Spans.Ended()) + len(tel.Spans.Started()); got != 0 {
		t.Errorf("got %d spans; want none", got)
	}
	if got := tel.Collect(t).Total(vocab.MetricDials); got != 1 {
		t.Errorf("%s: got %v; want 1 (metrics keep working)", vocab.MetricDials, got)
	}
}

// TestSpanEnd: the span ends exactly once whichever way the request ends.
func TestSpanEnd(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, strings.Repeat("x", 1<<16))
	})
	tests := []struct {
		name       string
		path       string
		use        func(res *http.Response)
		wantStatus codes.Code
	}{
		{"EOF then Close", "/", func(res *http.Response) { io.ReadAll(res.Body); res.Body.Close(); res.Body.Close() }, codes.Unset},
		{"Close before EOF", "/", func(res *http.Response) { res.Body.Read(make([]byte, 10)); res.Body.Close() }, codes.Unset},
		{"404", "/missing", func(res *http.Response) { res.Body.Close() }, codes.Error},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			client, _ := newClient(t, tel.options()...)
			res, err := client.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(tel.Spans.Ended()); got != 0 {
				t.Errorf("span ended before the body was used")
			}
			tt.use(res)
			spans := tel.Spans.Ended()
			if len(spans) != 1 {
				t.Fatalf("got %d ended spans; want 1", len(spans))
			}
			if got := spans[0].Status().Code; got != tt.wantStatus {
				t.Errorf("status: got %v; want %v", got, tt.wantStatus)
			}
			if got := tel.Collect(t).Total("http.client.active_requests"); got != 0 {
				t.Errorf("active requests: got %v; want 0", got)
			}
		})
	}
}

// TestErrorUnchanged: the base transport's error comes back as it was, and
// the span records it.
func TestErrorUnchanged(t *testing.T) {
	want := errors.New("boom")
	tel := newTelemetry(t)
	tr := NewTransport(roundTripperFunc(func(*http.Request) (*http.Response, error) { return nil, want }), tel.options()...)
	req, _ := http.NewRequest(http.MethodGet, "http://example.test/", nil)
	res, err := tr.RoundTrip(req)
	if err != want || res != nil {
		t.Fatalf("got (%v, %v); want (nil, %v)", res, err, want)
	}
	span := tel.Spans.Ended()[0]
	if span.Status().Code != codes.Error || span.Status().Description != "boom" {
		t.Errorf("status: got %v %q; want Error \"boom\"", span.Status().Code, span.Status().Description)
	}
	// errors.New's type says nothing: error.type is semconv's fallback.
	if got := tel.Collect(t).Total("http.client.request.duration", semconv.ErrorTypeOther); got != 1 {
		t.Errorf("request.duration with error.type: got %v; want 1", got)
	}
}

// TestRequestUnchanged: the caller's request keeps its context and headers,
// and a ClientTrace already in its context keeps firing.
func TestRequestUnchanged(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	var gotConn, wrote atomic.Int32
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn:      func(httptrace.GotConnInfo) { gotConn.Add(1) },
		WroteRequest: func(httptrace.WroteRequestInfo) { wrote.Add(1) },
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	req.Header.Set("X-Mine", "1")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()

	if gotConn.Load() != 1 || wrote.Load() != 1 {
		t.Errorf("caller's hooks: GotConn %d, WroteRequest %d times; want 1, 1", gotConn.Load(), wrote.Load())
	}
	if req.Context() != ctx || len(req.Header) != 1 {
		t.Errorf("the caller's request was modified: header %v", req.Header)
	}
	if testkit.Count(testkit.EventNames(tel.Spans.Ended()[0]), vocab.EventGotConn) != 1 {
		t.Errorf("conntrace's own hooks did not fire alongside the caller's")
	}
}

func TestCloseIdleConnections(t *testing.T) {
	var closed atomic.Int32
	base := struct {
		http.RoundTripper
		closer
	}{nil, closer(func() { closed.Add(1) })}
	NewTransport(base, WithoutAudit()).CloseIdleConnections()
	if closed.Load() != 1 {
		t.Errorf("base CloseIdleConnections called %d times; want 1", closed.Load())
	}
	NewTransport(roundTripperFunc(nil)).CloseIdleConnections() // a base without it: no panic
}

type closer func()

func (c closer) CloseIdleConnections() { c() }

// TestSwitchingProtocols: a 101 response body stays writable, so protocols
// such as WebSocket keep working through conntrace.
func TestSwitchingProtocols(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		rw.Flush()
		line, _ := rw.ReadString('\n')
		rw.WriteString("echo: " + line)
		rw.Flush()
	})
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status: got %d; want 101", res.StatusCode)
	}
	rwc, ok := res.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body is a %T; want an io.ReadWriteCloser", res.Body)
	}
	if _, err := io.WriteString(rwc, "ping\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(rwc).ReadString('\n')
	if err != nil || line != "echo: ping\n" {
		t.Errorf("got %q, %v; want %q", line, err, "echo: ping\n")
	}
	rwc.Close()
	if got := len(tel.Spans.Ended()); got != 1 {
		t.Errorf("got %d ended spans; want 1", got)
	}
}

// TestInvalidOptions: impossible values panic in NewTransport, naming the
// option and the value; valid ones do not.
func TestInvalidOptions(t *testing.T) {
	tests := []struct {
		opts []Option
		want string // "" means no panic
	}{
		{[]Option{WithNATIdleTimeout(-1)}, "WithNATIdleTimeout(-1ns)"},
		{[]Option{WithHangTimeout(0)}, "WithHangTimeout(0s)"},
		{[]Option{WithAlertInterval(-1)}, "WithAlertInterval(-1ns)"},
		{[]Option{WithNATIdleTimeout(0), WithHangTimeout(-2)}, "WithHangTimeout(-2ns)"},
		{[]Option{WithNATIdleTimeout(1), WithHangTimeout(1), nil, WithLogger(nil), WithAlertHandler(nil)}, ""},
		// A typed nil is not nil: it would panic on first use.
		{[]Option{WithTracerProvider((*sdktrace.TracerProvider)(nil))}, "WithTracerProvider((*trace.TracerProvider)(nil))"},
		{[]Option{WithMeterProvider((*sdkmetric.MeterProvider)(nil))}, "WithMeterProvider((*metric.MeterProvider)(nil))"},
		{[]Option{WithPropagators((*propagation.TraceContext)(nil))}, "WithPropagators((*propagation.TraceContext)(nil))"},
		{[]Option{WithTracerProvider(nil), WithMeterProvider(nil), WithPropagators(nil)}, ""},
		{[]Option{WithPropagators(propagation.NewCompositeTextMapPropagator())}, ""}, // a nil slice, and a working propagator
		{[]Option{WithRedactedQueryKeys("session", "")}, `WithRedactedQueryKeys(["session" ""]): an empty key`},
		{[]Option{WithRedactedQueryKeys(), WithRedactedQueryKeys("session")}, ""},
	}
	for _, tt := range tests {
		got := func() (msg string) {
			defer func() {
				if r := recover(); r != nil {
					msg, _ = r.(string)
					if msg == "" {
						msg = "non-string panic"
					}
				}
			}()
			NewTransport(nil, tt.opts...)
			return ""
		}()
		if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
			t.Errorf("got panic %q; want one containing %q", got, tt.want)
		}
	}
}

// TestNilHeader: a request without a Header is the base transport's error
// to report, not a panic in conntrace's propagation.
func TestNilHeader(t *testing.T) {
	tel := newTelemetry(t)
	base := &http.Transport{}
	tr := NewTransport(base, tel.options(WithPropagators(propagation.TraceContext{}))...)
	u, _ := url.Parse("http://127.0.0.1:1/")
	_, err := tr.RoundTrip(&http.Request{Method: http.MethodGet, URL: u})
	if err == nil || !strings.Contains(err.Error(), "nil Request.Header") {
		t.Errorf("got %v; want net/http's nil Request.Header error", err)
	}
}

// TestNoBody: HEAD, 204 and friends have nothing to read; their body stays
// http.NoBody and the request ends at once, closed or not.
func TestNoBody(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	res, err := client.Head(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if res.Body != http.NoBody {
		t.Errorf("HEAD body: got %T; want http.NoBody", res.Body)
	}
	if got := len(tel.Spans.Ended()); got != 1 {
		t.Errorf("ended spans without Close: got %d; want 1", got)
	}
	if got := tel.Collect(t).Total("http.client.active_requests"); got != 0 {
		t.Errorf("active requests: got %v; want 0", got)
	}
}

// TestNilBodyResponse: a base that returns a response without a body still
// gets its status on the span.
func TestNilBodyResponse(t *testing.T) {
	tel := newTelemetry(t)
	tr := NewTransport(roundTripperFunc(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 500, ProtoMajor: 1, ProtoMinor: 1}, nil
	}), tel.options()...)
	req, _ := http.NewRequest(http.MethodGet, "http://example.test/", nil)
	if _, err := tr.RoundTrip(req); err != nil {
		t.Fatal(err)
	}
	span := tel.Spans.Ended()[0]
	attrs := attribute.NewSet(span.Attributes()...)
	if v, _ := attrs.Value(semconv.HTTPResponseStatusCodeKey); v.AsInt64() != 500 || span.Status().Code != codes.Error {
		t.Errorf("got status code %d, span status %v; want 500, Error", v.AsInt64(), span.Status().Code)
	}
}

// TestBasePanics: a panic in the base transport goes on up unchanged, and
// the span and the active-request count do not leak.
func TestBasePanics(t *testing.T) {
	tel := newTelemetry(t)
	tr := NewTransport(roundTripperFunc(func(*http.Request) (*http.Response, error) { panic("base bug") }), tel.options()...)
	req, _ := http.NewRequest(http.MethodGet, "http://example.test/", nil)
	func() {
		defer func() {
			if r := recover(); r != "base bug" {
				t.Errorf("recovered %v; want the base's own panic", r)
			}
		}()
		tr.RoundTrip(req)
	}()
	if got := len(tel.Spans.Ended()); got != 1 {
		t.Errorf("ended spans: got %d; want 1", got)
	}
	if got := tel.Collect(t).Total("http.client.active_requests"); got != 0 {
		t.Errorf("active requests: got %v; want 0", got)
	}
}

// TestAppClientSpanPropagates: a client span the application made around
// the call is annotated, and its context still reaches the server.
func TestAppClientSpanPropagates(t *testing.T) {
	var header atomic.Value
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { header.Store(r.Header.Get("traceparent")) })
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithPropagators(propagation.TraceContext{}))...)
	ctx, span := tel.TP.Tracer("app").Start(context.Background(), "call billing", trace.WithSpanKind(trace.SpanKindClient))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	span.End()
	if got, _ := header.Load().(string); !strings.Contains(got, span.SpanContext().SpanID().String()) {
		t.Errorf("traceparent: got %q; want the app span %s", got, span.SpanContext().SpanID())
	}
	if spans := tel.Spans.Ended(); len(spans) != 1 || testkit.Count(testkit.EventNames(spans[0]), vocab.EventGotConn) != 1 {
		t.Errorf("want the app's span alone, with conntrace's events")
	}
}

func TestOtherMethod(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	req, _ := http.NewRequest("PURGE", srv.URL, nil)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	span := tel.Spans.Ended()[0]
	attrs := attribute.NewSet(span.Attributes()...)
	method, _ := attrs.Value(semconv.HTTPRequestMethodKey)
	original, _ := attrs.Value(semconv.HTTPRequestMethodOriginalKey)
	if span.Name() != "HTTP" || method.AsString() != "_OTHER" || original.AsString() != "PURGE" {
		t.Errorf("got span %q, method %q, original %q; want \"HTTP\", \"_OTHER\", \"PURGE\"", span.Name(), method.AsString(), original.AsString())
	}
}

// countingSampler never samples, and counts the spans it was asked about.
type countingSampler struct{ n atomic.Int64 }

func (s *countingSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	s.n.Add(1)
	return sdktrace.NeverSample().ShouldSample(p)
}

func (s *countingSampler) Description() string { return "counting" }

// TestStackedUnderUnsampledOtelhttp: when otelhttp does not sample a
// request, its span records nothing and cannot tell its kind; conntrace
// still knows it for the request's client span (the headers carry it, with
// the propagators a traced service sets), so
// it starts no second span and leaves http.client.request.duration to
// otelhttp: counted once, not twice, metrics-only too.
func TestStackedUnderUnsampledOtelhttp(t *testing.T) {
	srv := newServer(t, hello)
	for _, tt := range []struct {
		name string
		opts []Option
	}{{"spans", nil}, {"metrics only", []Option{WithoutSpans()}}} {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			sampler := &countingSampler{}
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler))
			defer tp.Shutdown(context.Background())
			base := &http.Transport{}
			defer base.CloseIdleConnections()
			client := &http.Client{Transport: otelhttp.NewTransport(
				NewTransport(base, tel.options(append([]Option{WithTracerProvider(tp), WithPropagators(propagation.TraceContext{})}, tt.opts...)...)...),
				otelhttp.WithTracerProvider(tp), otelhttp.WithMeterProvider(tel.MP), otelhttp.WithPropagators(propagation.TraceContext{}))}
			for range 3 {
				testkit.Get(t, client, srv.URL)
			}
			if got := sampler.n.Load(); got != 3 {
				t.Errorf("spans started: %d; want 3, otelhttp's alone", got)
			}
			var rm metricdata.ResourceMetrics
			if err := tel.Reader.Collect(context.Background(), &rm); err != nil {
				t.Fatal(err)
			}
			scopes := map[string]bool{}
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					if m.Name == "http.client.request.duration" {
						scopes[sm.Scope.Name] = true
					}
				}
			}
			if scopes[ScopeName] || len(scopes) != 1 {
				t.Errorf("http.client.request.duration recorded by %v; want otelhttp alone", scopes)
			}
		})
	}
}

// TestCloneHeader: the headers RoundTrip sends are a clone as Header.Clone
// makes it (nil values stay nil, no value shared with the caller's), and
// the propagators' fields take the room left for them without writing into
// any other key's values; a field a propagator did not declare, or one
// more than the room, is still set, canonically.
func TestCloneHeader(t *testing.T) {
	h := http.Header{"Accept": {"a", "b"}, "X-Nil": nil, "X-Empty": {}}
	got, spare := cloneHeader(h, 2)
	if want := h.Clone(); !reflect.DeepEqual(got, want) {
		t.Fatalf("clone %#v; want %#v", got, want)
	}
	if len(spare) != 2 {
		t.Fatalf("%d spare slots; want 2", len(spare))
	}
	got["Accept"][0] = "changed"
	if h["Accept"][0] != "a" {
		t.Fatal("the clone shares the caller's values")
	}
	got["Accept"] = append(got["Accept"], "c") // must not run into the spare slots

	c := &headerCarrier{h: got, canonical: map[string]string{"traceparent": "Traceparent"}, spare: spare}
	c.Set("traceparent", "tp")
	c.Set("x-undeclared", "u")
	c.Set("tracestate", "ts") // no room left
	for k, v := range map[string]string{"Traceparent": "tp", "X-Undeclared": "u", "Tracestate": "ts", "Accept": "changed"} {
		if got[k][0] != v {
			t.Errorf("%s = %q; want %q", k, got[k], v)
		}
	}
	if len(got["Traceparent"]) != 1 || cap(got["Traceparent"]) != 1 {
		t.Errorf("Traceparent %q, cap %d; want one value, no room to grow into the next", got["Traceparent"], cap(got["Traceparent"]))
	}
	if a := got["Accept"]; len(a) != 3 || a[2] != "c" {
		t.Errorf("Accept %q; want [changed b c]", a)
	}
	if c.Get("traceparent") != "tp" || len(c.Keys()) != len(got) {
		t.Errorf("Get %q, Keys %q", c.Get("traceparent"), c.Keys())
	}
}
