package conntrace

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/conntrace/conntrace/detectors"
)

// TestMain fails the package's tests if any leave a goroutine behind: a
// leaked hang timer, body watcher or connection would show here.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// telemetry is what a test Transport reports to: its own providers, never
// the OTel globals.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	logs   *syncBuffer

	mu     sync.Mutex
	alerts []detectors.Alert
}

func newTelemetry(t *testing.T) *telemetry {
	t.Helper()
	tel := &telemetry{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader(), logs: &syncBuffer{}}
	tel.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tel.spans))
	tel.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(tel.reader))
	t.Cleanup(func() {
		_ = tel.tp.Shutdown(context.Background())
		_ = tel.mp.Shutdown(context.Background())
	})
	return tel
}

// options wires a Transport to tel, then applies extra.
func (tel *telemetry) options(extra ...Option) []Option {
	return append([]Option{
		WithTracerProvider(tel.tp),
		WithMeterProvider(tel.mp),
		WithLogger(slog.New(slog.NewTextHandler(tel.logs, nil))),
		WithAlertHandler(func(_ context.Context, a detectors.Alert) {
			tel.mu.Lock()
			tel.alerts = append(tel.alerts, a)
			tel.mu.Unlock()
		}),
	}, extra...)
}

func (tel *telemetry) handled() []detectors.Alert {
	tel.mu.Lock()
	defer tel.mu.Unlock()
	return append([]detectors.Alert(nil), tel.alerts...)
}

// handledBy returns the handled alerts of one detector.
func (tel *telemetry) handledBy(detector string) []detectors.Alert {
	var out []detectors.Alert
	for _, a := range tel.handled() {
		if a.Detector == detector {
			out = append(out, a)
		}
	}
	return out
}

// point is one data point of any instrument, flattened for assertions.
type point struct {
	attrs attribute.Set
	value float64 // sum, gauge value, or histogram count
	sum   float64 // histogram sum
}

// collect returns every data point by instrument name.
func (tel *telemetry) collect(t *testing.T) map[string][]point {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect metrics: %v", err)
	}
	out := map[string][]point{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[m.Name] = append(out[m.Name], point{attrs: p.Attributes, value: float64(p.Value)})
				}
			case metricdata.Sum[float64]:
				for _, p := range d.DataPoints {
					out[m.Name] = append(out[m.Name], point{attrs: p.Attributes, value: p.Value})
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[m.Name] = append(out[m.Name], point{attrs: p.Attributes, value: float64(p.Count), sum: p.Sum})
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					out[m.Name] = append(out[m.Name], point{attrs: p.Attributes, value: p.Value})
				}
			default:
				t.Fatalf("metric %s: unexpected data type %T", m.Name, m.Data)
			}
		}
	}
	return out
}

// total sums the points of name whose attributes include every one of want.
func total(points map[string][]point, name string, want ...attribute.KeyValue) float64 {
	var sum float64
	for _, p := range points[name] {
		if hasAll(p.attrs, want) {
			sum += p.value
		}
	}
	return sum
}

func hasAll(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		v, ok := set.Value(kv.Key)
		if !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// events returns the names of a span's events, in order.
func events(s sdktrace.ReadOnlySpan) []string {
	var names []string
	for _, e := range s.Events() {
		names = append(names, e.Name)
	}
	return names
}

// event returns the attributes of the first event called name, and whether
// there was one.
func event(s sdktrace.ReadOnlySpan, name string) (attribute.Set, bool) {
	for _, e := range s.Events() {
		if e.Name == name {
			return attribute.NewSet(e.Attributes...), true
		}
	}
	return attribute.Set{}, false
}

func count(names []string, name string) int {
	n := 0
	for _, x := range names {
		if x == name {
			n++
		}
	}
	return n
}

// roundTripperFunc is a fake base transport.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// get sends a GET through client and reads the body to EOF.
func get(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	res, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	if err := res.Body.Close(); err != nil {
		t.Fatalf("close body: %v", err)
	}
	return string(b)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
