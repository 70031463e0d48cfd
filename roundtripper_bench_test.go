package conntrace

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// BenchmarkRoundTrip measures one GET over a reused loopback connection,
// through the bare transport and through conntrace, side by side in one run:
//
//	go test -run '^$' -bench RoundTrip -benchmem
//
// The server shares the process, so the figures include its cost too; the
// differences between the variants are conntrace's.
func BenchmarkRoundTrip(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer srv.Close()
	// Sampled, recording spans that no processor keeps: the cost of building
	// them, not of exporting them.
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	unsampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	defer unsampled.Shutdown(context.Background())
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())

	variants := []struct {
		name string
		wrap func(http.RoundTripper) http.RoundTripper
	}{
		{"bare", func(rt http.RoundTripper) http.RoundTripper { return rt }},
		{"conntrace", func(rt http.RoundTripper) http.RoundTripper {
			return NewTransport(rt, WithTracerProvider(tp), WithMeterProvider(mp), WithoutAudit())
		}},
		{"conntrace-unsampled", func(rt http.RoundTripper) http.RoundTripper {
			return NewTransport(rt, WithTracerProvider(unsampled), WithMeterProvider(mp), WithoutAudit())
		}},
		{"conntrace-metrics-only", func(rt http.RoundTripper) http.RoundTripper {
			return NewTransport(rt, WithoutSpans(), WithMeterProvider(mp), WithoutAudit())
		}},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			base := &http.Transport{}
			defer base.CloseIdleConnections()
			rt := v.wrap(base)
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			b.ReportAllocs()
			for b.Loop() {
				res, err := rt.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
		})
	}
}
