package exporters_test

import (
	"context"
	"fmt"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/exporters"
	"github.com/conntrace/conntrace/vocab"
)

// alertSpan are the start options conntrace gives an alert span: a new
// root, linked to the request's span, marked at its start.
func alertSpan(request trace.SpanContext) []trace.SpanStartOption {
	return []trace.SpanStartOption{
		trace.WithNewRoot(),
		trace.WithLinks(trace.Link{SpanContext: request}),
		trace.WithAttributes(vocab.AttrAlertSpan.Bool(true)),
	}
}

// remoteParent is a context holding a remote span context, sampled or not,
// as a propagator extracts it from an incoming request.
func remoteParent(sampled bool) context.Context {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0xab, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
		SpanID:     trace.SpanID{0xcd, 1, 2, 3, 4, 5, 6, 7},
		TraceFlags: map[bool]trace.TraceFlags{true: trace.FlagsSampled, false: 0}[sampled],
		Remote:     true,
	})
	return trace.ContextWithRemoteSpanContext(context.Background(), sc)
}

// newTracerProvider is New's TracerProvider under env, with rec (if not
// nil) seeing every span it records.
func newTracerProvider(t *testing.T, rec *tracetest.SpanRecorder, env ...string) *sdktrace.TracerProvider {
	t.Helper()
	cleanEnv(t, append([]string{"OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "none"}, env...)...)
	var opts []exporters.Option
	if rec != nil {
		opts = append(opts, exporters.WithSpanProcessor(rec))
	}
	p, err := exporters.New(context.Background(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	return p.TracerProvider
}

// TestSamplerKeepsAlertSpans: at 1 % (and at 0 %) every alert span is
// sampled, and every ordinary root span is sampled exactly when the
// sampler OTEL_TRACES_SAMPLER names would sample it on its own.
func TestSamplerKeepsAlertSpans(t *testing.T) {
	const roots = 5000
	tests := []struct {
		sampler, arg string
		ref          sdktrace.Sampler // what decides ordinary root spans
	}{
		{"traceidratio", "0.01", sdktrace.TraceIDRatioBased(0.01)},
		{"parentbased_traceidratio", "0.01", sdktrace.TraceIDRatioBased(0.01)},
		{"always_off", "", sdktrace.NeverSample()},
		{"parentbased_always_off", "", sdktrace.NeverSample()},
		{"always_on", "", sdktrace.AlwaysSample()},
	}
	for _, tt := range tests {
		t.Run(tt.sampler, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tracer := newTracerProvider(t, rec, "OTEL_TRACES_SAMPLER", tt.sampler, "OTEL_TRACES_SAMPLER_ARG", tt.arg).Tracer("test")
			ctx := context.Background()
			sampled := 0
			for range roots {
				_, span := tracer.Start(ctx, "GET")
				sc := span.SpanContext()
				want := tt.ref.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: sc.TraceID()}).Decision == sdktrace.RecordAndSample
				if sc.IsSampled() != want || span.IsRecording() != want {
					t.Fatalf("ordinary span of trace %s: sampled %v, recording %v; %s alone decides %v",
						sc.TraceID(), sc.IsSampled(), span.IsRecording(), tt.ref.Description(), want)
				}
				if want {
					sampled++
				}
				// The request's span, sampled or not, is what the
				// alert span links to.
				_, alert := tracer.Start(ctx, "conntrace.alert", alertSpan(sc)...)
				if !alert.SpanContext().IsSampled() || !alert.IsRecording() {
					t.Fatalf("an alert span was dropped (sampled %v, recording %v)", alert.SpanContext().IsSampled(), alert.IsRecording())
				}
				alert.End()
				span.End()
			}
			// What the processors (and so the exporter) saw.
			var gotAlerts, gotOrdinary int
			for _, s := range rec.Ended() {
				if s.Name() == "conntrace.alert" {
					gotAlerts++
				} else {
					gotOrdinary++
				}
			}
			if gotAlerts != roots || gotOrdinary != sampled {
				t.Errorf("the span processor saw %d alert spans and %d ordinary ones; want %d and %d", gotAlerts, gotOrdinary, roots, sampled)
			}
			t.Logf("%s %s: %d of %d ordinary spans sampled, %d of %d alert spans", tt.sampler, tt.arg, sampled, roots, gotAlerts, roots)
			switch tt.arg {
			case "0.01":
				// 50 expected; outside 1..249 is a broken ratio, not luck.
				if sampled == 0 || sampled >= roots/20 {
					t.Errorf("%d of %d ordinary spans sampled at 1 %%", sampled, roots)
				}
			}
		})
	}
}

// TestSamplerKeepsParentBased: for ordinary spans the parent-based
// samplers still follow the parent, and a plain ratio sampler still
// ignores it; an alert span is kept under any parent.
func TestSamplerKeepsParentBased(t *testing.T) {
	tests := []struct {
		name, sampler, arg string
		parent             bool // the parent's sampled flag
		alert              bool
		want               bool
	}{
		{"sampled parent", "parentbased_traceidratio", "0.01", true, false, true},
		{"unsampled parent", "parentbased_traceidratio", "0.01", false, false, false},
		{"sampled parent, always_off root", "parentbased_always_off", "", true, false, true},
		{"unsampled parent, always_on root", "parentbased_always_on", "", false, false, false},
		{"default: parentbased_always_on", "", "", false, false, false},
		{"traceidratio ignores a sampled parent", "traceidratio", "0", true, false, false},
		{"alert span under an unsampled parent", "parentbased_traceidratio", "0.01", false, true, true},
		{"alert span under an unsampled parent, always_off", "parentbased_always_off", "", false, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tracer := newTracerProvider(t, nil, "OTEL_TRACES_SAMPLER", tt.sampler, "OTEL_TRACES_SAMPLER_ARG", tt.arg).Tracer("test")
			var opts []trace.SpanStartOption
			if tt.alert {
				// Here a child, not a new root: the mark decides
				// wherever the span sits in its trace.
				opts = append(opts, trace.WithAttributes(vocab.AttrAlertSpan.Bool(true)))
			}
			_, span := tracer.Start(remoteParent(tt.parent), "GET", opts...)
			defer span.End()
			if got := span.SpanContext().IsSampled(); got != tt.want {
				t.Errorf("sampled %v; want %v", got, tt.want)
			}
		})
	}
}

// TestSamplerReadsTheVariableAsTheSDKDoes: trimmed and case-insensitive
// names, a ratio defaulting to 1, an argument ignored where none is taken.
func TestSamplerReadsTheVariableAsTheSDKDoes(t *testing.T) {
	tests := []struct {
		sampler, arg string
		want         bool // an ordinary root span is sampled
	}{
		{" ParentBased_TraceIDRatio ", "", true},
		{"TRACEIDRATIO", " 0 ", false},
		{"always_off", "0.5", false},
		{"traceidratio", "1", true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q %q", tt.sampler, tt.arg), func(t *testing.T) {
			tracer := newTracerProvider(t, nil, "OTEL_TRACES_SAMPLER", tt.sampler, "OTEL_TRACES_SAMPLER_ARG", tt.arg).Tracer("test")
			_, span := tracer.Start(context.Background(), "GET")
			defer span.End()
			if got := span.SpanContext().IsSampled(); got != tt.want {
				t.Errorf("sampled %v; want %v", got, tt.want)
			}
		})
	}
}

func TestKeepAlertSpansDescription(t *testing.T) {
	for _, tt := range []struct {
		s    sdktrace.Sampler
		want string
	}{
		{nil, "KeepAlertSpans{" + sdktrace.ParentBased(sdktrace.AlwaysSample()).Description() + "}"},
		{sdktrace.TraceIDRatioBased(0.01), "KeepAlertSpans{TraceIDRatioBased{0.01}}"},
	} {
		if got := exporters.KeepAlertSpans(tt.s).Description(); got != tt.want {
			t.Errorf("got %q; want %q", got, tt.want)
		}
	}
}

// A program that builds its own TracerProvider wraps its sampler, so that
// conntrace's alert spans survive its ratio.
func ExampleKeepAlertSpans() {
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(exporters.KeepAlertSpans(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.01)))),
	)
	defer tp.Shutdown(context.Background())
	tracer := tp.Tracer("example")

	// A request in a trace that was not sampled upstream: its incoming
	// traceparent had the sampled flag off.
	upstream := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		Remote:  true,
	})
	ctx, request := tracer.Start(trace.ContextWithRemoteSpanContext(context.Background(), upstream), "GET")
	fmt.Println("request span sampled:", request.SpanContext().IsSampled())

	// An alert on that request: conntrace records it in a span of its own,
	// a new root linked to the request's span and marked at its start.
	_, alert := tracer.Start(ctx, "alert",
		trace.WithNewRoot(),
		trace.WithLinks(trace.Link{SpanContext: request.SpanContext()}),
		trace.WithAttributes(vocab.AttrAlertSpan.Bool(true)))
	fmt.Println("alert span sampled:", alert.SpanContext().IsSampled())
	alert.End()
	request.End()
	// Output:
	// request span sampled: false
	// alert span sampled: true
}
