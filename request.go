package conntrace

import (
	"context"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/vocab"
)

// request is what conntrace keeps of one request, from RoundTrip to the end
// of its response body: its span, its host's attributes, and the timeline
// its httptrace hooks fill for the detectors.
//
// Every request has its own, and its hooks are bound to it. A hook called
// late, by a base transport that mirrors or hedges the request with its
// context, or by code that kept the request's ClientTrace, finds its own
// request ended and changes nothing; it can never reach another request.
// That is why requests are not pooled: a pooled one would serve the next
// request while old hooks still pointed at it, and nothing a hook is given
// tells two requests apart.
//
// A request is also the context it is sent with (Value): the caller's
// context with the request's hooks in it, at no allocation more.
//
// The hooks run on several goroutines (the caller's, the transport's dialer
// and read loop, the detectors' timer), hence mu. It guards the timeline
// and the setting of ended, and is never held while user code runs (an
// alert handler, a logger) or while the span is ended.
type request struct {
	context.Context // the caller's; Value adds the hooks

	t        *Transport
	url      *url.URL // the caller's, which is sent: see errorText
	host     *hostAttrs
	spanCtx  context.Context // the caller's context with the request's span: for metrics and propagation
	span     trace.Span      // nil WithoutSpans, and for an unsampled parent WithParentBasedSampling
	own      bool            // conntrace started span; else it annotates its owner's (otelhttp's)
	outer    bool            // an instrumentation outside (otelhttp) made this request's client span, and records its duration
	events   bool            // span is recording: events are worth building
	start    time.Time       // with the wall clock; later moments read only the monotonic one
	composed bool            // the caller's context had a ClientTrace: sent with httptrace's context instead

	hooks   httptrace.ClientTrace // bound to this request in newRequest, per what it records
	carrier headerCarrier         // the headers RoundTrip sends, when it injects the trace context
	dial    atomic.Pointer[dialing]

	ended atomic.Bool // set under mu, and read without it by Value

	mu        sync.Mutex
	tl        detect.Timeline
	conns     [1]detect.Conn // backing array of tl.Conns: most requests get one
	timer     *time.Timer    // armed only when a detector asks to be woken
	watched   net.Conn       // the connection the timer reads TCP_INFO of again (stale_reuse)
	closed    *deadClose     // WithCloseDeadConnections: the connection closed as dead, and why (cure.go)
	held      *trackedConn   // connection metrics: the connection in use, if dialled through WrapDialContext
	alertRoot trace.Span     // the request's first alert span, parent of later ones (alerts.go)
}

// dialing is what a request's dial and TLS hooks keep. Most requests, on a
// reused connection, make no dial: their request has none (dialState).
type dialing struct {
	once sync.Once
	ctx  context.Context // the DNS and connect hooks, where net.Dialer looks for them (Value)

	// Guarded by request.mu.
	dnsStart   time.Time
	dnsName    string // the name looked up: the proxy's, behind a proxy
	tlsStart   time.Time
	dialStarts []dialStart // concurrent dial attempts (happy eyeballs)
}

// dialState returns the request's dialing, made at the first call.
func (req *request) dialState() *dialing {
	if d := req.dial.Load(); d != nil {
		return d
	}
	if d := new(dialing); req.dial.CompareAndSwap(nil, d) {
		return d
	}
	return req.dial.Load()
}

type dialStart struct {
	addr string
	at   time.Time
}

// newRequest starts (or finds) r's span and binds its hooks.
func (t *Transport) newRequest(r *http.Request) *request {
	req := &request{Context: r.Context(), t: t, url: r.URL, start: time.Now()}
	req.spanCtx = req.Context
	req.host = t.hosts.get(r.URL)
	req.tl = detect.Timeline{Host: req.host.host, Port: req.host.port, Method: method(r.Method), Start: req.start}
	req.tl.Conns = req.conns[:0]
	req.observe(req.start, detect.StepStart) // not shared yet: no lock
	parent := trace.SpanFromContext(req.Context)
	switch {
	case t.madeOutside(parent, r.Header):
		// otelhttp (or the caller) made the client span for this request,
		// and records its duration: a second span or duration would only
		// repeat it. A recording one gets conntrace's events.
		req.outer = true
		if t.tracer != nil && parent.IsRecording() {
			req.span, req.events = parent, true
		}
	case t.tracer != nil:
		req.startSpan(r)
	}

	// Only what is recorded is hooked: a span's events need every hook; the
	// detectors and metrics need GotConn and PutIdleConn, an alert span
	// (so any tracing) the timeline's WroteRequest, and, when a connection
	// is dialled, the DNS and connect hooks (bound then: Value). Each hook
	// bound costs an allocation.
	h := &req.hooks
	h.GotConn, h.PutIdleConn = req.gotConn, req.putIdleConn
	if t.tracer != nil {
		h.WroteRequest = req.wroteRequest
	}
	if req.events {
		h.GetConn, h.GotFirstResponseByte = req.getConn, req.gotFirstResponseByte
		h.TLSHandshakeStart, h.TLSHandshakeDone = req.tlsHandshakeStart, req.tlsHandshakeDone
	}
	if httptrace.ContextClientTrace(req.Context) != nil || clientTraceKey == nil {
		// Someone else's hooks are in the context (httptrace's own
		// ClientTrace, otelhttptrace): httptrace composes ours with them.
		req.composed = true
		h.DNSStart, h.DNSDone, h.ConnectStart, h.ConnectDone = req.dnsStartHook, req.dnsDone, req.connectStart, req.connectDone
	}
	return req
}

// madeOutside reports whether parent, the span in a request's context, is
// the request's client span, made by an instrumentation outside conntrace
// (otelhttp): a recording span of kind client, or, since a span that does
// not record cannot tell its kind, one that the request's headers already
// carry (otelhttp injects its span, sampled or not, before calling
// conntrace). A server span or a caller's own span is neither.
func (t *Transport) madeOutside(parent trace.Span, h http.Header) bool {
	if parent.IsRecording() {
		return isClientSpan(parent)
	}
	psc := parent.SpanContext()
	if !psc.IsValid() || psc.IsRemote() || !t.carried(h) {
		return false
	}
	got := trace.SpanContextFromContext(t.propagators.Extract(context.Background(), propagation.HeaderCarrier(h)))
	return got.TraceID() == psc.TraceID() && got.SpanID() == psc.SpanID()
}

// startSpan starts the request's span, as a child of the context's span or
// of the trace context in r's headers; for a parent that was not sampled,
// WithParentBasedSampling, it starts none.
func (req *request) startSpan(r *http.Request) {
	t := req.t
	parent := trace.SpanFromContext(req.Context)
	ctx := req.Context
	if !parent.SpanContext().IsValid() && t.carried(r.Header) {
		ctx = t.headerParent(ctx, r.Header)
	}
	if psc := trace.SpanContextFromContext(ctx); t.followParent && psc.IsValid() && !psc.IsSampled() {
		// A parent-based sampler would not sample this span: a span nobody
		// records is not worth starting. The parent's trace context goes on
		// (injects), unless it came from the headers, which keep it.
		req.spanCtx = ctx
		return
	}
	// url.full is set when the round trip returns, with the response's
	// attributes, in one call: a sampler sees the method, server.address
	// and server.port.
	opts := req.host.spanStartOptions(req.tl.Method)
	if req.tl.Method == "_OTHER" {
		opts = append(opts[:len(opts):len(opts)], trace.WithAttributes(semconv.HTTPRequestMethodOriginal(r.Method)))
	}
	req.spanCtx, req.span = t.tracer.Start(ctx, spanName(req.tl.Method), opts...)
	req.own, req.events = true, req.span.IsRecording()
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

// carried reports whether h carries any of the propagators' fields: a
// lookup of each canonical key, where h.Get would canonicalise it each time.
func (t *Transport) carried(h http.Header) bool {
	for _, k := range t.carrierCanon {
		if v := h[k]; len(v) > 0 && v[0] != "" {
			return true
		}
	}
	return false
}

// injects reports whether RoundTrip writes the trace context into the
// request's headers h: always for its own span; never WithoutSpans; else
// (a client span made outside, or an unsampled parent
// WithParentBasedSampling) unless h already carries one, as otelhttp's
// span or the caller's header would.
func (req *request) injects(h http.Header) bool {
	switch {
	case h == nil:
		return false // the base transport's error to report
	case req.own:
		return true
	case req.t.tracer == nil || !trace.SpanContextFromContext(req.spanCtx).IsValid():
		return false
	}
	return len(req.t.carrierCanon) > 0 && !req.t.carried(h)
}

// sendCtx is the context to send the request with: the request itself,
// which holds its hooks; or, where the caller's context has hooks of its
// own, httptrace's composition of both.
func (req *request) sendCtx() context.Context {
	if req.composed {
		return httptrace.WithClientTrace(req.Context, &req.hooks)
	}
	return req
}

// Value answers the key under which net/http looks for a ClientTrace with
// the request's hooks, and the key under which net.Dialer looks for its
// own hooks with the request's DNS and connect hooks, bound at that first
// lookup: only a request that dials pays for them. Every other key is the
// caller's context's. Once the request has ended the hooks are no longer
// there: a context kept past its request (res.Request.Context()) and used
// for another carries no hooks of this one.
func (req *request) Value(key any) any {
	if key == clientTraceKey {
		if req.ended.Load() {
			return nil
		}
		return &req.hooks
	}
	if key != nil && dialTraceKeys.Value(key) != nil {
		if req.ended.Load() {
			return nil
		}
		d := req.dialState()
		d.once.Do(func() {
			d.ctx = httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				DNSStart: req.dnsStartHook, DNSDone: req.dnsDone, ConnectStart: req.connectStart, ConnectDone: req.connectDone,
			})
		})
		return d.ctx.Value(key)
	}
	return req.Context.Value(key)
}

// clientTraceKey is the key httptrace keeps a ClientTrace under, found by
// asking for one; dialTraceKeys is a context with every key
// httptrace.WithClientTrace sets for hooks with DNS and connect hooks.
// Should httptrace ever be asked differently, clientTraceKey is nil and
// every request goes the composed way (sendCtx): slower, not wrong.
var clientTraceKey, dialTraceKeys = func() (any, context.Context) {
	var rec keyRecorder
	httptrace.ContextClientTrace(&rec)
	hooks := &httptrace.ClientTrace{ConnectStart: func(string, string) {}}
	probe := httptrace.WithClientTrace(context.Background(), hooks)
	if rec.key == nil || probe.Value(rec.key) != hooks {
		return nil, probe
	}
	return rec.key, probe
}()

// keyRecorder is a context that remembers the key it was last asked for.
type keyRecorder struct {
	context.Context // nil: only Value is called
	key             any
}

func (k *keyRecorder) Value(key any) any {
	k.key = key
	return nil
}

// now reads the monotonic clock only: time.Now reads the wall clock too,
// and the request's start already has it.
func (req *request) now() time.Time {
	return req.start.Add(time.Since(req.start))
}

// begin counts the request as active, until it ends.
func (req *request) begin() {
	req.host.counts.active.Add(1)
}

// step is one moment of the request's life, shown to the detectors that
// watch it. Under the lock, note records it on the timeline; the detectors'
// alerts go on the span and the timer they ask for is armed; once the lock
// is released the alerts are raised (a handler may take its time). After
// the request has ended it does nothing, the hook that calls it is late,
// except at StepPoolFull: see [detect.StepPoolFull].
func (req *request) step(now time.Time, step detect.Step, note func(tl *detect.Timeline)) {
	req.mu.Lock()
	ended := req.ended.Load()
	if ended && step != detect.StepPoolFull {
		req.mu.Unlock()
		return
	}
	if note != nil && !ended {
		note(&req.tl)
	}
	alerts := req.observe(now, step)
	req.mu.Unlock()
	req.raise(alerts)
}

// observe shows the timeline to the detectors that watch step, records
// their alerts on the timeline and the span, and arms the timer they ask
// for. req.mu must be held: holding it while the alert events are added
// means end cannot end the span between an alert and its event. Once the
// request has ended, the alerts are only returned, to be raised.
func (req *request) observe(now time.Time, step detect.Step) []detectors.Alert {
	alerts, wake := req.t.watchers[step].Observe(now, step, &req.tl)
	if req.ended.Load() {
		return alerts
	}
	if len(alerts) > 0 {
		req.tl.Alerts = append(req.tl.Alerts, alerts...)
		if req.events {
			for _, a := range alerts {
				req.span.AddEvent(vocab.EventAlert, trace.WithTimestamp(a.Time), trace.WithAttributes(alertAttrs(a)...))
			}
		}
	}
	if wake > 0 && step != detect.StepEnd {
		if req.timer == nil {
			req.timer = time.AfterFunc(wake, req.onTimer)
		} else {
			req.timer.Reset(wake)
		}
	}
	return alerts
}

// onTimer runs on the timer's goroutine, so a hang is reported while the
// request still hangs. A connection the kernel is asked about is read
// again first.
func (req *request) onTimer() {
	now := req.now()
	req.mu.Lock()
	if req.ended.Load() {
		req.mu.Unlock()
		return
	}
	if req.watched != nil {
		req.tl.TCP = sockopt.TCPInfo(req.watched, now)
	}
	alerts := req.observe(now, detect.StepTimer)
	req.mu.Unlock()
	req.raise(alerts) // and, WithCloseDeadConnections, closes a dead connection (cure.go)
}

// returned records the round trip's return, inside RoundTrip: the request
// duration, the span's attributes, and the detectors' verdict at
// StepResponse, while a span made outside (otelhttp's) is still open.
func (req *request) returned(out *http.Request, res *http.Response, err error) {
	now := req.now()
	if !req.outer {
		// A span's owner (otelhttp) records the duration itself: twice would
		// double it in any dashboard that sums over scopes.
		req.recordDuration(out.URL.Scheme, now.Sub(req.start), res, err)
	}
	if req.own && req.events {
		req.setSpanAttributes(out, res, err)
	}
	req.step(now, detect.StepResponse, func(tl *detect.Timeline) {
		tl.Response, tl.Err = now, err
		if res != nil {
			tl.StatusCode, tl.ProtoMajor, tl.ContentLength = res.StatusCode, res.ProtoMajor, res.ContentLength
			tl.ConnClose = res.Close || out.Close
		}
	})
}

// recordDuration records http.client.request.duration: the time to the
// response's headers, as otelhttp measures it.
func (req *request) recordDuration(scheme string, d time.Duration, res *http.Response, err error) {
	in := req.t.inst
	if err == nil && res != nil {
		k := durationKey{method: req.tl.Method, scheme: scheme, proto: protocolVersion(res), status: res.StatusCode}
		in.requestDuration.Inst().Record(req.spanCtx, d.Seconds(), req.host.durationOptions(k)...)
		return
	}
	attrs := []attribute.KeyValue{semconv.URLScheme(scheme)}
	if err != nil {
		attrs = append(attrs, errorTypeAttr(req.Context, err))
	}
	in.requestDuration.Record(req.spanCtx, d.Seconds(), httpconv.RequestMethodAttr(req.tl.Method), req.tl.Host, req.tl.Port, attrs...)
}

// setSpanAttributes sets url.full and the response's attributes on the
// request's own span, in one call: the span grows its attributes once.
func (req *request) setSpanAttributes(out *http.Request, res *http.Response, err error) {
	attrs := make([]attribute.KeyValue, 1, 4)
	attrs[0] = semconv.URLFull(req.t.redact.url(out.URL))
	if err == nil && res != nil {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(res.StatusCode))
		if v := protocolVersion(res); v != "" {
			attrs = append(attrs, semconv.NetworkProtocolVersion(v))
		}
		if res.StatusCode >= 400 {
			// For a client, every 4xx and 5xx is an error (semconv).
			attrs = append(attrs, semconv.ErrorTypeKey.String(strconv.Itoa(res.StatusCode)))
			req.span.SetStatus(codes.Error, "")
		}
	}
	req.span.SetAttributes(attrs...)
}

// end ends the request, once: the detectors' last look (how the body
// ended, and after reading how many bytes of it), the active request
// gauge, and the span if conntrace started it. err is the round trip's
// error or the response body's read error. Later calls do nothing.
func (req *request) end(body detect.BodyEnd, read int64, err error) {
	now := req.now()
	req.mu.Lock()
	if req.ended.Load() {
		req.mu.Unlock()
		return
	}
	req.tl.End, req.tl.Body, req.tl.BodyRead = now, body, read
	alerts := req.observe(now, detect.StepEnd)
	req.ended.Store(true)
	if req.timer != nil {
		req.timer.Stop()
	}
	resends := len(req.tl.Conns) - 1
	notReused := notReusedReason(&req.tl)
	held := req.held
	req.mu.Unlock()

	req.raise(alerts)
	if notReused != "" {
		req.count(req.spanCtx, req.t.inst.notReused, vocab.AttrReason.String(notReused))
	}
	held.release()
	req.host.counts.active.Add(-1)
	if !req.own {
		return
	}
	if resends > 0 {
		req.span.SetAttributes(semconv.HTTPRequestResendCount(resends))
	}
	if body == detect.BodyAbandoned {
		req.span.AddEvent(vocab.EventBodyAbandoned, trace.WithAttributes(vocab.AttrBodyRead.Int64(read)))
	}
	if err != nil {
		req.span.SetAttributes(errorTypeAttr(req.Context, err))
		req.span.SetStatus(codes.Error, req.errorText(err))
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
	case detect.DiscardsConn(tl):
		return vocab.ReasonBodyNotDrained
	}
	return ""
}

// event adds an event to the request's span, if it records.
func (req *request) event(name string, attrs ...attribute.KeyValue) {
	switch {
	case !req.events:
	case len(attrs) == 0:
		req.span.AddEvent(name) // options cost an allocation, even empty ones
	default:
		req.span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}
