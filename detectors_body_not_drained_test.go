package conntrace

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/codes"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// bodyServer answers /big with 64 KiB of known length, /json with a JSON
// value in chunks (no Content-Length), /stream with the same but ending
// only when the client goes away, /nocontent with 204,
// /notmodified with 304, and /close with a body and Connection: close.
func bodyServer(t *testing.T) *httptest.Server {
	return newServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", "65536")
			io.WriteString(w, strings.Repeat("x", 65536))
		case "/json", "/stream":
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
			w.(http.Flusher).Flush() // chunked: the terminating chunk comes after the value
			if r.URL.Path == "/stream" {
				// A stream that ends later: the client cannot have seen its
				// end when it closes the body.
				<-r.Context().Done()
			}
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
		case "/notmodified":
			w.WriteHeader(http.StatusNotModified)
		case "/close":
			w.Header().Set("Connection", "close")
			io.WriteString(w, strings.Repeat("x", 4096))
		default:
			http.NotFound(w, r)
		}
	})
}

// TestBodyNotDrained reproduces both common ways to lose a connection:
// closing a body after reading part of it, and closing after a
// json.Decoder has read the value but not the end of the chunked body. Each
// time net/http closes the connection, the next request dials, and the
// alert says so; the request itself is not an error.
func TestBodyNotDrained(t *testing.T) {
	srv := bodyServer(t)
	tests := []struct {
		name   string
		path   string
		use    func(t *testing.T, res *http.Response)
		phrase string
	}{
		{"partial read", "/big", func(t *testing.T, res *http.Response) {
			res.Body.Read(make([]byte, 10))
		}, "of its 65536 bytes"},
		{"json.Decoder", "/stream", func(t *testing.T, res *http.Response) {
			var v map[string]string
			if err := json.NewDecoder(res.Body).Decode(&v); err != nil || v["status"] != "ok" {
				t.Fatalf("decode: %v, %v", v, err)
			}
		}, "bytes of it"},
		{"unread", "/big", func(t *testing.T, res *http.Response) {}, "without reading any of it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			client, _ := newClient(t, tel.options()...)
			res, err := client.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			tt.use(t, res)
			res.Body.Close()
			testkit.Get(t, client, srv.URL+"/big") // must dial again

			alerts := tel.handledBy(detectors.BodyNotDrainedName)
			if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeClosedEarly {
				t.Fatalf("got alerts %+v; want one body_not_drained", tel.handled())
			}
			t.Logf("alert: %s\nadvice: %s", alerts[0].Message, alerts[0].Advice)
			if !strings.Contains(alerts[0].Message, tt.phrase) || !strings.Contains(alerts[0].Message, "GET 127.0.0.1:") {
				t.Errorf("message lacks %q: %s", tt.phrase, alerts[0].Message)
			}
			points := tel.Collect(t)
			if got := points.Total(vocab.MetricNotReused, vocab.AttrReason.String(vocab.ReasonBodyNotDrained)); got != 1 {
				t.Errorf("%s{body_not_drained}: got %v; want 1", vocab.MetricNotReused, got)
			}
			if got := points.Total(vocab.MetricDials); got != 2 {
				t.Errorf("%s: got %v; want 2: the discarded connection is not reused", vocab.MetricDials, got)
			}
			if got := points.Total(vocab.MetricAlerts, vocab.AttrDetector.String(detectors.BodyNotDrainedName)); got != 1 {
				t.Errorf("%s{body_not_drained}: got %v; want 1", vocab.MetricAlerts, got)
			}
			span := tel.Spans.Ended()[0]
			if ev, ok := testkit.Event(span, vocab.EventAlert); !ok || !testkit.HasAll(ev, vocab.AttrDetector.String(detectors.BodyNotDrainedName)) {
				t.Errorf("span lacks the body_not_drained alert event: %q", testkit.EventNames(span))
			}
			if span.Status().Code == codes.Error {
				t.Errorf("span status Error; an undrained body is not a failed request")
			}
			if !strings.Contains(tel.logs.String(), "detector=body_not_drained") {
				t.Errorf("alert not logged: %s", tel.logs.String())
			}
		})
	}
}

// TestBodyNotDrainedQuiet: bodies read to EOF, HEAD, 204 and 304 (whose
// bodies net/http never hands out) keep one connection in use for every
// request, and nothing is raised or counted.
func TestBodyNotDrainedQuiet(t *testing.T) {
	srv := bodyServer(t)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	testkit.Get(t, client, srv.URL+"/big")
	testkit.Get(t, client, srv.URL+"/json")
	for _, path := range []string{"/nocontent", "/notmodified"} {
		res, err := client.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close() // nothing read: there is nothing to read
	}
	res, err := client.Head(srv.URL + "/big")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	// Read exactly Content-Length bytes: net/http returns EOF with the last
	// of them, so the connection is pooled though Read never saw (0, EOF).
	res, err = client.Get(srv.URL + "/big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(res.Body, make([]byte, 65536)); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	testkit.Get(t, client, srv.URL+"/big")

	points := tel.Collect(t)
	if got := points.Total(vocab.MetricDials); got != 1 {
		t.Errorf("%s: got %v; want 1: every request reused the first connection", vocab.MetricDials, got)
	}
	if got := points.Total(vocab.MetricNotReused) + points.Total(vocab.MetricAlerts); got != 0 {
		t.Errorf("not reused + alerts: got %v; want 0", got)
	}
	if got := len(tel.handled()); got != 0 {
		t.Errorf("got alerts %+v; want none", tel.handled())
	}
}

// TestBodyNotDrainedConnectionClose: when the server closes the connection
// anyway, closing the body early loses nothing, so nothing is raised; the
// connection is counted as not reused for connection_close.
func TestBodyNotDrainedConnectionClose(t *testing.T) {
	srv := bodyServer(t)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	res, err := client.Get(srv.URL + "/close")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Read(make([]byte, 10))
	res.Body.Close()
	points := tel.Collect(t)
	if got := points.Total(vocab.MetricNotReused, vocab.AttrReason.String(vocab.ReasonConnectionClose)); got != 1 {
		t.Errorf("%s{connection_close}: got %v; want 1", vocab.MetricNotReused, got)
	}
	if got := len(tel.handledBy(detectors.BodyNotDrainedName)); got != 0 {
		t.Errorf("got %d body_not_drained alerts; want 0", got)
	}
}

// TestBodyNotDrainedHTTP2: closing an HTTP/2 body early resets one stream;
// the connection stays and is reused, and nothing is raised.
func TestBodyNotDrainedHTTP2(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, strings.Repeat("x", 65536))
	}))
	startServer(t, srv, true)
	tel := newTelemetry(t)
	base := srv.Client().Transport.(*http.Transport)
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: NewTransport(base, tel.options()...)}
	for range 2 {
		res, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if res.ProtoMajor != 2 {
			t.Fatalf("protocol %s; want HTTP/2", res.Proto)
		}
		res.Body.Read(make([]byte, 10))
		res.Body.Close()
	}
	points := tel.Collect(t)
	if got := points.Total(vocab.MetricDials); got != 1 {
		t.Errorf("%s: got %v; want 1", vocab.MetricDials, got)
	}
	if got := points.Total(vocab.MetricNotReused) + float64(len(tel.handledBy(detectors.BodyNotDrainedName))); got != 0 {
		t.Errorf("not reused + body_not_drained alerts: got %v; want 0", got)
	}
}
