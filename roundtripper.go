package conntrace

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
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
	conns       *connInstruments        // connection lifetimes, not-reused, HTTP/2 errors (metrics.go)
	limiter     detectors.Limiter
	hosts       hostCache
	logger      *slog.Logger
	handler     AlertHandler
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
	detector, pool := newDetectors(c, base)
	t := &Transport{
		base:        base,
		propagators: c.propagators,
		inst:        newInstruments(meter),
		conns:       newConnInstruments(meter),
		detector:    detector,
		pool:        pool,
		limiter:     detectors.Limiter{Interval: c.alertInterval},
		logger:      c.logger,
		handler:     c.alertHandler,
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
// hooks attached to a clone of it; r itself is not modified. Hooks already
// in r's context keep firing (after conntrace's). The response, or the base
// transport's error, is returned unchanged, except that the response body is
// wrapped so that the request's span ends when the body reaches EOF or is
// closed. A body that can be written to (a 101 Switching Protocols
// response) can still be written to.
func (t *Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r == nil || r.URL == nil {
		// Nothing to describe; let the base transport report the mistake.
		return t.base.RoundTrip(r)
	}
	start := time.Now()
	s := t.newRequestState(r, start)
	ctx := httptrace.WithClientTrace(s.ctx, s.clientTrace())
	if t.injects(s, r) {
		r = r.Clone(ctx)
		t.propagators.Inject(ctx, propagation.HeaderCarrier(r.Header))
	} else {
		// No header to write: a shallow copy is enough to leave r untouched.
		r = r.WithContext(ctx)
	}
	t.inst.activeRequests.AddSet(s.ctx, 1, s.host.set)

	// A panic in the base goes on up unchanged, but must not leave the span
	// open and the request counted as active forever.
	returned := false
	defer func() {
		if !returned {
			s.finish(errBasePanicked)
		}
	}()
	res, err := t.base.RoundTrip(r)
	returned = true

	// The metric gets url.scheme and the response attributes; the span only
	// the latter (resAttrs).
	attrs := make([]attribute.KeyValue, 1, 4)
	attrs[0] = semconv.URLScheme(r.URL.Scheme)
	switch {
	case err != nil:
		attrs = append(attrs, semconv.ErrorType(err))
	case res != nil:
		attrs = append(attrs, semconv.HTTPResponseStatusCode(res.StatusCode))
		if res.StatusCode >= 400 {
			// For a client, every 4xx and 5xx is an error (semconv).
			attrs = append(attrs, semconv.ErrorTypeKey.String(strconv.Itoa(res.StatusCode)))
		}
		if v := protocolVersion(res); v != "" {
			attrs = append(attrs, semconv.NetworkProtocolVersion(v))
		}
	}
	resAttrs := attrs[1:]
	t.inst.requestDuration.Record(s.ctx, time.Since(start).Seconds(),
		httpconv.RequestMethodAttr(s.tl.Method), s.tl.Host, s.tl.Port, attrs...)
	if s.ownSpan && err == nil && res != nil {
		s.span.SetAttributes(resAttrs...)
		if res.StatusCode >= 400 {
			s.span.SetStatus(codes.Error, "")
		}
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
	host, port := hostAndPort(r.URL)
	s := &requestState{t: t, ctx: r.Context()}
	s.host = t.hosts.get(host, port)
	s.tl = detectors.Timeline{Host: host, Port: port, Method: method(r.Method), Start: start}
	s.tl.Conns = s.conns[:0]
	s.flight = t.pool.Begin(host, port) // nil, at one atomic load, unless the host's pool overflowed

	if t.tracer == nil {
		return s
	}
	if parent := trace.SpanFromContext(s.ctx); parent.IsRecording() && isClientSpan(parent) {
		// otelhttp (or the caller) already made the client span for this
		// request: a second one would only repeat it.
		s.span = parent
	} else {
		attrs := make([]attribute.KeyValue, 0, 5)
		attrs = append(attrs, semconv.HTTPRequestMethodKey.String(s.tl.Method), s.host.kvs[0], s.host.kvs[1],
			semconv.URLFull(redactedURL(r.URL)))
		if s.tl.Method == "_OTHER" {
			attrs = append(attrs, semconv.HTTPRequestMethodOriginal(r.Method))
		}
		s.ctx, s.span = t.tracer.Start(s.ctx, spanName(s.tl.Method),
			trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(start), trace.WithAttributes(attrs...))
		s.ownSpan = true
	}
	s.events = s.span.IsRecording()
	return s
}

// isClientSpan reports whether span is known to be a client span. The API's
// Span does not expose its kind; the SDK's spans do (ReadOnlySpan), and a
// span whose kind cannot be known is not assumed to be a client span.
func isClientSpan(span trace.Span) bool {
	k, ok := span.(interface{ SpanKind() trace.SpanKind })
	return ok && k.SpanKind() == trace.SpanKindClient
}

// method returns the semconv http.request.method value of m.
func method(m string) string {
	switch m {
	case "":
		return http.MethodGet
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	default:
		return "_OTHER"
	}
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

// redactedURL is the url.full value: credentials and the values of the
// well-known signature query parameters are replaced with REDACTED, as
// semconv asks. The rest of the query is kept byte for byte.
func redactedURL(u *url.URL) string {
	if u.User == nil && !hasSensitiveQuery(u.RawQuery) {
		return u.String()
	}
	c := *u
	if c.User != nil {
		c.User = url.UserPassword("REDACTED", "REDACTED")
	}
	if hasSensitiveQuery(c.RawQuery) {
		parts := strings.Split(c.RawQuery, "&")
		for i, p := range parts {
			if k, _, ok := strings.Cut(p, "="); ok && isSensitive(k) {
				parts[i] = k + "=REDACTED"
			}
		}
		c.RawQuery = strings.Join(parts, "&")
	}
	return c.String()
}

var sensitiveQuery = []string{"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"}

func isSensitive(key string) bool {
	for _, k := range sensitiveQuery {
		if key == k {
			return true
		}
	}
	return false
}

// hasSensitiveQuery is the cheap test that spares most URLs the split.
func hasSensitiveQuery(q string) bool {
	for _, k := range sensitiveQuery {
		if strings.Contains(q, k+"=") {
			return true
		}
	}
	return false
}

// body ends the request's telemetry when the response body reaches EOF, a
// read fails, or it is closed, whichever comes first.
type body struct {
	s  *requestState
	rc io.ReadCloser
	n  int64 // bytes read, for body_not_drained
}

// writableBody keeps the io.Writer of a 101 Switching Protocols body.
type writableBody struct{ body }

func newBody(s *requestState, rc io.ReadCloser) io.ReadCloser {
	if _, ok := rc.(io.ReadWriteCloser); ok {
		return &writableBody{body{s: s, rc: rc}}
	}
	return &body{s: s, rc: rc}
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	switch err {
	case nil:
	case io.EOF:
		b.s.endBody(detectors.BodyEOF, b.n, nil)
	default:
		b.s.endBody(detectors.BodyError, b.n, err)
	}
	return n, err
}

// Close finishes the telemetry before closing the body, because Close may
// block (an upgraded stream, a custom transport's body).
func (b *body) Close() error {
	b.s.endBody(detectors.BodyClosed, b.n, nil)
	return b.rc.Close()
}

func (b *writableBody) Write(p []byte) (int, error) {
	return b.rc.(io.Writer).Write(p)
}
