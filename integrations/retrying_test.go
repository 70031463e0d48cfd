package integrations

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-resty/resty/v2"
	"github.com/hashicorp/go-retryablehttp"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
)

// flaky answers 503 to the first failures requests, then 200.
func flaky(t *testing.T, failures int32) *httptest.Server {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= failures {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		okHandler(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// attempts asserts one span per attempt: failures spans with status 503,
// then one with 200, all on one connection after the first.
func attempts(t *testing.T, rec *recorded, failures int) {
	t.Helper()
	spans := rec.clientSpans()
	if len(spans) != failures+1 {
		t.Fatalf("%d spans; want %d, one per attempt", len(spans), failures+1)
	}
	for i, s := range spans {
		want := 503
		if i == failures {
			want = 200
		}
		var got int64
		for _, kv := range s.Attributes() {
			if kv.Key == semconv.HTTPResponseStatusCodeKey {
				got = kv.Value.AsInt64()
			}
		}
		if got != int64(want) {
			t.Errorf("attempt %d: status %d; want %d", i+1, got, want)
		}
	}
	if got := rec.Collect(t).Total("conntrace.connection.reuses"); got != float64(failures) {
		t.Errorf("reuses: got %v; want %d: every retry reused the connection", got, failures)
	}
}

// TestRetryableHTTP: conntrace under hashicorp/go-retryablehttp, as the
// transport of its HTTPClient: each attempt is a round trip of its own,
// so a request retried twice is three spans.
func TestRetryableHTTP(t *testing.T) {
	integrated(t, "github.com/hashicorp/go-retryablehttp")
	srv := flaky(t, 2)
	rec := newRecorded(t)
	client := retryablehttp.NewClient()
	client.Logger, client.RetryWaitMin, client.RetryWaitMax = nil, time.Millisecond, 10*time.Millisecond
	// The wiring (README, With other clients):
	client.HTTPClient.Transport = conntrace.NewTransport(client.HTTPClient.Transport, rec.options()...)

	res, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	attempts(t, rec, 2)
}

// TestResty: conntrace under go-resty, as its transport: each retry is a
// span of its own.
func TestResty(t *testing.T) {
	integrated(t, "github.com/go-resty/resty/v2")
	srv := flaky(t, 2)
	rec := newRecorded(t)
	client := resty.New().SetRetryCount(2).SetRetryWaitTime(time.Millisecond).SetRetryMaxWaitTime(10 * time.Millisecond).
		AddRetryCondition(func(r *resty.Response, err error) bool { return r.StatusCode() == http.StatusServiceUnavailable })
	// The wiring (README, With other clients):
	client.SetTransport(conntrace.NewTransport(client.GetClient().Transport, rec.options()...))

	res, err := client.R().Get(srv.URL)
	if err != nil || res.StatusCode() != 200 {
		t.Fatalf("%v, %v", res, err)
	}
	attempts(t, rec, 2)
}

// TestRestyStreamedDownload: a download read as a stream through go-resty
// (SetDoNotParseResponse) and stopped part way: its span ends when the
// caller closes the raw body, not at the download's end, and conntrace
// says the connection was lost (body_not_drained: a body of known length
// left unread is not a stream).
func TestRestyStreamedDownload(t *testing.T) {
	integrated(t, "github.com/go-resty/resty/v2")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", "1048576")
		chunk := make([]byte, 64<<10)
		for range 16 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	rec := newRecorded(t)
	client := resty.New()
	client.SetTransport(conntrace.NewTransport(client.GetClient().Transport, rec.options()...))

	res, err := client.R().SetDoNotParseResponse(true).Get(srv.URL + "/image.tar")
	if err != nil {
		t.Fatal(err)
	}
	body := res.RawBody()
	if _, err := body.Read(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if got := len(rec.clientSpans()); got != 0 {
		t.Fatalf("%d spans ended while the download is being read; want 0", got)
	}
	body.Close() // the caller stops reading
	if got := len(rec.clientSpans()); got != 1 {
		t.Fatalf("%d spans ended after Close; want 1, the download's", got)
	}
	alerts := rec.alerted()
	if len(alerts) != 1 || alerts[0].Detector != detectors.BodyNotDrainedName {
		t.Errorf("alerts %+v; want one body_not_drained", alerts)
	}
}
