package integrations

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// This file holds what every client's test shares: the telemetry conntrace
// reports to, and the INTEGRATION line that names the client and the
// version the test ran against (.ci/run looks for each).

// recorded is a test's telemetry, and the alerts conntrace handled.
type recorded struct {
	*testkit.Telemetry
	logs   *testkit.SyncBuffer
	alerts chan detectors.Alert
}

func newRecorded(t *testing.T) *recorded {
	return &recorded{Telemetry: testkit.NewTelemetry(t), logs: &testkit.SyncBuffer{}, alerts: make(chan detectors.Alert, 64)}
}

// options wires a conntrace Transport to rec, then applies extra.
func (rec *recorded) options(extra ...conntrace.Option) []conntrace.Option {
	return append([]conntrace.Option{
		conntrace.WithTracerProvider(rec.TP),
		conntrace.WithMeterProvider(rec.MP),
		conntrace.WithPropagators(propagation.TraceContext{}),
		conntrace.WithLogger(slog.New(slog.NewTextHandler(rec.logs, nil))),
		conntrace.WithAlertHandler(func(_ context.Context, a detectors.Alert) {
			select {
			case rec.alerts <- a:
			default:
			}
		}),
	}, extra...)
}

// alerted returns the alerts handled so far.
func (rec *recorded) alerted() []detectors.Alert {
	var out []detectors.Alert
	for {
		select {
		case a := <-rec.alerts:
			out = append(out, a)
		default:
			return out
		}
	}
}

// clientSpans returns the ended spans that are conntrace's request spans
// (not alert spans).
func (rec *recorded) clientSpans() []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range rec.Spans.Ended() {
		if !isAlertSpan(s) {
			out = append(out, s)
		}
	}
	return out
}

func isAlertSpan(s sdktrace.ReadOnlySpan) bool {
	for _, kv := range s.Attributes() {
		if kv.Key == vocab.AttrAlertSpan && kv.Value.AsBool() {
			return true
		}
	}
	return false
}

// integrated prints, once the test has passed, the line that says which
// client it exercised, at which version (from the test binary's build
// module's go.mod).
func integrated(t *testing.T, module string) {
	t.Cleanup(func() {
		if !t.Failed() && !t.Skipped() {
			fmt.Printf("INTEGRATION client=%s version=%s ok\n", module, moduleVersion(module))
		}
	})
}

func moduleVersion(module string) string {
	// A test binary carries no module versions (debug.ReadBuildInfo has
	// no Deps), so they are read from this module's go.mod, which names
	// every client it tests.
	b, err := os.ReadFile("go.mod")
	if err != nil {
		return "unknown"
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == module {
			return f[1]
		}
	}
	return "unknown"
}

// reusedOnce asserts what conntrace saw of two requests on one pooled
// connection: one dial, one reuse after an idle time, recorded.
func reusedOnce(t *testing.T, rec *recorded) {
	t.Helper()
	points := rec.Collect(t)
	if got := points.Total(vocab.MetricReuses, vocab.AttrWasIdle.Bool(true)); got < 1 {
		t.Errorf("%s{was_idle}: got %v; want at least 1: the second request reused the pooled connection", vocab.MetricReuses, got)
	}
	idle := points[vocab.MetricIdleTime]
	if len(idle) == 0 || idle[0].Value < 1 || idle[0].Sum <= 0 {
		t.Errorf("%s: got %+v; want the reuse's idle time recorded", vocab.MetricIdleTime, idle)
	}
}

// okHandler answers every request with a small JSON document.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"ok":true}`)
})
