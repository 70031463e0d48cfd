package conntrace

import (
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/codes"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// batchServer answers requests in batches of n: each waits until n are in,
// so a batch of n concurrent requests holds n connections at once.
func batchServer(t *testing.T, n int) string {
	var mu sync.Mutex
	waiting, release := 0, make(chan struct{})
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		waiting++
		ch := release
		if waiting == n {
			close(release)
			waiting, release = 0, make(chan struct{})
		}
		mu.Unlock()
		<-ch
		hello(w, r)
	})
	return srv.URL
}

// burst sends n GETs at once and reads each to EOF.
func burst(t *testing.T, client *http.Client, url string, n int) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { testkit.Get(t, client, url) })
	}
	wg.Wait()
}

// TestPoolOverflow reproduces pool churn: bursts of 8 concurrent requests
// to one host through net/http's default pool of 2 idle connections per
// host. After each burst 6 connections are refused by the pool and closed;
// the next burst dials 6 again. The alert names the concurrency it saw and
// the value to set; no request's span is an error.
func TestPoolOverflow(t *testing.T) {
	url := batchServer(t, 8)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	for range 3 {
		burst(t, client, url, 8)
	}

	alerts := tel.handledBy(detectors.PoolOverflowName)
	if len(alerts) != 1 {
		t.Fatalf("got alerts %+v; want one pool_overflow", tel.handled())
	}
	a := alerts[0]
	t.Logf("alert: %s\nadvice: %s", a.Message, a.Advice)
	if a.Outcome != detectors.OutcomeChurn {
		t.Errorf("outcome: got %q; want churn", a.Outcome)
	}
	for _, want := range []string{"MaxIdleConnsPerHost (2, net/http's default)", "up to 8 requests to it were in flight at once",
		"Set http.Transport.MaxIdleConnsPerHost to at least 8"} {
		if !strings.Contains(a.Message+" "+a.Advice, want) {
			t.Errorf("alert lacks %q:\n%s\n%s", want, a.Message, a.Advice)
		}
	}
	points := tel.Collect(t)
	if got := points.Total(vocab.MetricPutIdle, vocab.AttrReason.String(vocab.ReasonTooManyIdleForHost)); got != 18 {
		t.Errorf("%s{too_many_idle_for_host}: got %v; want 18 (6 per burst)", vocab.MetricPutIdle, got)
	}
	if got := points.Total(vocab.MetricDials); got != 20 {
		t.Errorf("%s: got %v; want 20 (8, then 6 per burst)", vocab.MetricDials, got)
	}
	if got := points.Total(vocab.MetricAlerts, vocab.AttrDetector.String(detectors.PoolOverflowName)); got != 1 {
		t.Errorf("%s{pool_overflow}: got %v; want 1 (once per window)", vocab.MetricAlerts, got)
	}
	withAlert := 0
	for _, s := range tel.Spans.Ended() {
		if s.Status().Code == codes.Error {
			t.Errorf("span %s has status Error; a full pool is not a failed request", s.SpanContext().SpanID())
		}
		if testkit.Count(testkit.EventNames(s), vocab.EventAlert) > 0 {
			withAlert++
		}
	}
	if withAlert != 1 {
		t.Errorf("%d spans carry an alert event; want 1", withAlert)
	}
}

// TestPoolOverflowQuiet: the same bursts through a pool of 8 idle
// connections per host reuse the first 8 connections; nothing overflows,
// nothing is raised, and no host is even watched.
func TestPoolOverflowQuiet(t *testing.T) {
	url := batchServer(t, 8)
	tel := newTelemetry(t)
	base := &http.Transport{MaxIdleConnsPerHost: 8}
	defer base.CloseIdleConnections()
	tr := NewTransport(base, tel.options()...)
	client := &http.Client{Transport: tr}
	for range 3 {
		burst(t, client, url, 8)
	}
	points := tel.Collect(t)
	if got := points.Total(vocab.MetricDials); got != 8 {
		t.Errorf("%s: got %v; want 8", vocab.MetricDials, got)
	}
	if got := points.Total(vocab.MetricPutIdle, vocab.AttrOutcome.String(vocab.OutcomeRejected)) + points.Total(vocab.MetricAlerts); got != 0 {
		t.Errorf("rejected + alerts: got %v; want 0", got)
	}
	if got := poolOverflow(t, tr).Hosts(); got != 0 {
		t.Errorf("pool_overflow watches %d hosts; want 0", got)
	}
}

// poolOverflow returns tr's pool_overflow detector.
func poolOverflow(t *testing.T, tr *Transport) *detect.PoolOverflow {
	t.Helper()
	for _, d := range tr.watchers[detect.StepPoolFull] {
		if p, ok := d.(*detect.PoolOverflow); ok {
			return p
		}
	}
	t.Fatal("no pool_overflow detector")
	return nil
}

// TestPoolFullAfterEnd: net/http reports a refused connection once the
// response body is read, concurrently with the body's end, so PutIdleConn
// may come after the request ended. Those refusals still count: late ones
// alone raise the alert.
func TestPoolFullAfterEnd(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close") // every request dials
		hello(w, r)
	})
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	for i := range detect.DefaultMinOverflows + 1 {
		res, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		hooks := httptrace.ContextClientTrace(res.Request.Context())
		if hooks == nil {
			t.Fatal("no ClientTrace while the body is open")
		}
		late := *hooks
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		late.PutIdleConn(errTooManyIdle)
		if got := len(tel.handledBy(detectors.PoolOverflowName)); got != 0 && i < detect.DefaultMinOverflows {
			t.Fatalf("alert after %d refusals", i+1)
		}
	}
	if got := len(tel.handledBy(detectors.PoolOverflowName)); got != 1 {
		t.Fatalf("got %d pool_overflow alerts from late refusals; want 1 (all: %+v)", got, tel.handled())
	}
}
