package conntrace

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/propagation"
)

// trailerBody is a request body that fills the request's trailer when it
// reaches EOF, as a caller computing a checksum while it streams does.
type trailerBody struct {
	r    io.Reader
	done func()
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && b.done != nil {
		b.done()
		b.done = nil
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

// TestRequestTrailer: trailer values the caller sets while the body is being
// read reach the server, as they do through the bare transport. RoundTrip
// must not send a snapshot of req.Trailer taken before the body was read.
func TestRequestTrailer(t *testing.T) {
	var got atomic.Value
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got.Store(r.Trailer.Get("X-Checksum"))
	})
	tests := []struct {
		name string
		rt   func(t *testing.T, base *http.Transport) http.RoundTripper
	}{
		{"bare", func(_ *testing.T, base *http.Transport) http.RoundTripper { return base }},
		{"own span", func(t *testing.T, base *http.Transport) http.RoundTripper {
			return NewTransport(base, newTelemetry(t).options()...)
		}},
		{"propagating", func(t *testing.T, base *http.Transport) http.RoundTripper {
			return NewTransport(base, newTelemetry(t).options(WithPropagators(propagation.TraceContext{}))...)
		}},
		{"WithoutSpans", func(t *testing.T, base *http.Transport) http.RoundTripper {
			return NewTransport(base, newTelemetry(t).options(WithoutSpans())...)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got.Store("")
			base := &http.Transport{}
			defer base.CloseIdleConnections()
			client := &http.Client{Transport: tt.rt(t, base)}
			req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
			req.Trailer = http.Header{"X-Checksum": nil} // declared up front, filled at EOF
			req.Body = &trailerBody{r: strings.NewReader("payload"), done: func() { req.Trailer.Set("X-Checksum", "c0ffee") }}
			req.ContentLength = -1
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if v, _ := got.Load().(string); v != "c0ffee" {
				t.Errorf("server saw trailer X-Checksum %q; want %q", v, "c0ffee")
			}
		})
	}
}
