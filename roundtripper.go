package conntrace

import (
	"context"
	"errors"
	"hash/maphash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
)

// Transport is an http.RoundTripper that records what happens to the
// connections of every request it carries, as span events and metrics, and
// runs the detectors that turn those timelines into alerts.
//
// A Transport is safe for concurrent use by multiple goroutines, as its base
// must be. Create it with [NewTransport]; the zero value is not usable.
type Transport struct {
	base        http.RoundTripper
	tracer      trace.Tracer // nil WithoutSpans
	propagators propagation.TextMapPropagator
	inst        *instruments
	detector    detectors.Detector
	pool        *detectors.PoolOverflow // pool_overflow: per host, fed directly (pool_overflow.go)
	limiter     detectors.Limiter
	hosts       hostCache
	logger      *slog.Logger
	handler     AlertHandler
	cure        cure // WithCloseDeadConnections, WithNATKeepAlive (cure.go)
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport returns a Transport that instruments base; a nil base means
// http.DefaultTransport.
//
// When base is an *http.Transport, NewTransport logs an audit of its
// configuration once (see [WithoutAudit]) and configures the detectors from
// it (its IdleConnTimeout, MaxIdleConnsPerHost and HTTP/2 pings).
//
// Invalid options, such as a negative timeout, are programming errors:
// NewTransport panics with a message naming each bad option and its value,
// so a misconfiguration shows at start-up and never inside RoundTrip.
func NewTransport(base http.RoundTripper, opts ...Option) *Transport {
	c := newConfig(opts)
	if base == nil {
		base = http.DefaultTransport
	}
	if c.connMetrics {
		c.errs = append(c.errs, checkConnectionMetrics(base))
	}
	if err := c.err(); err != nil {
		panic(err.Error())
	}
	meter := c.meterProvider.Meter(ScopeName, metricVersion)
	paths := new(detectors.PathTimeouts)
	detector, pool := newDetectors(c, base, paths)
	t := &Transport{
		base:        base,
		propagators: c.propagators,
		inst:        newInstruments(meter),
		detector:    detector,
		pool:        pool,
		limiter:     detectors.Limiter{Interval: c.alertInterval},
		logger:      c.logger,
		handler:     c.alertHandler,
		cure:        newCure(c, paths),
	}
	t.hosts.seed = maphash.MakeSeed()
	var reg metric.Registration
	t.hosts.counts, reg = newCounts(meter)
	// The meter keeps each callback, and the callback what it reports, for
	// as long as the MeterProvider lives; a Transport that is dropped
	// unregisters them, or a program that makes Transports as it goes would
	// collect more callbacks forever.
	for _, reg := range []metric.Registration{reg, newLearnedGauges(meter, paths, base, c)} {
		if reg != nil {
			runtime.AddCleanup(t, func(reg metric.Registration) { _ = reg.Unregister() }, reg)
		}
	}
	if c.spans {
		t.tracer = c.tracerProvider.Tracer(ScopeName, tracerVersion)
	}
	logAudit(c, base)
	if c.connMetrics {
		t.instrumentDialer(base.(*http.Transport))
	}
	return t
}

var (
	tracerVersion = trace.WithInstrumentationVersion(Version)
	metricVersion = metric.WithInstrumentationVersion(Version)
)

// Base returns the RoundTripper that t wraps.
func (t *Transport) Base() http.RoundTripper { return t.base }

// CloseIdleConnections closes the idle connections of the base transport,
// if it has a CloseIdleConnections method (as *http.Transport does).
func (t *Transport) CloseIdleConnections() {
	if ci, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

// RoundTrip sends r through the base transport with conntrace's httptrace
// hooks attached to a copy of it; r itself is not modified, and trailer
// values the caller sets in r.Trailer while the body is read are sent. Hooks
// already in r's context keep firing (after conntrace's). The response, or
// the base transport's error, is returned unchanged, except that the
// response body is wrapped so that the request's span ends when the body
// reaches EOF or is closed, or, if the caller drops it without either, when
// the garbage collector finds it unreachable. A body that can be written to
// (a 101 Switching Protocols response) can still be written to. With
// [WithCloseDeadConnections], a request whose connection conntrace closed
// as dead is resent (HTTP/2), or fails with an error that wraps
// [ErrDeadConnection] and the base's.
//
// The request's span is a child of the span in r's context; if there is
// none and r's headers carry a trace context (per the propagators of
// [WithPropagators]), of that one, so that the trace context RoundTrip
// writes into the headers stays in the caller's trace.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r == nil || r.URL == nil {
		// Nothing to describe; let the base transport report the mistake.
		return t.base.RoundTrip(r)
	}
	start := time.Now()
	s := t.newRequestState(r, start)
	ctx := s.withHooks()
	// A shallow copy leaves r untouched, and shares r.Trailer: a caller may
	// fill its values while the body is read (a checksum), and net/http
	// sends them after it; a copy of the map (r.Clone) would send none.
	r = r.WithContext(ctx)
	if t.injects(s, r) {
		r.Header = r.Header.Clone() // the only part of r written to
		t.propagators.Inject(ctx, propagation.HeaderCarrier(r.Header))
	}
	s.host.counts.active.Add(1)

	// A panic in the base goes on up unchanged, but must not leave the span
	// open and the request counted as active forever.
	returned := false
	defer func() {
		if !returned {
			s.finish(errBasePanicked)
		}
	}()
	res, err := t.base.RoundTrip(r)
	res, err = s.resendAfterClose(r, res, err) // WithCloseDeadConnections (cure.go)
	returned = true

	t.recordDuration(s, r.URL.Scheme, time.Since(start), res, err)
	if s.ownSpan && s.events {
		s.setSpanAttributes(r.URL, res, err)
	}
	s.response(r, res, err)

	if err != nil || res == nil || res.Body == nil || res.Body == http.NoBody {
		// Nothing left to read: the request ends here, and a NoBody stays
		// NoBody. finish sets error.type and the status from err itself.
		s.finish(err)
		return res, err
	}
	res.Body = newBody(s, res.Body)
	return res, nil
}

// recordDuration records http.client.request.duration: the time to the
// response's headers, as otelhttp measures it.
func (t *Transport) recordDuration(s *requestState, scheme string, d time.Duration, res *http.Response, err error) {
	if err == nil && res != nil {
		k := durationKey{method: s.tl.Method, scheme: scheme, proto: protocolVersion(res), status: res.StatusCode}
		t.inst.requestDuration.Inst().Record(s.ctx, d.Seconds(), s.host.durationOptions(k)...)
		return
	}
	attrs := []attribute.KeyValue{semconv.URLScheme(scheme)}
	if err != nil {
		attrs = append(attrs, errorTypeAttr(s.ctx, err))
	}
	t.inst.requestDuration.Record(s.ctx, d.Seconds(), httpconv.RequestMethodAttr(s.tl.Method), s.tl.Host, s.tl.Port, attrs...)
}

// setSpanAttributes sets url.full and the response's attributes on the
// request's own span, in one call: the span grows its attributes once.
func (s *requestState) setSpanAttributes(u *url.URL, res *http.Response, err error) {
	attrs := append(s.spanAttrs[:0], semconv.URLFull(redactedURL(u)))
	if err == nil && res != nil {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(res.StatusCode))
		if v := protocolVersion(res); v != "" {
			attrs = append(attrs, semconv.NetworkProtocolVersion(v))
		}
		if res.StatusCode >= 400 {
			// For a client, every 4xx and 5xx is an error (semconv).
			attrs = append(attrs, semconv.ErrorTypeKey.String(strconv.Itoa(res.StatusCode)))
			s.span.SetStatus(codes.Error, "")
		}
	}
	s.span.SetAttributes(attrs...)
}

// errBasePanicked ends the span of a request whose base transport panicked.
var errBasePanicked = errors.New("conntrace: the base RoundTripper panicked")

// injects reports whether RoundTrip writes the trace context into the
// request's headers: always for its own span; for a client span made
// outside, unless that span's owner (otelhttp) has already done so.
func (t *Transport) injects(s *requestState, r *http.Request) bool {
	if s.span == nil || r.Header == nil {
		// A nil Header is the base transport's error to report.
		return false
	}
	if s.ownSpan {
		return true
	}
	fields := t.propagators.Fields()
	for _, f := range fields {
		if r.Header.Get(f) != "" {
			return false
		}
	}
	return len(fields) > 0
}

// newRequestState starts (or finds) the request's span and prepares its
// timeline.
func (t *Transport) newRequestState(r *http.Request, start time.Time) *requestState {
	s := statePool.Get().(*requestState)
	s.t, s.ctx = t, r.Context()
	s.host = t.hosts.get(r.URL)
	s.tl = detectors.Timeline{Host: s.host.host, Port: s.host.port, Method: method(r.Method), Start: start}
	s.tl.Conns = s.conns[:0]
	s.flight = t.pool.Begin(s.host.host, s.host.port) // nil, at one atomic load, unless the host's pool overflowed

	if t.tracer == nil {
		return s
	}
	if parent := trace.SpanFromContext(s.ctx); parent.IsRecording() && isClientSpan(parent) {
		// otelhttp (or the caller) already made the client span for this
		// request: a second one would only repeat it.
		s.span = parent
	} else {
		// url.full is set when the round trip returns, with the response's
		// attributes, in one call: a sampler sees the method, server.address
		// and server.port.
		opts := s.host.spanStartOptions(s.tl.Method)
		if s.tl.Method == "_OTHER" {
			opts = append(opts[:len(opts):len(opts)], trace.WithAttributes(semconv.HTTPRequestMethodOriginal(r.Method)))
		}
		parent := s.ctx
		if len(r.Header) > 0 && !trace.SpanContextFromContext(parent).IsValid() {
			parent = t.headerParent(parent, r.Header)
		}
		s.ctx, s.span = t.tracer.Start(parent, spanName(s.tl.Method), opts...)
		s.ownSpan = true
	}
	s.events = s.span.IsRecording()
	return s
}

// headerParent returns ctx with the trace context that h carries, per t's
// propagators, as the remote parent of the request's span; or ctx itself
// if h carries none. A caller that wrote its span into the headers without
// putting it in the context (go-openapi/runtime's WithOpenTelemetry does)
// keeps its trace: the header conntrace injects names the same trace, not a
// new one.
func (t *Transport) headerParent(ctx context.Context, h http.Header) context.Context {
	if p := t.propagators.Extract(ctx, propagation.HeaderCarrier(h)); trace.SpanContextFromContext(p).IsValid() {
		return p
	}
	return ctx
}

// isClientSpan reports whether span is known to be a client span. The API's
// Span does not expose its kind; the SDK's spans do (ReadOnlySpan), and a
// span whose kind cannot be known is not assumed to be a client span.
func isClientSpan(span trace.Span) bool {
	k, ok := span.(interface{ SpanKind() trace.SpanKind })
	return ok && k.SpanKind() == trace.SpanKindClient
}

// spanName follows semconv: the method, or "HTTP" for an unknown one.
func spanName(method string) string {
	if method == "_OTHER" {
		return "HTTP"
	}
	return method
}

func hostAndPort(u *url.URL) (string, int) {
	host := u.Hostname()
	if p, err := strconv.Atoi(u.Port()); err == nil {
		return host, p
	}
	switch u.Scheme {
	case "https", "wss":
		return host, 443
	default:
		return host, 80
	}
}

func protocolVersion(res *http.Response) string {
	switch {
	case res.ProtoMajor == 1 && res.ProtoMinor == 1:
		return "1.1"
	case res.ProtoMajor == 2:
		return "2"
	case res.ProtoMajor == 1 && res.ProtoMinor == 0:
		return "1.0"
	default:
		return strings.TrimPrefix(res.Proto, "HTTP/")
	}
}

// body ends the request's telemetry when the response body reaches EOF, a
// read fails, or it is closed, whichever comes first; or, for a body the
// caller drops without any of these, when the garbage collector finds it
// unreachable (abandon). It lets go of the request's state then: the state
// may serve another request next.
type body struct {
	rc      io.ReadCloser
	st      *bodyState
	cleanup runtime.Cleanup // runs abandon; stopped when the body ends
}

// bodyState is what abandon needs of a body. It lives apart from the body:
// a cleanup that could reach the body would keep it reachable, and never run.
type bodyState struct {
	s atomic.Pointer[requestState]
	n atomic.Int64 // bytes read, for body_not_drained; Close may race a Read
}

// writableBody keeps the io.Writer of a 101 Switching Protocols body.
type writableBody struct{ body }

func newBody(s *requestState, rc io.ReadCloser) io.ReadCloser {
	st := new(bodyState)
	st.s.Store(s)
	if _, ok := rc.(io.ReadWriteCloser); ok {
		b := &writableBody{body{rc: rc, st: st}}
		b.cleanup = runtime.AddCleanup(b, abandon, st)
		return b
	}
	b := &body{rc: rc, st: st}
	b.cleanup = runtime.AddCleanup(b, abandon, st)
	return b
}

// end ends the request's telemetry, once: the body ended as end says. It
// stops the cleanup, so a body closed or read to EOF leaves the garbage
// collector nothing to run.
func (b *body) end(end detectors.BodyEnd, err error) {
	if s := b.st.s.Swap(nil); s != nil {
		b.cleanup.Stop()
		runtime.KeepAlive(b) // Stop is sure to work only while b is reachable
		s.endBody(end, b.st.n.Load(), err)
	}
}

// abandon ends the telemetry of a body that was dropped unclosed before
// EOF. The runtime calls it once the body is unreachable, so no Read or
// Close can race it, on a goroutine shared by every cleanup in the process:
// the ending, which may export the span or call the AlertHandler, gets a
// goroutine of its own (as runtime.AddCleanup advises for slow work).
func abandon(st *bodyState) {
	if s := st.s.Swap(nil); s != nil {
		go s.endBody(detectors.BodyAbandoned, st.n.Load(), nil)
	}
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.st.n.Add(int64(n))
	switch err {
	case nil:
	case io.EOF:
		b.end(detectors.BodyEOF, nil)
	default:
		b.end(detectors.BodyError, err)
	}
	return n, err
}

// Close finishes the telemetry before closing the body, because Close may
// block (an upgraded stream, a custom transport's body).
func (b *body) Close() error {
	b.end(detectors.BodyClosed, nil)
	return b.rc.Close()
}

func (b *writableBody) Write(p []byte) (int, error) {
	return b.rc.(io.Writer).Write(p)
}
