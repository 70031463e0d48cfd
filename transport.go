package conntrace

import (
	"errors"
	"hash/maphash"
	"log/slog"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/internal/detect"
)

// Transport is an http.RoundTripper that records what happens to the
// connections of every request it carries, as span events and metrics, and
// runs the detectors that turn those timelines into alerts.
//
// A Transport is safe for concurrent use by multiple goroutines, as its base
// must be. Create it with [NewTransport]; the zero value is not usable.
type Transport struct {
	base         http.RoundTripper
	tracer       trace.Tracer // nil WithoutSpans
	propagators  propagation.TextMapPropagator
	carrierKeys  map[string]string // the propagators' fields, canonical: see headerCarrier
	carrierCanon []string          // the same canonical keys, to look up in a request's headers
	followParent bool              // WithParentBasedSampling
	inst         *instruments
	// watchers lists, per step, the detectors that watch it: a request
	// calls no detector at a step none watches.
	watchers [stepCount]detect.Multi
	limiter  detect.Limiter
	// alertSpans allows at most one alert span per detector and host per
	// interval (alerts.go).
	alertSpans detect.Limiter
	hosts      hostCache
	logger     *slog.Logger
	handler    AlertHandler
	cure       cure      // WithCloseDeadConnections, WithNATKeepAlive (cure.go)
	redact     *redactor // url.full and error texts (redact.go)
}

// stepCount is the number of detect.Step values.
const stepCount = int(detect.StepEnd) + 1

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
	if err := c.err(); err != nil {
		panic(err.Error())
	}
	meter := c.meterProvider.Meter(ScopeName, metricVersion)
	paths := new(detect.PathTimeouts)
	all := newDetectors(c, base, paths)
	t := &Transport{
		base:         base,
		propagators:  c.propagators,
		carrierKeys:  canonicalKeys(c.propagators.Fields()),
		followParent: c.followParent,
		inst:         newInstruments(meter),
		limiter:      detect.Limiter{Interval: c.alertInterval},
		alertSpans:   detect.Limiter{Interval: c.alertInterval},
		logger:       c.logger,
		handler:      c.alertHandler,
		cure:         newCure(c, paths),
		redact:       c.redactor(),
	}
	for step := range t.watchers {
		t.watchers[step] = detect.ForStep(all, detect.Step(step))
	}
	for _, k := range t.carrierKeys {
		t.carrierCanon = append(t.carrierCanon, k)
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
	req := t.newRequest(r) // its span, its host, its hooks (request.go)

	// A shallow copy leaves r untouched, and shares r.Trailer: a caller may
	// fill its values while the body is read (a checksum), and net/http
	// sends them after it; a copy of the map (r.Clone) would send none.
	out := r.WithContext(req.sendCtx())
	if req.injects(r.Header) {
		c := &req.carrier
		c.h, c.spare = cloneHeader(r.Header, len(t.carrierCanon)) // the only part of r written to
		c.canonical = t.carrierKeys
		out.Header = c.h
		t.propagators.Inject(req.spanCtx, c)
	}
	req.begin()

	// A panic in the base goes on up unchanged, but must not leave the span
	// open and the request counted as active forever.
	returned := false
	defer func() {
		if !returned {
			req.end(detect.BodyNone, 0, errBasePanicked)
		}
	}()
	res, err := t.base.RoundTrip(out)
	res, err = req.resendAfterClose(out, res, err) // WithCloseDeadConnections (cure.go)
	returned = true

	req.returned(out, res, err) // the duration, the span's attributes, the detectors' verdict
	if err != nil || res == nil || res.Body == nil || res.Body == http.NoBody {
		// Nothing left to read: the request ends here, and a NoBody stays
		// NoBody.
		req.end(detect.BodyNone, 0, err)
		return res, err
	}
	res.Body = newBody(req, res.Body) // ends the request at EOF, Close, or when dropped (body.go)
	return res, nil
}

// errBasePanicked ends the span of a request whose base transport panicked.
var errBasePanicked = errors.New("conntrace: the base RoundTripper panicked")

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

// headerCarrier is propagation.HeaderCarrier for the headers RoundTrip
// sends, cloned from the caller's (cloneHeader) with room for the
// propagators' fields: each field's value takes a slot of the clone's
// backing array, under its key canonicalised once, at NewTransport. A
// request keeps its carrier (request.carrier), so handing it to Inject
// allocates nothing either.
type headerCarrier struct {
	h         http.Header
	canonical map[string]string // field -> its canonical header key
	spare     []string          // the clone's unused value slots
}

func (c *headerCarrier) Get(key string) string { return propagation.HeaderCarrier(c.h).Get(key) }
func (c *headerCarrier) Keys() []string        { return propagation.HeaderCarrier(c.h).Keys() }

func (c *headerCarrier) Set(key, value string) {
	k, ok := c.canonical[key]
	if !ok {
		k = textproto.CanonicalMIMEHeaderKey(key) // a propagator setting a field it did not declare
	}
	if len(c.spare) == 0 {
		c.h[k] = []string{value}
		return
	}
	c.spare[0] = value
	c.h[k], c.spare = c.spare[:1:1], c.spare[1:]
}

// cloneHeader is h.Clone (h not nil), with room for n more keys of one
// value each: the map is sized for them, and their value slots are
// returned, taken from the clone's backing array. Header.Clone would leave
// a propagator to grow the map and allocate each value's slice.
func cloneHeader(h http.Header, n int) (http.Header, []string) {
	nv := n
	for _, vv := range h {
		nv += len(vv)
	}
	sv := make([]string, nv)
	h2 := make(http.Header, len(h)+n)
	for k, vv := range h {
		if vv == nil {
			h2[k] = nil // as Header.Clone: a nil value is not an empty one
			continue
		}
		m := copy(sv, vv)
		h2[k], sv = sv[:m:m], sv[m:]
	}
	return h2, sv
}

// canonicalKeys maps each field to its canonical header key.
func canonicalKeys(fields []string) map[string]string {
	m := make(map[string]string, len(fields))
	for _, f := range fields {
		m[f] = textproto.CanonicalMIMEHeaderKey(f)
	}
	return m
}
