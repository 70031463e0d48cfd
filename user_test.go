package conntrace

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// notHealth is a filter as services write them: health checks and
// metrics scrapes stay out of the traces.
func notHealth(r *http.Request) bool {
	return r.URL.Path != "/healthz" && r.URL.Path != "/metrics"
}

// TestWithFilter: a filtered request (a health check) has no span, sends
// no traceparent and records no request duration, as with otelhttp; yet
// the connection it shares with traced requests is still counted: its
// reuse, and the dial of the connection it opened.
func TestWithFilter(t *testing.T) {
	var (
		mu      sync.Mutex
		carried = map[string]bool{}
	)
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		carried[r.URL.Path] = r.Header.Get("Traceparent") != ""
		mu.Unlock()
		w.Write([]byte("ok"))
	})
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithFilter(notHealth), WithPropagators(propagation.TraceContext{}))...)
	testkit.Get(t, client, srv.URL+"/healthz") // dials
	testkit.Get(t, client, srv.URL+"/api")     // reuses the health check's connection
	testkit.Get(t, client, srv.URL+"/metrics") // reuses it again

	spans := tel.Spans.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans; want 1, the /api request's: filtered requests have none", len(spans))
	}
	mu.Lock()
	if carried["/healthz"] || carried["/metrics"] || !carried["/api"] {
		t.Errorf("traceparent sent: %v; want on /api only", carried)
	}
	mu.Unlock()
	points := tel.Collect(t)
	if got := points.Total("http.client.request.duration"); got != 1 {
		t.Errorf("http.client.request.duration: %v requests; want 1, the traced one", got)
	}
	if got := points.Total(vocab.MetricDials); got != 1 {
		t.Errorf("%s: got %v; want 1: the filtered health check's dial is counted", vocab.MetricDials, got)
	}
	if got := points.Total(vocab.MetricReuses); got != 2 {
		t.Errorf("%s: got %v; want 2: the filtered scrape's reuse is counted", vocab.MetricReuses, got)
	}
	if got := points.Total(vocab.MetricPutIdle); got != 3 {
		t.Errorf("%s: got %v; want 3, one per request, filtered or not", vocab.MetricPutIdle, got)
	}
}

// TestWithFilterAnded: several filters are ANDed, as otelhttp's are.
func TestWithFilterAnded(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {})
	tel := newTelemetry(t)
	notReady := func(r *http.Request) bool { return r.URL.Path != "/ready" }
	client, _ := newClient(t, tel.options(WithFilter(notHealth), WithFilter(notReady))...)
	for _, p := range []string{"/healthz", "/ready", "/api"} {
		testkit.Get(t, client, srv.URL+p)
	}
	if got := len(tel.Spans.Ended()); got != 1 {
		t.Errorf("%d spans; want 1: either filter keeps a request out", got)
	}
}

// TestWithFilterStaleStillAlerts: a health check is what reuses a
// connection after a quiet spell, so it is often the request that finds
// a connection a NAT forgot. Filtered, it still raises the alert, logs
// it, counts it and hands it to the AlertHandler, with an alert span to
// hold it: the connection is everyone's.
func TestWithFilterStaleStillAlerts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		lab := startNATLab(t, 350*time.Second, &http.Server{Handler: http.HandlerFunc(hello)})
		lab.client = &http.Client{Transport: NewTransport(lab.base, tel.options(WithFilter(func(*http.Request) bool { return false }))...)}
		if err := lab.get(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(351 * time.Second)
		if err := lab.get(30 * time.Second); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("stale request: got %v; want context.DeadlineExceeded", err)
		}
		alerts := tel.handledBy(detectors.StaleReuseName)
		if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeHang {
			t.Fatalf("got alerts %+v; want one stale_reuse hang from the filtered request", tel.handled())
		}
		points := tel.Collect(t)
		if got := points.Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang)); got != 1 {
			t.Errorf("%s{hang}: got %v; want 1", vocab.MetricStaleReuses, got)
		}
		if got := points.Total(vocab.MetricAlerts); got != 1 {
			t.Errorf("%s: got %v; want 1", vocab.MetricAlerts, got)
		}
		if !strings.Contains(tel.logs.String(), "outcome=hang") {
			t.Errorf("alert not logged: %s", tel.logs.String())
		}
		spans := tel.Spans.Ended()
		if len(spans) != 1 || !testkit.HasAll(attribute.NewSet(spans[0].Attributes()...), vocab.AttrAlertSpan.Bool(true)) {
			names := []string{}
			for _, s := range spans {
				names = append(names, s.Name())
			}
			t.Errorf("spans %q; want only the alert span", names)
		}
	})
}

// TestWithFilterNil: a nil filter is a mistake shown at NewTransport.
func TestWithFilterNil(t *testing.T) {
	defer func() {
		if p := recover(); p == nil || !strings.Contains(p.(string), "WithFilter(nil)") {
			t.Errorf("NewTransport(WithFilter(nil)): panic %v; want one naming WithFilter(nil)", p)
		}
	}()
	NewTransport(nil, WithFilter(nil))
}

// TestWithSpanNameFormatter: the span is named by the function, with
// otelhttp's signature; an empty name or a panic falls back to the method.
func TestWithSpanNameFormatter(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {})
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithSpanNameFormatter(func(op string, r *http.Request) string {
		switch r.URL.Path {
		case "/empty":
			return ""
		case "/panic":
			panic("formatter bug")
		}
		return op + r.Method + " " + r.URL.Path
	}))...)
	for _, p := range []string{"/users/list", "/empty", "/panic"} {
		testkit.Get(t, client, srv.URL+p)
	}
	var names []string
	for _, s := range tel.Spans.Ended() {
		names = append(names, s.Name())
	}
	if want := []string{"GET /users/list", "GET", "GET"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("span names %q; want %q", names, want)
	}
}

// TestWithMetricAttributesFn: the function's attributes and a Labeler's
// are on http.client.request.duration, beside semconv's, and on no
// connection metric.
func TestWithMetricAttributesFn(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {})
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithMetricAttributesFn(func(r *http.Request) []attribute.KeyValue {
		return []attribute.KeyValue{attribute.String("api.version", r.Header.Get("X-Api-Version"))}
	}))...)
	l := &Labeler{}
	l.Add(attribute.String("tenant", "acme"))
	req, _ := http.NewRequestWithContext(ContextWithLabeler(t.Context(), l), http.MethodGet, srv.URL, nil)
	req.Header.Set("X-Api-Version", "v2")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()

	points := tel.Collect(t)
	want := []attribute.KeyValue{attribute.String("api.version", "v2"), attribute.String("tenant", "acme"),
		semconv.HTTPResponseStatusCode(200), semconv.ServerAddress("127.0.0.1")}
	if got := points.Total("http.client.request.duration", want...); got != 1 {
		t.Errorf("http.client.request.duration%v: got %v; want 1 (points %v)", want, got, points["http.client.request.duration"])
	}
	if got := points.Total(vocab.MetricPutIdle, attribute.String("tenant", "acme")); got != 0 {
		t.Errorf("%s carries the Labeler's attribute; want it on the request duration only", vocab.MetricPutIdle)
	}
	if got, ok := LabelerFromContext(t.Context()); ok || len(got.Get()) != 0 {
		t.Errorf("LabelerFromContext of a context without one: %v, %v; want an empty Labeler, false", got.Get(), ok)
	}
}

// TestMetricAttributesBounded: a user attribute with unbounded values (a
// request id) makes at most 256 series of its own; the rest share one,
// marked otel.metric.overflow=true.
func TestMetricAttributesBounded(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {})
	tel := newTelemetry(t)
	n := 0
	client, _ := newClient(t, tel.options(WithMetricAttributesFn(func(r *http.Request) []attribute.KeyValue {
		n++ // RoundTrip calls it once per request, on the caller's goroutine
		return []attribute.KeyValue{attribute.String("request.id", strconv.Itoa(n))}
	}))...)
	const requests = maxUserAttributeSets + 44
	for range requests {
		testkit.Get(t, client, srv.URL)
	}
	points := tel.Collect(t)
	series := points["http.client.request.duration"]
	if got, want := len(series), maxUserAttributeSets+1; got != want {
		t.Errorf("%d series; want %d: 256 request ids and the overflow", got, want)
	}
	if got := points.Total("http.client.request.duration", attribute.Bool("otel.metric.overflow", true)); got != requests-maxUserAttributeSets {
		t.Errorf("overflow series: %v requests; want %d", got, requests-maxUserAttributeSets)
	}
	if got := points.Total("http.client.request.duration"); got != requests {
		t.Errorf("%v requests recorded; want %d: none is dropped", got, requests)
	}
}

// otelhttpFilter stands for otelhttp.Filter, a named type of its own:
// WithFilter takes a value of it as it is, so switching is a rename.
type otelhttpFilter func(*http.Request) bool

var _ = WithFilter(otelhttpFilter(notHealth))
