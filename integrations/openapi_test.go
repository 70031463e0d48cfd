package integrations

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/go-openapi/runtime"
	httptransport "github.com/go-openapi/runtime/client"
	"github.com/go-openapi/strfmt"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
)

// TestOpenAPIRuntime: conntrace in a go-openapi (go-swagger) client, as
// Runtime.Transport, set before EnableConnectionReuse. Its JSON consumer
// stops at the end of the value, leaving a chunked body's last chunk
// unread; EnableConnectionReuse wraps Runtime.Transport in a transport
// that drains the body on Close. With conntrace inside it, conntrace sees
// the body read to EOF and the connection reused, and raises nothing. Set
// after, conntrace would be outside the drain, see a body closed early,
// and raise body_not_drained for a connection that is in fact kept.
func TestOpenAPIRuntime(t *testing.T) {
	integrated(t, "github.com/go-openapi/runtime")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"id": 1, "name": "rex"})
		w.(http.Flusher).Flush()          // chunked: the terminating chunk comes after the value,
		time.Sleep(50 * time.Millisecond) // late enough that the consumer has stopped reading
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)

	submit := func(t *testing.T, rt *httptransport.Runtime) {
		t.Helper()
		for range 2 {
			got, err := rt.Submit(&runtime.ClientOperation{
				ID: "getPet", Method: http.MethodGet, PathPattern: "/pets/1",
				ProducesMediaTypes: []string{"application/json"}, ConsumesMediaTypes: []string{"application/json"},
				Schemes: []string{"http"},
				Params:  runtime.ClientRequestWriterFunc(func(runtime.ClientRequest, strfmt.Registry) error { return nil }),
				Reader: runtime.ClientResponseReaderFunc(func(res runtime.ClientResponse, c runtime.Consumer) (any, error) {
					var pet map[string]any
					err := c.Consume(res.Body(), &pet)
					return pet, err
				}),
				Context: t.Context(),
			})
			if err != nil || got.(map[string]any)["name"] != "rex" {
				t.Fatalf("submit: %v, %v", got, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	t.Run("inside EnableConnectionReuse", func(t *testing.T) {
		rec := newRecorded(t)
		rt := httptransport.New(u.Host, "/", []string{"http"})
		// The wiring (README, With other clients):
		rt.Transport = conntrace.NewTransport(rt.Transport, rec.options()...)
		rt.EnableConnectionReuse()
		submit(t, rt)
		reusedOnce(t, rec)
		if a := rec.alerted(); len(a) != 0 {
			t.Errorf("alerts %+v; want none: the drain read every body to EOF", a)
		}
	})

	t.Run("outside EnableConnectionReuse", func(t *testing.T) {
		rec := newRecorded(t)
		rt := httptransport.New(u.Host, "/", []string{"http"})
		rt.EnableConnectionReuse()
		rt.Transport = conntrace.NewTransport(rt.Transport, rec.options()...) // the wrong order
		submit(t, rt)
		reusedOnce(t, rec) // the drain keeps the connection...
		found := false
		for _, a := range rec.alerted() {
			found = found || a.Detector == detectors.BodyNotDrainedName
		}
		if !found {
			t.Errorf("no body_not_drained: conntrace outside the drain should see the body closed before EOF; if it no longer does, the README's order note is stale")
		}
	})
}
