package conntrace

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// The tests of alert spans (alerts.go): an alert of level WARN or above
// on a request whose span is not sampled is recorded in a span of its own,
// which a sampler can keep, and the alert's counts carry exemplars that
// point at the trace holding the alert, sampled request or not.

// alertSampler samples the spans started with conntrace.alert_span=true, as
// exporters.KeepAlertSpans does, and leaves every other decision to next.
type alertSampler struct{ next sdktrace.Sampler }

func (s alertSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if isAlertSpan(p.Attributes) {
		return sdktrace.SamplingResult{Decision: sdktrace.RecordAndSample}
	}
	return s.next.ShouldSample(p)
}

// isAlertSpan reports whether a span's attributes mark it an alert span.
func isAlertSpan(attrs []attribute.KeyValue) bool {
	for _, kv := range attrs {
		if kv.Key == vocab.AttrAlertSpan && kv.Value.AsBool() {
			return true
		}
	}
	return false
}

func (s alertSampler) Description() string { return "alertSampler{" + s.next.Description() + "}" }

// recordOnly records every span and samples none: its spans get events,
// and no exporter ever sees them.
type recordOnly struct{}

func (recordOnly) ShouldSample(sdktrace.SamplingParameters) sdktrace.SamplingResult {
	return sdktrace.SamplingResult{Decision: sdktrace.RecordOnly}
}

func (recordOnly) Description() string { return "recordOnly" }

// startedSpans is a TracerProvider that remembers the context of every span
// its tracers start, sampled or not, by scope: the only way a test can name
// the span of an unsampled request, which no processor sees.
type startedSpans struct {
	trace.TracerProvider
	mu      sync.Mutex
	byScope map[string][]trace.SpanContext
}

func newStartedSpans(tp trace.TracerProvider) *startedSpans {
	return &startedSpans{TracerProvider: tp, byScope: map[string][]trace.SpanContext{}}
}

func (p *startedSpans) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return startedTracer{Tracer: p.TracerProvider.Tracer(name, opts...), p: p, scope: name}
}

// of returns the contexts of the spans started in scope that are not alert
// spans, in order.
func (p *startedSpans) of(scope string) []trace.SpanContext {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]trace.SpanContext(nil), p.byScope[scope]...)
}

type startedTracer struct {
	trace.Tracer
	p     *startedSpans
	scope string
}

func (t startedTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	ctx, span := t.Tracer.Start(ctx, name, opts...)
	if cfg := trace.NewSpanStartConfig(opts...); !isAlertSpan(cfg.Attributes()) {
		t.p.mu.Lock()
		t.p.byScope[t.scope] = append(t.p.byScope[t.scope], span.SpanContext())
		t.p.mu.Unlock()
	}
	return ctx, span
}

// sampledTelemetry is newTelemetry with sampler deciding, and every started
// span remembered.
func sampledTelemetry(t *testing.T, sampler sdktrace.Sampler) (*telemetry, *startedSpans) {
	t.Helper()
	tel := newTelemetry(t, sdktrace.WithSampler(sampler))
	return tel, newStartedSpans(tel.TP)
}

// exemplars returns the exemplars of conntrace's int64 counter name on the
// data points whose attributes include every one of want.
func (tel *telemetry) exemplars(t *testing.T, name string, want ...attribute.KeyValue) []metricdata.Exemplar[int64] {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.Reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	var out []metricdata.Exemplar[int64]
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, p := range sum.DataPoints {
					if testkit.HasAll(p.Attributes, want...) {
						out = append(out, p.Exemplars...)
					}
				}
			}
		}
	}
	return out
}

// checkExemplar: the counter name, on the points with want, carries exactly
// one exemplar, and it is span's.
func checkExemplar(t *testing.T, tel *telemetry, span trace.SpanContext, name string, want ...attribute.KeyValue) {
	t.Helper()
	ex := tel.exemplars(t, name, want...)
	if len(ex) != 1 {
		t.Errorf("%s%v: %d exemplars; want 1, of trace %s", name, want, len(ex), span.TraceID())
		return
	}
	if got := trace.TraceID(ex[0].TraceID); got != span.TraceID() {
		t.Errorf("%s%v: exemplar of trace %s; want %s", name, want, got, span.TraceID())
	}
	if got := trace.SpanID(ex[0].SpanID); got != span.SpanID() {
		t.Errorf("%s%v: exemplar of span %s; want %s", name, want, got, span.SpanID())
	}
}

// handledCtx is what an AlertHandler saw of its context.
type handledCtx struct {
	span     trace.SpanContext
	err      error     // ctx.Err() when the alert came
	deadline time.Time // the request's
}

// watchContexts is an AlertHandler option that keeps what the handler saw
// of each context.
func watchContexts() (Option, func() []handledCtx) {
	var mu sync.Mutex
	var seen []handledCtx
	opt := WithAlertHandler(func(ctx context.Context, a detectors.Alert) {
		dl, _ := ctx.Deadline()
		mu.Lock()
		seen = append(seen, handledCtx{trace.SpanContextFromContext(ctx), ctx.Err(), dl})
		mu.Unlock()
	})
	return opt, func() []handledCtx {
		mu.Lock()
		defer mu.Unlock()
		return append([]handledCtx(nil), seen...)
	}
}

// alertSpans returns the ended alert spans.
func alertSpans(tel *telemetry) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tel.Spans.Ended() {
		if isAlertSpan(s.Attributes()) {
			out = append(out, s)
		}
	}
	return out
}

// hangStory is TestStaleReuseHang's story: a healthy request, a quiet
// period past the NAT's 350 s, then a request that hangs until its 30 s
// deadline, the alert coming 10 s after it was written. It returns when the
// hanging request started.
func hangStory(t *testing.T, opts ...Option) time.Time {
	t.Helper()
	lab := newNATLab(t, 350*time.Second, opts...)
	if err := lab.get(30 * time.Second); err != nil {
		t.Fatalf("first request: %v", err)
	}
	time.Sleep(351 * time.Second)
	start := time.Now()
	if err := lab.get(30 * time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stale request: got %v; want context.DeadlineExceeded", err)
	}
	return start
}

// TestAlertSpanUnsampled: at a sampling ratio that keeps no request, the
// hang is recorded in an alert span (a new root, marked for the sampler,
// linked to the request's span, holding the request's timeline), the
// counts' exemplars point at it, and the AlertHandler's context holds it.
// The healthy request leaves nothing.
func TestAlertSpanUnsampled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel, started := sampledTelemetry(t, alertSampler{sdktrace.ParentBased(sdktrace.NeverSample())})
		watch, handled := watchContexts()
		start := hangStory(t, tel.options(WithTracerProvider(started), watch)...)

		requests := started.of(ScopeName)
		if len(requests) != 2 || requests[0].IsSampled() || requests[1].IsSampled() {
			t.Fatalf("request spans started: %v; want 2, not sampled", requests)
		}
		spans := tel.Spans.Ended()
		if len(spans) != 1 {
			t.Fatalf("%d spans ended; want 1, the hang's alert span (the healthy request leaves none)", len(spans))
		}
		span := spans[0]
		// Named after what happened; its verdict and status readable
		// without opening an event.
		if want := "stale_reuse/hang GET"; span.Name() != want || span.InstrumentationScope().Name != ScopeName {
			t.Errorf("span %q of %q; want %q of %q", span.Name(), span.InstrumentationScope().Name, want, ScopeName)
		}
		summary := "stale_reuse/hang: reused after 5m51s idle (NAT timeout 5m50s), no reply in 10.0s: the path likely forgot the connection"
		if st := span.Status(); st.Code != codes.Error || st.Description != summary {
			t.Errorf("alert span status %v %q; want Error %q", st.Code, st.Description, summary)
		}
		if !testkit.HasAll(attribute.NewSet(span.Attributes()...), vocab.AttrDetector.String(detectors.StaleReuseName),
			vocab.AttrOutcome.String(detectors.OutcomeHang), vocab.AttrLevel.String("ERROR"), vocab.AttrSummary.String(summary)) {
			t.Errorf("alert span attributes %v; want the verdict: stale_reuse, hang, ERROR, its summary", span.Attributes())
		}
		sc := span.SpanContext()
		if !sc.IsSampled() || span.Parent().IsValid() {
			t.Errorf("alert span: sampled %v, parent %v; want a sampled new root", sc.IsSampled(), span.Parent())
		}
		if sc.TraceID() == requests[1].TraceID() {
			t.Errorf("alert span in the request's trace %s; want a trace of its own", sc.TraceID())
		}
		if links := span.Links(); len(links) != 1 || !links[0].SpanContext.Equal(requests[1]) {
			t.Errorf("alert span links %v; want one, to the hanging request's span %v", links, requests[1])
		}
		attrs := attribute.NewSet(span.Attributes()...)
		if !testkit.HasAll(attrs, vocab.AttrAlertSpan.Bool(true), semconv.HTTPRequestMethodGet,
			semconv.ServerAddress("backend.test"), semconv.ServerPort(80)) {
			t.Errorf("alert span attributes %v; want conntrace.alert_span=true, GET, backend.test:80", attrs.ToSlice())
		}
		if !span.StartTime().Equal(start) || span.EndTime().Sub(start) != 10*time.Second {
			t.Errorf("alert span from %v to %v after the request started; want from 0 to the alert, 10s",
				span.StartTime().Sub(start), span.EndTime().Sub(start))
		}

		// The request's timeline, as its own span would have had it.
		want := []string{vocab.EventGotConn, vocab.EventWroteRequest, vocab.EventAlert}
		if got := testkit.EventNames(span); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("alert span events %q; want %q", got, want)
		}
		ev := span.Events()
		got := attribute.NewSet(ev[0].Attributes...)
		if idle, _ := got.Value(vocab.AttrIdleTime); !testkit.HasAll(got, vocab.AttrReused.Bool(true), vocab.AttrWasIdle.Bool(true)) || idle.AsFloat64() < 351 {
			t.Errorf("got_conn %v; want reused, was idle, idle_time >= 351", got.ToSlice())
		}
		alert := attribute.NewSet(ev[2].Attributes...)
		if !testkit.HasAll(alert, vocab.AttrDetector.String(detectors.StaleReuseName), vocab.AttrOutcome.String(detectors.OutcomeHang),
			vocab.AttrLevel.String("ERROR"), vocab.AttrEvidence.String(detectors.EvidenceTimeout), vocab.AttrWaited.Float64(10),
			vocab.AttrSummary.String(summary)) {
			t.Errorf("alert event %v; want stale_reuse hang, ERROR, evidence timeout, waited 10, the summary", alert.ToSlice())
		}
		msg, _ := alert.Value(vocab.AttrMessage)
		advice, _ := alert.Value(vocab.AttrAdvice)
		if !strings.Contains(msg.AsString(), "5m51s") || !strings.Contains(advice.AsString(), "IdleConnTimeout") {
			t.Errorf("alert event: message %q, advice %q; want the idle time and the setting to change", msg.AsString(), advice.AsString())
		}
		if !ev[0].Time.Equal(start) || !ev[1].Time.Equal(start) || ev[2].Time.Sub(start) != 10*time.Second {
			t.Errorf("events at %v, %v, %v after the start; want 0, 0, 10s", ev[0].Time.Sub(start), ev[1].Time.Sub(start), ev[2].Time.Sub(start))
		}

		// The exemplars point at the alert span; the handler saw it in the
		// request's context, while the request still hung.
		checkExemplar(t, tel, sc, vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang))
		checkExemplar(t, tel, sc, vocab.MetricAlerts, vocab.AttrDetector.String(detectors.StaleReuseName))
		h := handled()
		if len(h) != 1 || !h[0].span.Equal(sc) || h[0].err != nil || !h[0].deadline.Equal(start.Add(30*time.Second)) {
			t.Errorf("AlertHandler contexts %+v; want one, holding the alert span %v, the request's, not done", h, sc)
		}
	})
}

// TestAlertSpanSampled: a sampled request holds its alert itself: no alert
// span, and the exemplars and the handler's context are the request's span.
func TestAlertSpanSampled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel, started := sampledTelemetry(t, alertSampler{sdktrace.AlwaysSample()})
		watch, handled := watchContexts()
		hangStory(t, tel.options(WithTracerProvider(started), watch)...)

		spans := tel.Spans.Ended()
		if len(spans) != 2 || len(alertSpans(tel)) != 0 {
			t.Fatalf("spans %d, alert spans %d; want the 2 requests' and no alert span", len(spans), len(alertSpans(tel)))
		}
		hung := spans[1]
		if _, ok := testkit.Event(hung, vocab.EventAlert); !ok {
			t.Errorf("the hanging request's span has no alert event: %q", testkit.EventNames(hung))
		}
		sc := hung.SpanContext()
		checkExemplar(t, tel, sc, vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang))
		checkExemplar(t, tel, sc, vocab.MetricAlerts, vocab.AttrDetector.String(detectors.StaleReuseName))
		if h := handled(); len(h) != 1 || !h[0].span.Equal(sc) {
			t.Errorf("AlertHandler contexts %+v; want one, holding the request's span %v", h, sc)
		}
	})
}

// TestAlertSpanNotMade: no alert span WithoutSpans, nor when the sampler
// drops it too (an SDK set up without exporters.KeepAlertSpans); the hang
// is counted all the same, without an exemplar, and the handler gets the
// request's own context.
func TestAlertSpanNotMade(t *testing.T) {
	tests := []struct {
		name         string
		sampler      sdktrace.Sampler
		withoutSpans bool
	}{
		{"WithoutSpans", alertSampler{sdktrace.NeverSample()}, true},
		{"sampler drops it", sdktrace.NeverSample(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tel, started := sampledTelemetry(t, tt.sampler)
				watch, handled := watchContexts()
				opts := []Option{WithTracerProvider(started), watch}
				if tt.withoutSpans {
					opts = append(opts, WithoutSpans())
				}
				hangStory(t, tel.options(opts...)...)

				if n := len(tel.Spans.Ended()); n != 0 {
					t.Errorf("%d spans ended; want none", n)
				}
				if got := tel.Collect(t).Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang)); got != 1 {
					t.Errorf("%s{hang}: %v; want 1", vocab.MetricStaleReuses, got)
				}
				if ex := tel.exemplars(t, vocab.MetricStaleReuses); len(ex) != 0 {
					t.Errorf("%s: exemplars %v; want none: no trace holds the alert", vocab.MetricStaleReuses, ex)
				}
				var want trace.SpanContext // WithoutSpans: no span at all
				requests := started.of(ScopeName)
				switch {
				case tt.withoutSpans && len(requests) != 0:
					t.Errorf("WithoutSpans: %d spans started; want none", len(requests))
				case len(requests) == 2:
					want = requests[1]
				}
				if h := handled(); len(h) != 1 || !h[0].span.Equal(want) {
					t.Errorf("AlertHandler contexts %+v; want one, holding the request's span %v", h, want)
				}
			})
		})
	}
}

// TestAlertSpanInfoOnly: an alert below WARN (stale_reuse's "ok" verdict on
// a reuse that was merely suspect: idle past the 100 s conntrace was told,
// within the NAT's real 350 s) makes no alert span.
func TestAlertSpanInfoOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel, started := sampledTelemetry(t, alertSampler{sdktrace.NeverSample()})
		lab := newNATLab(t, 350*time.Second, tel.options(WithTracerProvider(started), WithNATIdleTimeout(100*time.Second))...)
		for range 2 {
			if err := lab.get(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Second)
		}
		if got := tel.Collect(t).Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeOK)); got != 1 {
			t.Fatalf("%s{ok}: %v; want 1 (the story is not the one this test needs)", vocab.MetricStaleReuses, got)
		}
		if n := len(tel.Spans.Ended()); n != 0 {
			t.Errorf("%d spans ended; want none: an INFO alert is no reason to keep a trace", n)
		}
	})
}

// TestAlertSpanRateLimit: alert spans are limited like logged alerts, one
// per detector and host per interval, while every hang is counted; the
// exemplars only ever point at alert spans.
func TestAlertSpanRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel, started := sampledTelemetry(t, alertSampler{sdktrace.NeverSample()})
		lab := newNATLab(t, 350*time.Second, tel.options(WithTracerProvider(started), WithAlertInterval(10*time.Minute))...)
		var hangs []time.Time
		for range 3 {
			if err := lab.get(30 * time.Second); err != nil {
				t.Fatalf("healthy request: %v", err)
			}
			time.Sleep(351 * time.Second)
			hangs = append(hangs, time.Now())
			if err := lab.get(30 * time.Second); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("stale request: got %v; want context.DeadlineExceeded", err)
			}
		}
		// Alerts at 361 s, 742 s and 1123 s: the second is within 10 min of
		// the first, the third is not.
		spans := alertSpans(tel)
		if len(spans) != 2 || !spans[0].StartTime().Equal(hangs[0]) || !spans[1].StartTime().Equal(hangs[2]) {
			t.Fatalf("%d alert spans; want 2, of the first and third hangs", len(spans))
		}
		if got := tel.Collect(t).Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang)); got != 3 {
			t.Errorf("%s{hang}: %v; want 3", vocab.MetricStaleReuses, got)
		}
		ex := tel.exemplars(t, vocab.MetricStaleReuses)
		if len(ex) == 0 {
			t.Fatalf("%s: no exemplar", vocab.MetricStaleReuses)
		}
		for _, e := range ex {
			if id := trace.TraceID(e.TraceID); id != spans[0].SpanContext().TraceID() && id != spans[1].SpanContext().TraceID() {
				t.Errorf("exemplar of trace %s; want an alert span's", id)
			}
		}
	})
}

// TestAlertSpanLinksCallerTrace: a request in a caller's unsampled trace,
// given by its context or only by its headers, gets an alert span linked to
// the request's span in that trace.
func TestAlertSpanLinksCallerTrace(t *testing.T) {
	caller := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0xca, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
		SpanID:  trace.SpanID{0xca, 1, 2, 3, 4, 5, 6, 7},
		Remote:  true, // and not sampled: what a server gets with traceparent flags 00
	})
	tests := []struct {
		name    string
		prepare func(ctx context.Context, req *http.Request) *http.Request
	}{
		{"context", func(ctx context.Context, req *http.Request) *http.Request {
			return req.WithContext(trace.ContextWithRemoteSpanContext(ctx, caller))
		}},
		{"headers", func(ctx context.Context, req *http.Request) *http.Request {
			propagation.TraceContext{}.Inject(trace.ContextWithRemoteSpanContext(ctx, caller), propagation.HeaderCarrier(req.Header))
			return req
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tel, started := sampledTelemetry(t, alertSampler{sdktrace.ParentBased(sdktrace.AlwaysSample())})
				lab := newNATLab(t, 350*time.Second, tel.options(WithTracerProvider(started), WithPropagators(propagation.TraceContext{}))...)
				do := func() error {
					ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
					defer cancel()
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://backend.test/", nil)
					res, err := lab.client.Do(tt.prepare(ctx, req))
					if err == nil {
						_, err = io.Copy(io.Discard, res.Body)
						res.Body.Close()
					}
					return err
				}
				if err := do(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(351 * time.Second)
				if err := do(); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("stale request: got %v; want context.DeadlineExceeded", err)
				}

				requests := started.of(ScopeName)
				spans := alertSpans(tel)
				if len(requests) != 2 || len(spans) != 1 {
					t.Fatalf("%d request spans started, %d alert spans; want 2 and 1", len(requests), len(spans))
				}
				if requests[1].TraceID() != caller.TraceID() || requests[1].IsSampled() {
					t.Fatalf("request span %v; want an unsampled span in the caller's trace %s", requests[1], caller.TraceID())
				}
				if links := spans[0].Links(); len(links) != 1 || !links[0].SpanContext.Equal(requests[1]) {
					t.Errorf("alert span links %v; want one, to the request's span %v in the caller's trace", links, requests[1])
				}
				if spans[0].Parent().IsValid() || spans[0].SpanContext().TraceID() == caller.TraceID() {
					t.Errorf("alert span in trace %s with parent %v; want a new root", spans[0].SpanContext().TraceID(), spans[0].Parent())
				}
			})
		})
	}
}

// TestAlertSpanOneTracePerRequest: alerts raised at two moments of one
// request (stale_reuse's "retried" when the connection is replaced, then
// body_not_drained when the body is closed early) go into two alert spans
// of one trace, the second a child of the first, each holding the timeline
// so far; each count's exemplar points at the span holding its alert.
func TestAlertSpanOneTracePerRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel, started := sampledTelemetry(t, alertSampler{sdktrace.NeverSample()})
		// A firewall that forgot the flow resets it; the NAT keeps it (350s),
		// and only conntrace was told of a 50ms NAT.
		lab := newNATLabServer(t, 350*time.Second, resetOnReuse(strings.Repeat("x", 1<<16)),
			tel.options(WithTracerProvider(started), WithNATIdleTimeout(50*time.Millisecond))...)
		testkit.Get(t, lab.client, lab.url)
		time.Sleep(100 * time.Millisecond)
		res, err := lab.client.Get(lab.url) // reused, reset, retried on a new connection
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Read(make([]byte, 10))
		res.Body.Close() // before EOF

		requests := started.of(ScopeName)
		if len(requests) != 2 {
			t.Fatalf("%d request spans started; want 2", len(requests))
		}
		// Each alert span holds every alert raised on its request so far.
		var retried, closed sdktrace.ReadOnlySpan
		for _, s := range alertSpans(tel) {
			has := func(want attribute.KeyValue) bool {
				for _, e := range s.Events() {
					if e.Name == vocab.EventAlert && testkit.HasAll(attribute.NewSet(e.Attributes...), want) {
						return true
					}
				}
				return false
			}
			switch {
			case has(vocab.AttrDetector.String(detectors.BodyNotDrainedName)):
				closed = s
			case has(vocab.AttrOutcome.String(detectors.OutcomeRetried)):
				retried = s
			}
		}
		if retried == nil || closed == nil || retried == closed {
			t.Fatalf("alert spans %d; want one holding the retry and a later one the early close", len(alertSpans(tel)))
		}
		for _, s := range []sdktrace.ReadOnlySpan{retried, closed} {
			if links := s.Links(); len(links) != 1 || !links[0].SpanContext.Equal(requests[1]) {
				t.Errorf("alert span %s links %v; want one, to the request's span %v", s.SpanContext().SpanID(), links, requests[1])
			}
		}
		if retried.Parent().IsValid() || closed.Parent().SpanID() != retried.SpanContext().SpanID() ||
			closed.SpanContext().TraceID() != retried.SpanContext().TraceID() {
			t.Errorf("the early close's alert span has parent %v in trace %s; want a child of the retry's %v",
				closed.Parent(), closed.SpanContext().TraceID(), retried.SpanContext())
		}
		names := testkit.EventNames(closed)
		if testkit.Count(names, vocab.EventGotConn) != 2 || testkit.Count(names, vocab.EventWroteRequest) != 1 || testkit.Count(names, vocab.EventAlert) < 2 {
			t.Errorf("the later alert span's events %q; want the whole timeline: both got_conn, the write, both alerts", names)
		}
		checkExemplar(t, tel, retried.SpanContext(), vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeRetried))
		checkExemplar(t, tel, closed.SpanContext(), vocab.MetricAlerts, vocab.AttrDetector.String(detectors.BodyNotDrainedName))
	})
}

// TestAlertSpanUnderOtelhttp: stacked under otelhttp, conntrace annotates
// otelhttp's span when it records. Sampled, the alert is on otelhttp's span
// and the exemplar points at it. Not recording, conntrace's own span (a
// child of otelhttp's) is not sampled either, and the alert span, linked to
// it in otelhttp's trace, holds the alert and the exemplar. Recording but
// not sampled, otelhttp's span gets the alert event and, since no exporter
// will see it, an alert span holds it too.
func TestAlertSpanUnderOtelhttp(t *testing.T) {
	const otelhttpScope = "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	tests := []struct {
		name      string
		sampler   sdktrace.Sampler
		alertSpan bool // want one
		ownSpan   bool // conntrace starts a span of its own
	}{
		{"sampled", alertSampler{sdktrace.AlwaysSample()}, false, false},
		{"not sampled", alertSampler{sdktrace.ParentBased(sdktrace.NeverSample())}, true, true},
		{"recording, not sampled", alertSampler{recordOnly{}}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tel, started := sampledTelemetry(t, tt.sampler)
				lab := newNATLab(t, 350*time.Second, tel.options(WithTracerProvider(started))...)
				lab.client.Transport = otelhttp.NewTransport(lab.client.Transport,
					otelhttp.WithTracerProvider(started), otelhttp.WithMeterProvider(tel.MP))
				if err := lab.get(30 * time.Second); err != nil {
					t.Fatal(err)
				}
				time.Sleep(351 * time.Second)
				if err := lab.get(30 * time.Second); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("stale request: got %v; want context.DeadlineExceeded", err)
				}

				outer := started.of(otelhttpScope)
				own := started.of(ScopeName)
				if len(outer) != 2 || len(own) != 2*b2i(tt.ownSpan) {
					t.Fatalf("spans started: %d by otelhttp, %d by conntrace; want 2 and %d", len(outer), len(own), 2*b2i(tt.ownSpan))
				}
				var hung sdktrace.ReadOnlySpan // otelhttp's, if it recorded
				for _, s := range tel.Spans.Ended() {
					if s.SpanContext().Equal(outer[1]) {
						hung = s
					}
				}
				if hung != nil {
					if _, ok := testkit.Event(hung, vocab.EventAlert); !ok {
						t.Errorf("otelhttp's span records, and lacks the alert event: %q", testkit.EventNames(hung))
					}
					// The verdict's attributes, set while otelhttp's span
					// was open; its status stays otelhttp's.
					if !testkit.HasAll(attribute.NewSet(hung.Attributes()...), vocab.AttrDetector.String(detectors.StaleReuseName),
						vocab.AttrOutcome.String(detectors.OutcomeHang), vocab.AttrLevel.String("ERROR")) {
						t.Errorf("otelhttp's span attributes %v; want the verdict", hung.Attributes())
					}
					if st := hung.Status(); strings.HasPrefix(st.Description, detectors.StaleReuseName) {
						t.Errorf("otelhttp's span status %q: conntrace set it; it is otelhttp's", st.Description)
					}
				}
				spans := alertSpans(tel)
				if !tt.alertSpan {
					if len(spans) != 0 {
						t.Errorf("%d alert spans; want none: otelhttp's sampled span holds the alert", len(spans))
					}
					checkExemplar(t, tel, outer[1], vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang))
					checkExemplar(t, tel, outer[1], vocab.MetricAlerts, vocab.AttrDetector.String(detectors.StaleReuseName))
					return
				}
				if len(spans) != 1 {
					t.Fatalf("%d alert spans; want 1", len(spans))
				}
				request := outer[1] // the span conntrace annotates, or its own below it
				if tt.ownSpan {
					request = own[1]
				}
				if links := spans[0].Links(); len(links) != 1 || !links[0].SpanContext.Equal(request) ||
					request.TraceID() != outer[1].TraceID() {
					t.Errorf("alert span links %v; want one, to the request's span %v in otelhttp's trace %s", links, request, outer[1].TraceID())
				}
				if _, ok := testkit.Event(spans[0], vocab.EventAlert); !ok {
					t.Errorf("alert span events %q; want the alert", testkit.EventNames(spans[0]))
				}
				checkExemplar(t, tel, spans[0].SpanContext(), vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang))
				checkExemplar(t, tel, spans[0].SpanContext(), vocab.MetricAlerts, vocab.AttrDetector.String(detectors.StaleReuseName))
			})
		})
	}
}

// TestAlertSpanWithoutRequestSpan: WithParentBasedSampling, a request under
// a parent that was not sampled has no span of its own; an alert on it
// still gets an alert span, linked to the parent, and the exemplar.
func TestAlertSpanWithoutRequestSpan(t *testing.T) {
	tel, started := sampledTelemetry(t, alertSampler{sdktrace.ParentBased(sdktrace.AlwaysSample())})
	tr := NewTransport(nil, tel.options(WithTracerProvider(started), WithParentBasedSampling(), WithoutAudit())...)
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9},
		SpanID:  trace.SpanID{7, 7, 7, 7, 7, 7, 7, 7}, Remote: true,
	})
	req, _ := http.NewRequestWithContext(trace.ContextWithRemoteSpanContext(context.Background(), parent), http.MethodGet, "http://backend.test/", nil)
	r := tr.newRequest(req)
	r.begin()
	if r.span != nil || len(started.of(ScopeName)) != 0 {
		t.Fatalf("a request span was started under an unsampled parent, WithParentBasedSampling")
	}
	r.raise([]detectors.Alert{{Detector: detectors.StaleReuseName, Outcome: detectors.OutcomeHang, Level: slog.LevelError,
		Time: time.Now(), Host: "backend.test", Port: 80, Message: "hang", Advice: "advice"}})
	r.end(detect.BodyNone, 0, context.DeadlineExceeded)

	spans := alertSpans(tel)
	if len(spans) != 1 {
		t.Fatalf("alert spans: %d; want 1", len(spans))
	}
	if links := spans[0].Links(); len(links) != 1 || !links[0].SpanContext.Equal(parent) {
		t.Errorf("alert span links %v; want one, to the unsampled parent %v", links, parent)
	}
	checkExemplar(t, tel, spans[0].SpanContext(), vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang))
}
