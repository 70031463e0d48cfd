// This file places a request in its trace: which span is the request's own
// (conntrace's, or otelhttp's client span when stacked), which is its parent
// (the context's, or the trace context its headers carry), and the trace
// context RoundTrip writes into the headers it sends.

package conntrace

import (
	"context"
	"net/http"
	"net/textproto"

	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

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

func (c *headerCarrier) Keys() []string { return propagation.HeaderCarrier(c.h).Keys() }

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
	name := spanName(req.tl.Method)
	if t.spanNameFormatter != nil {
		name = t.spanName(r, name) // user.go
	}
	req.spanCtx, req.span = t.tracer.Start(ctx, name, opts...)
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
// request's headers h: always for its own span; never WithoutSpans or for
// a filtered request; else
// (a client span made outside, or an unsampled parent
// WithParentBasedSampling) unless h already carries one, as otelhttp's
// span or the caller's header would.
func (req *request) injects(h http.Header) bool {
	switch {
	case h == nil:
		return false // the base transport's error to report
	case req.own:
		return true
	case req.filtered || req.t.tracer == nil || !trace.SpanContextFromContext(req.spanCtx).IsValid():
		return false
	}
	return len(req.t.carrierCanon) > 0 && !req.t.carried(h)
}
