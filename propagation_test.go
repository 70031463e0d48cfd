package conntrace

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// openAPISpan does what go-openapi/runtime's WithOpenTelemetry does: it
// starts a client span, writes its trace context into the request's
// headers, and does not put it in the request's context.
func openAPISpan(t *testing.T, tp trace.TracerProvider, req *http.Request) trace.Span {
	t.Helper()
	ctx, span := tp.Tracer("openapi").Start(context.Background(), "op", trace.WithSpanKind(trace.SpanKindClient))
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	return span
}

// TestHeaderTraceContextKept: a request that carries trace context in its
// headers but none in its context keeps its trace: conntrace's span is a
// child of the header's (remote) span, and the header sent on names the same
// trace, with conntrace's span as the parent.
func TestHeaderTraceContextKept(t *testing.T) {
	var header atomic.Value
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { header.Store(r.Header.Get("traceparent")) })
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithPropagators(propagation.TraceContext{}))...)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	caller := openAPISpan(t, tel.TP, req)
	sent := req.Header.Get("traceparent")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	caller.End()

	var span sdktrace.ReadOnlySpan
	for _, s := range tel.Spans.Ended() {
		if s.InstrumentationScope().Name == ScopeName {
			span = s
		}
	}
	if span == nil {
		t.Fatal("no conntrace span")
	}
	want := caller.SpanContext()
	if got := span.SpanContext().TraceID(); got != want.TraceID() {
		t.Errorf("conntrace's span is in trace %s; want the caller's %s", got, want.TraceID())
	}
	if p := span.Parent(); p.SpanID() != want.SpanID() || !p.IsRemote() {
		t.Errorf("conntrace's span has parent %s (remote %v); want the caller's %s, remote", p.SpanID(), p.IsRemote(), want.SpanID())
	}
	got, _ := header.Load().(string)
	if !strings.Contains(got, want.TraceID().String()) || !strings.Contains(got, span.SpanContext().SpanID().String()) {
		t.Errorf("traceparent sent: %q; want trace %s, parent %s (conntrace's span)", got, want.TraceID(), span.SpanContext().SpanID())
	}
	if req.Header.Get("traceparent") != sent {
		t.Errorf("the caller's request was modified: traceparent %q; want %q", req.Header.Get("traceparent"), sent)
	}
}

// TestContextTraceWinsOverHeader: a span in the request's context is the
// parent, as always, even if the headers carry another trace context.
func TestContextTraceWinsOverHeader(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithPropagators(propagation.TraceContext{}))...)
	ctx, parent := tel.TP.Tracer("app").Start(context.Background(), "handler", trace.WithSpanKind(trace.SpanKindServer))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	openAPISpan(t, tel.TP, req).End()
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	parent.End()
	n := 0
	for _, s := range tel.Spans.Ended() {
		if s.InstrumentationScope().Name != ScopeName {
			continue
		}
		n++
		if s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("conntrace's span has parent %s; want the context's %s", s.Parent().SpanID(), parent.SpanContext().SpanID())
		}
	}
	if n != 1 {
		t.Errorf("%d conntrace spans; want 1", n)
	}
}

// TestHeaderTraceContextWithoutSpans: with tracing off, the caller's header
// goes out untouched.
func TestHeaderTraceContextWithoutSpans(t *testing.T) {
	var header atomic.Value
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { header.Store(r.Header.Get("traceparent")) })
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithoutSpans(), WithPropagators(propagation.TraceContext{}))...)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	openAPISpan(t, tel.TP, req).End()
	sent := req.Header.Get("traceparent")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if got, _ := header.Load().(string); got != sent {
		t.Errorf("traceparent sent: %q; want the caller's %q", got, sent)
	}
}

// TestParentBasedSampling: told that the sampler follows the parent, the
// Transport starts no span under a parent that was not sampled, and the
// parent's trace context goes on (from the context: injected; from the
// headers: kept as the caller wrote it); a sampled parent still gets its
// child. Without the option the sampler is asked every time.
func TestParentBasedSampling(t *testing.T) {
	var header atomic.Value
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { header.Store(r.Header.Get("traceparent")) })
	unsampled := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:  trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, Remote: true,
	})
	sampled := unsampled.WithTraceFlags(trace.FlagsSampled)
	const unsampledHeader = "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-00"
	for _, tt := range []struct {
		name       string
		follow     bool
		parent     trace.SpanContext // in the context
		header     string            // traceparent written by the caller
		wantSpan   bool
		wantHeader string // "" for the conntrace span's own
	}{
		{"unsampled parent in the context", true, unsampled, "", false, unsampledHeader},
		{"unsampled parent in the headers", true, trace.SpanContext{}, unsampledHeader, false, unsampledHeader},
		{"sampled parent", true, sampled, "", true, ""},
		{"no parent", true, trace.SpanContext{}, "", true, ""},
		{"without the option, the sampler decides", false, unsampled, "", true, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			// AlwaysSample, not parent-based: where the option is not given,
			// the sampler's own decision must hold.
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(tel.Spans))
			defer tp.Shutdown(context.Background())
			opts := tel.options(WithTracerProvider(tp), WithPropagators(propagation.TraceContext{}))
			if tt.follow {
				opts = append(opts, WithParentBasedSampling())
			}
			client, _ := newClient(t, opts...)
			ctx := context.Background()
			if tt.parent.IsValid() {
				ctx = trace.ContextWithRemoteSpanContext(ctx, tt.parent)
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			if tt.header != "" {
				req.Header.Set("traceparent", tt.header)
			}
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			spans := tel.Spans.Ended()
			if got := len(spans) == 1; got != tt.wantSpan {
				t.Fatalf("conntrace spans: %d; want a span: %v", len(spans), tt.wantSpan)
			}
			want := tt.wantHeader
			if tt.wantSpan {
				sc := spans[0].SpanContext()
				want = "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"
			}
			if got, _ := header.Load().(string); got != want {
				t.Errorf("traceparent sent: %q; want %q", got, want)
			}
		})
	}
}
