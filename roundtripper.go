package conntrace

import (
	"errors"
	"hash/maphash"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/vocab"
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
	streams    watcher   // stream_stall: requests waiting for data (streams.go)
	wakeTimers sync.Pool // detectors' timers stopped unfired, for the next request (trace.go)

	// What the user adds (user.go): WithFilter, WithSpanNameFormatter,
	// WithMetricAttributesFn, and the bound on user attribute sets.
	filters            []Filter
	spanNameFormatter  func(string, *http.Request) string
	metricAttributesFn func(*http.Request) []attribute.KeyValue
	userSets           attributeSets
}

// stepCount is the number of detect.Step values.
const stepCount = int(detect.StepEnd) + 1

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport returns a Transport that instruments base; a nil base means
// http.DefaultTransport.
//
// When base is an *http.Transport, or wraps one and says so (a client-go
// wrapper's WrappedRoundTripper method, an Unwrap() http.RoundTripper
// method, another conntrace Transport), NewTransport logs an audit of its
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

		filters:            c.filters,
		spanNameFormatter:  c.spanNameFormatter,
		metricAttributesFn: c.metricAttributesFn,
	}
	t.streams.stall = newStreamStall(c, base, paths)
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

// CloseIdleConnections closes the idle connections of the base transport:
// it calls the CloseIdleConnections method (as *http.Transport has) of the
// base, or, if the base has none, of the first RoundTripper down the chain
// of wrappers that say what they wrap (a client-go wrapper's
// WrappedRoundTripper, an Unwrap() http.RoundTripper method) that has one.
func (t *Transport) CloseIdleConnections() {
	rt := t.base
	for range maxWrappers {
		if ci, ok := rt.(interface{ CloseIdleConnections() }); ok {
			ci.CloseIdleConnections()
			return
		}
		if rt = wrapped(rt); rt == nil {
			return
		}
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
	req := t.newRequest(r) // its span, its host, its hooks (trace.go)

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

// begin counts the request as active, until it ends; a filtered one is
// not counted.
func (req *request) begin() {
	if !req.filtered {
		req.host.counts.active.Add(1)
	}
}

// returned records the round trip's return, inside RoundTrip: the request
// duration, the span's attributes, and the detectors' verdict at
// StepResponse, while a span made outside (otelhttp's) is still open.
func (req *request) returned(out *http.Request, res *http.Response, err error) {
	now := req.now()
	if !req.outer && !req.filtered {
		// A span's owner (otelhttp) records the duration itself: twice would
		// double it in any dashboard that sums over scopes.
		req.recordDuration(out, now.Sub(req.start), res, err)
	}
	req.step(now, detect.StepResponse, func(tl *detect.Timeline) {
		tl.Response, tl.Err = now, err
		if res != nil {
			if res.StatusCode == http.StatusSwitchingProtocols {
				req.progress.upgraded.Store(true) // the caller's from here on: not watched (streams.go)
			}
			tl.StatusCode, tl.ProtoMajor, tl.ContentLength = res.StatusCode, res.ProtoMajor, res.ContentLength
			tl.ConnClose = res.Close || out.Close
			if res.ContentLength < 0 {
				// What detect.IsStream reads, for a body whose end is not
				// known: a response of known length is never a stream.
				if v := res.Header["Content-Type"]; len(v) > 0 {
					tl.ContentType = v[0]
				}
				tl.Watch = detect.IsWatchQuery(out.URL.RawQuery)
			}
		}
	})
	if req.events {
		req.setSpanAttributes(out, res, err)
	}
}

// recordDuration records http.client.request.duration: the time to the
// response's headers, as otelhttp measures it.
// The attributes of WithMetricAttributesFn and the Labeler, if any, are
// added last (user.go).
func (req *request) recordDuration(out *http.Request, d time.Duration, res *http.Response, err error) {
	in := req.t.inst
	user, hasUser := req.t.userMetricAttributes(req.Context, out)
	if err == nil && res != nil {
		k := durationKey{method: req.tl.Method, scheme: out.URL.Scheme, proto: protocolVersion(res), status: res.StatusCode}
		opts := req.host.durationOptions(k)
		if hasUser {
			opts = append(opts[:len(opts):len(opts)], metric.WithAttributeSet(user))
		}
		in.requestDuration.Inst().Record(req.spanCtx, d.Seconds(), opts...)
		return
	}
	attrs := []attribute.KeyValue{semconv.URLScheme(out.URL.Scheme)}
	if err != nil {
		attrs = append(attrs, errorTypeAttr(req.Context, err))
	}
	if hasUser {
		attrs = append(attrs, user.ToSlice()...)
	}
	in.requestDuration.Record(req.spanCtx, d.Seconds(), httpconv.RequestMethodAttr(req.tl.Method), req.tl.Host, req.tl.Port, attrs...)
}

// end ends the request, once: the detectors' last look (how the body
// ended, and after reading how many bytes of it), the active request
// gauge, and the span if conntrace started it, whose status description,
// if err ends it, leads with the request's verdict. err is the round
// trip's error or the response body's read error. Later calls do nothing.
func (req *request) end(body detect.BodyEnd, read int64, err error) {
	now := req.now()
	req.mu.Lock()
	if req.ended.Load() {
		req.mu.Unlock()
		return
	}
	req.tl.End, req.tl.Body, req.tl.BodyRead = now, body, read
	alerts := req.observe(now, detect.StepEnd)
	var diagnosis string // the verdict's summary, for a recording span that ends in error
	if err != nil && req.own && req.events {
		if v := verdict(req.tl.Alerts); v >= 0 {
			diagnosis = req.tl.Alerts[v].Summary
		}
	}
	req.ended.Store(true)
	if req.timer != nil {
		req.timer.release()
		req.timer = nil // pooled, it may serve another request
	}
	resends := len(req.tl.Conns) - 1
	notReused := notReusedReason(&req.tl)
	held := req.held
	var wrote time.Time
	var first time.Duration
	if req.own && req.events {
		// A write reported after the response, or a round trip that
		// never returned.
		wrote, first = req.lateMoments()
	}
	joined := req.joined
	req.joined = 0
	req.restoreSocketLocked() // a stream the watcher probed goes back to the pool as configured
	req.mu.Unlock()
	req.t.streams.leave(joined)

	req.raise(alerts)
	if notReused != "" {
		req.count(req.spanCtx, req.t.inst.notReused, vocab.AttrReason.String(notReused))
	}
	held.release()
	if !req.filtered {
		req.host.counts.active.Add(-1)
	}
	if !req.own {
		return
	}
	attrs := req.appendMomentAttrs(nil, wrote, first)
	if resends > 0 {
		attrs = append(attrs, semconv.HTTPRequestResendCount(resends))
	}
	if err != nil {
		attrs = append(attrs, errorTypeAttr(req.Context, err))
		req.span.SetStatus(codes.Error, statusDescription(diagnosis, req.errorText(err)))
	}
	if len(attrs) > 0 {
		req.span.SetAttributes(attrs...)
	}
	if body == detect.BodyAbandoned {
		req.span.AddEvent(vocab.EventBodyAbandoned, trace.WithAttributes(vocab.AttrBodyRead.Int64(read)))
	}
	req.span.End()
}

// notReusedReason says why net/http will not pool the HTTP/1 connection of
// an ended timeline, or "" if it will, or if it cannot be told.
func notReusedReason(tl *detect.Timeline) string {
	switch {
	case len(tl.Conns) == 0 || tl.ProtoMajor != 1:
		return ""
	case tl.ConnClose:
		return vocab.ReasonConnectionClose
	case tl.Body == detect.BodyAbandoned:
		return vocab.ReasonBodyAbandoned
	case detect.DiscardsConn(tl) && detect.IsStream(tl):
		return vocab.ReasonStreamClosed
	case detect.DiscardsConn(tl):
		return vocab.ReasonBodyNotDrained
	}
	return ""
}
