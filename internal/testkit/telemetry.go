package testkit

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// Telemetry is a TracerProvider and a MeterProvider of a test's own, never
// the OTel globals, recording into memory.
type Telemetry struct {
	Spans  *tracetest.SpanRecorder  // every span TP starts and ends
	TP     *sdktrace.TracerProvider // samples every span, unless told otherwise
	Reader *sdkmetric.ManualReader  // MP's only reader
	MP     *sdkmetric.MeterProvider
}

// NewTelemetry returns providers recording into Spans and Reader, shut
// down when the test ends. opts are the TracerProvider's beside the
// recorder: sdktrace.WithSampler, say.
func NewTelemetry(t testing.TB, opts ...sdktrace.TracerProviderOption) *Telemetry {
	t.Helper()
	tel := &Telemetry{Spans: tracetest.NewSpanRecorder(), Reader: sdkmetric.NewManualReader()}
	tel.TP = sdktrace.NewTracerProvider(append([]sdktrace.TracerProviderOption{sdktrace.WithSpanProcessor(tel.Spans)}, opts...)...)
	tel.MP = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.Reader))
	t.Cleanup(func() {
		_ = tel.TP.Shutdown(context.Background())
		_ = tel.MP.Shutdown(context.Background())
	})
	return tel
}

// Collect returns every data point of tel's metrics, by instrument name.
func (tel *Telemetry) Collect(t testing.TB) Points {
	t.Helper()
	return Collect(t, tel.Reader)
}

// Point is one data point of any instrument, flattened for assertions.
type Point struct {
	Attrs attribute.Set
	Value float64 // a sum's or a gauge's value, a histogram's count
	Sum   float64 // a histogram's sum
}

// Points are data points by instrument name, across scopes.
type Points map[string][]Point

// Collect returns every data point r holds, by instrument name. It fails
// the test on an aggregation it does not know, rather than miss points.
func Collect(t testing.TB, r sdkmetric.Reader) Points {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	out := Points{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				addPoints(out, m.Name, d.DataPoints)
			case metricdata.Sum[float64]:
				addPoints(out, m.Name, d.DataPoints)
			case metricdata.Gauge[int64]:
				addPoints(out, m.Name, d.DataPoints)
			case metricdata.Gauge[float64]:
				addPoints(out, m.Name, d.DataPoints)
			case metricdata.Histogram[int64]:
				addHistogram(out, m.Name, d.DataPoints)
			case metricdata.Histogram[float64]:
				addHistogram(out, m.Name, d.DataPoints)
			default:
				t.Fatalf("metric %s: unexpected data type %T", m.Name, m.Data)
			}
		}
	}
	return out
}

func addPoints[N int64 | float64](out Points, name string, dps []metricdata.DataPoint[N]) {
	for _, p := range dps {
		out[name] = append(out[name], Point{Attrs: p.Attributes, Value: float64(p.Value)})
	}
}

func addHistogram[N int64 | float64](out Points, name string, dps []metricdata.HistogramDataPoint[N]) {
	for _, p := range dps {
		out[name] = append(out[name], Point{Attrs: p.Attributes, Value: float64(p.Count), Sum: float64(p.Sum)})
	}
}

// Total sums the values of the points of name whose attributes include
// every one of want: a counter's count, a gauge's sum over its series, a
// histogram's number of observations.
func (p Points) Total(name string, want ...attribute.KeyValue) float64 {
	var sum float64
	for _, pt := range p[name] {
		if HasAll(pt.Attrs, want...) {
			sum += pt.Value
		}
	}
	return sum
}

// HasAll reports whether set holds every one of want, with its value.
func HasAll(set attribute.Set, want ...attribute.KeyValue) bool {
	for _, kv := range want {
		v, ok := set.Value(kv.Key)
		if !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// EventNames returns the names of a span's events, in order.
func EventNames(s sdktrace.ReadOnlySpan) []string {
	var names []string
	for _, e := range s.Events() {
		names = append(names, e.Name)
	}
	return names
}

// Event returns the attributes of a span's first event called name, and
// whether there was one.
func Event(s sdktrace.ReadOnlySpan, name string) (attribute.Set, bool) {
	for _, e := range s.Events() {
		if e.Name == name {
			return attribute.NewSet(e.Attributes...), true
		}
	}
	return attribute.Set{}, false
}

// Count returns how many of names are name: Count(EventNames(s), name) is
// how many events of s are called name.
func Count(names []string, name string) int {
	n := 0
	for _, x := range names {
		if x == name {
			n++
		}
	}
	return n
}

// Index returns the index in names of the n-th (from 0) name, or -1.
func Index(names []string, name string, n int) int {
	for i, x := range names {
		if x == name {
			if n == 0 {
				return i
			}
			n--
		}
	}
	return -1
}
