package conntrace

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestActiveRequestsWhileInFlight: the observable active-request count is
// 1 while a response body is unread, and 0 once it is.
func TestActiveRequestsWhileInFlight(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	res, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	host := semconv.ServerAddress("127.0.0.1")
	if got := tel.Collect(t).Total("http.client.active_requests", host); got != 1 {
		t.Errorf("active requests while the body is unread: got %v; want 1", got)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	points := tel.Collect(t)
	if got := points.Total("http.client.active_requests", host); got != 0 {
		t.Errorf("active requests after the body: got %v; want 0", got)
	}
	if got := points.Total(vocab.MetricPutIdle, host, vocab.AttrOutcome.String(vocab.OutcomePooled)); got != 1 {
		t.Errorf("%s{pooled}: got %v; want 1", vocab.MetricPutIdle, got)
	}
}

// TestCountsOverflow: past maxCountedHosts, hosts share one set of counts
// reported with otel.metric.overflow=true, and nothing is lost.
func TestCountsOverflow(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	c, _ := newCounts(mp.Meter("test"))
	for i := range maxCountedHosts + 10 {
		c.get("h"+strconv.Itoa(i)+".test", 443).reuses[1].Add(1)
	}
	points := testkit.Collect(t, reader)
	if got := points.Total(vocab.MetricReuses); got != maxCountedHosts+10 {
		t.Errorf("reuses in all: got %v; want %d", got, maxCountedHosts+10)
	}
	if got := points.Total(vocab.MetricReuses, attribute.Bool("otel.metric.overflow", true)); got != 10 {
		t.Errorf("reuses of the overflow: got %v; want 10", got)
	}
	if got := len(points[vocab.MetricReuses]); got != maxCountedHosts+1 {
		t.Errorf("reuse series: got %d; want %d (one per counted host, one overflow)", got, maxCountedHosts+1)
	}
}

// TestDroppedTransportUnregisters: a Transport that is garbage collected
// takes its callback out of the MeterProvider, so a program that makes
// Transports as it goes does not pile up callbacks.
func TestDroppedTransportUnregisters(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	func() {
		base := &http.Transport{}
		defer base.CloseIdleConnections()
		client := &http.Client{Transport: NewTransport(base, tel.options()...)}
		testkit.Get(t, client, srv.URL)
	}()
	if len(tel.Collect(t)["http.client.active_requests"]) == 0 {
		t.Fatalf("no active-request series while the Transport lives")
	}
	// Wall clock on purpose: runtime.AddCleanup's cleanups run outside any synctest bubble, after a collection.
	if !testkit.Eventually(5*time.Second, func() bool { runtime.GC(); return len(tel.Collect(t)["http.client.active_requests"]) == 0 }) {
		t.Fatalf("the dropped Transport's callback still reports after 5s of garbage collections")
	}
}
