package conntrace

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
)

// TestMain fails the package's tests if any leave a goroutine behind: a
// leaked hang timer, body watcher or connection would show here.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// telemetry is what a test Transport reports to: its own providers, never
// the OTel globals, its own log and the alerts its handler was given.
type telemetry struct {
	*testkit.Telemetry
	logs *testkit.SyncBuffer

	mu     sync.Mutex
	alerts []detectors.Alert
}

// newTelemetry returns a test's telemetry; opts are its TracerProvider's,
// beside the span recorder (sdktrace.WithSampler, say).
func newTelemetry(t *testing.T, opts ...sdktrace.TracerProviderOption) *telemetry {
	t.Helper()
	return &telemetry{Telemetry: testkit.NewTelemetry(t, opts...), logs: &testkit.SyncBuffer{}}
}

// options wires a Transport to tel, then applies extra.
func (tel *telemetry) options(extra ...Option) []Option {
	return append([]Option{
		WithTracerProvider(tel.TP),
		WithMeterProvider(tel.MP),
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

// roundTripperFunc is a fake base transport.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
