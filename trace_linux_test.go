package conntrace

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestKernelGate: the kernel is read only for a connection reused after
// detect.KernelIdleGate of idle, and what it says shows on got_conn and
// in the learned path idle timeout, next to the configured settings. Such
// a reuse, answered before stale_reuse looks again, is not suspected: the
// write and the first byte stay numbers on its span, not events, however
// many times it happens (the timer it armed serves the next one).
func TestKernelGate(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	tel := newTelemetry(t)
	base := &http.Transport{IdleConnTimeout: 42 * time.Second}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: NewTransport(base, tel.options(WithNATIdleTimeout(350*time.Second))...)}

	testkit.Get(t, client, srv.URL)
	// Wall clock on purpose: the gate decides whether the kernel (TCP_INFO of a real socket) is read.
	time.Sleep(200 * time.Millisecond) // a hot reuse
	testkit.Get(t, client, srv.URL)
	time.Sleep(detect.KernelIdleGate + 100*time.Millisecond)
	testkit.Get(t, client, srv.URL)
	time.Sleep(detect.KernelIdleGate + 100*time.Millisecond)
	testkit.Get(t, client, srv.URL)

	spans := tel.Spans.Ended()
	if len(spans) != 4 {
		t.Fatalf("spans: %d; want 4", len(spans))
	}
	for i, want := range []bool{false, false, true, true} {
		for _, name := range []string{vocab.EventWroteRequest, vocab.EventFirstByte, vocab.EventAlert} {
			if _, ok := testkit.Event(spans[i], name); ok {
				t.Errorf("request %d: a %s event on an answered request; want the moments as numbers (events %q)", i+1, name, testkit.EventNames(spans[i]))
			}
		}
		spanAttrs := attribute.NewSet(spans[i].Attributes()...)
		for _, k := range []attribute.Key{vocab.AttrWroteAt, vocab.AttrFirstByteAt} {
			if !spanAttrs.HasValue(k) {
				t.Errorf("request %d: span attributes lack %s", i+1, k)
			}
		}
		attrs, _ := testkit.Event(spans[i], vocab.EventGotConn)
		wire, ok := attrs.Value(vocab.AttrWireIdle)
		if ok != want {
			t.Errorf("request %d: got_conn has %s: %v; want %v", i+1, vocab.AttrWireIdle, ok, want)
		}
		if ok && (wire.AsFloat64() < 1 || wire.AsFloat64() > 3) {
			t.Errorf("request %d: wire idle %vs; want about 1.1s", i+1, wire.AsFloat64())
		}
	}

	points := tel.Collect(t)
	host, port := srvHostPort(t, srv.URL)
	lower := points.Total(vocab.MetricPathIdleTimeout, semconv.ServerAddress(host), semconv.ServerPort(port), vocab.AttrBound.String(vocab.BoundLower))
	if lower < 1 || lower > 3 {
		t.Errorf("%s{lower}: %v; want about 1.1 (the answered reuse's wire idle)", vocab.MetricPathIdleTimeout, lower)
	}
	if n := len(points[vocab.MetricPathIdleTimeout]); n != 1 {
		t.Errorf("%s: %d points; want only the lower bound", vocab.MetricPathIdleTimeout, n)
	}
	for name, want := range map[string]float64{vocab.MetricConfigIdleConnTimeout: 42, vocab.MetricConfigNATIdleTimeout: 350} {
		if got := points.Total(name); got != want {
			t.Errorf("%s: %v; want %v", name, got, want)
		}
	}
}

func srvHostPort(t *testing.T, u string) (string, int) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return hostAndPort(req.URL)
}
