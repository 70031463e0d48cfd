package conntrace

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/vocab"
)

// TestBodyNotDrainedStreamStopped: each side of the line between a stream
// and a body left undrained, through a real server. A Server-Sent Events
// feed stopped after three events, and a Kubernetes-style watch (plain
// application/json, "watch=true") stopped after one event, end as streams
// do: no alert, no log, nothing in conntrace.alerts, the connection
// counted not reused as stream_closed. A JSON document decoded and closed
// with its terminating chunk unread is still body_not_drained: the pool
// lost a connection for nothing.
func TestBodyNotDrainedStreamStopped(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/events":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; ; i++ {
				if _, err := fmt.Fprintf(w, "id: %d\ndata: tick %d\n\n", i, i); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				if i >= 3 {
					<-r.Context().Done() // the feed goes on until the client leaves
					return
				}
			}
		case "/api/v1/pods":
			if r.URL.Query().Get("watch") != "true" {
				http.Error(w, "list not served", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"type": "ADDED", "object": map[string]string{"kind": "Pod"}})
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case "/doc":
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
			w.(http.Flusher).Flush() // chunked: the terminating chunk comes after the value
			<-r.Context().Done()
		}
	})
	tests := []struct {
		name   string
		path   string
		read   func(t *testing.T, br *bufio.Reader)
		stream bool
	}{
		{"sse stopped after 3 events", "/events", func(t *testing.T, br *bufio.Reader) {
			for n := 0; n < 3; {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				if strings.HasPrefix(line, "data: ") {
					n++
				}
			}
		}, true},
		{"watch stopped", "/api/v1/pods?watch=true&resourceVersion=1", func(t *testing.T, br *bufio.Reader) {
			var ev map[string]any
			if err := json.NewDecoder(br).Decode(&ev); err != nil || ev["type"] != "ADDED" {
				t.Fatalf("watch event: %v, %v", ev, err)
			}
		}, true},
		{"json decoded, bytes left", "/doc", func(t *testing.T, br *bufio.Reader) {
			var v map[string]string
			if err := json.NewDecoder(br).Decode(&v); err != nil || v["status"] != "ok" {
				t.Fatalf("decode: %v, %v", v, err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			client, _ := newClient(t, tel.options()...)
			res, err := client.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			tt.read(t, bufio.NewReader(res.Body))
			res.Body.Close()

			points := tel.Collect(t)
			alerts := tel.handledBy(detectors.BodyNotDrainedName)
			counted := points.Total(vocab.MetricAlerts, vocab.AttrDetector.String(detectors.BodyNotDrainedName))
			logged := strings.Contains(tel.logs.String(), "detector=body_not_drained")
			if tt.stream {
				if len(alerts) != 0 || counted != 0 || logged {
					t.Errorf("a stream stopped by its reader: got %d alerts, %v counted, logged %v; want none: %+v", len(alerts), counted, logged, alerts)
				}
				if got := points.Total(vocab.MetricNotReused, vocab.AttrReason.String(vocab.ReasonStreamClosed)); got != 1 {
					t.Errorf("%s{stream_closed}: got %v; want 1", vocab.MetricNotReused, got)
				}
				if span := tel.Spans.Ended(); len(span) != 1 {
					t.Errorf("%d spans ended; want the request's, ended when the reader stopped", len(span))
				}
				return
			}
			if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeClosedEarly || counted != 1 || !logged {
				t.Errorf("an undrained document: got alerts %+v, %v counted, logged %v; want one closed_early, counted and logged", alerts, counted, logged)
			}
			if got := points.Total(vocab.MetricNotReused, vocab.AttrReason.String(vocab.ReasonBodyNotDrained)); got != 1 {
				t.Errorf("%s{body_not_drained}: got %v; want 1", vocab.MetricNotReused, got)
			}
		})
	}
}
