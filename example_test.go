package conntrace_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/net/http2"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/vocab"
)

// Wrap the transport a client already has. With no providers given,
// conntrace reports to the global OpenTelemetry providers.
func ExampleNewTransport() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer srv.Close()

	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	client.Transport = conntrace.NewTransport(client.Transport,
		conntrace.WithNATIdleTimeout(350*time.Second)) // AWS NAT Gateway

	res, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	client.CloseIdleConnections()
	fmt.Println(string(body))
	// Output: hello
}

// Stacked under otelhttp, conntrace makes no span of its own: it adds its
// connection events to otelhttp's client span, and the moments of the
// write and the first response byte as its attributes. Put conntrace
// inside.
func ExampleNewTransport_otelhttp() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer srv.Close()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))

	base := http.DefaultTransport.(*http.Transport).Clone()
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: otelhttp.NewTransport(
		conntrace.NewTransport(base, conntrace.WithTracerProvider(tp)),
		otelhttp.WithTracerProvider(tp))}

	res, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()

	for _, s := range spans.Ended() {
		var events []string
		for _, e := range s.Events() {
			if e.Name != vocab.EventPutIdleConn { // comes as the span ends, or after
				events = append(events, e.Name)
			}
		}
		fmt.Printf("%s (%s):\n  %s\n", s.Name(), s.InstrumentationScope().Name, strings.Join(events, "\n  "))
		for _, kv := range s.Attributes() {
			if strings.HasPrefix(string(kv.Key), "conntrace.") {
				fmt.Printf("  attribute %s\n", kv.Key) // seconds from the span's start
			}
		}
	}
	// Output:
	// HTTP GET (go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp):
	//   conntrace.connect.start
	//   conntrace.connect.done
	//   conntrace.got_conn
	//   attribute conntrace.request.wrote_at
	//   attribute conntrace.response.first_byte_at
}

// An AlertHandler receives every alert of level WARN and above that passes
// the rate limit, here the body_not_drained alert of a body closed before
// EOF: net/http closed its connection instead of pooling it.
func ExampleWithAlertHandler() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, strings.Repeat("x", 64<<10))
	}))
	defer srv.Close()

	base := http.DefaultTransport.(*http.Transport).Clone()
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: conntrace.NewTransport(base,
		conntrace.WithLogger(slog.New(slog.DiscardHandler)), // the handler alone reports here
		conntrace.WithAlertHandler(func(_ context.Context, a detectors.Alert) {
			fmt.Printf("%s/%s (%s)\n%s\n", a.Detector, a.Outcome, a.Level, a.Advice)
		}))}

	res, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	res.Body.Close() // before EOF: the connection is lost
	// Output:
	// body_not_drained/closed_early (WARN)
	// Read the body to EOF before closing it: io.Copy(io.Discard, res.Body), then res.Body.Close(). A json.Decoder stops at the end of the value and leaves the rest unread, so drain after Decode too. If the rest may be large, drain a bounded amount (io.CopyN(io.Discard, res.Body, 64<<10)): past that, closing and dialling again is the cheaper choice.
}

// WrapDialContext lets conntrace see connections open and close, for the
// semconv metrics http.client.open_connections and
// http.client.connection.duration. Wrap the dialer of a transport you
// build, before its first request.
func ExampleTransport_WrapDialContext() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer srv.Close()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))

	base := &http.Transport{ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second}
	ct := conntrace.NewTransport(base, conntrace.WithMeterProvider(mp))
	base.DialContext = ct.WrapDialContext((&net.Dialer{Timeout: 30 * time.Second}).DialContext)
	client := &http.Client{Transport: ct}

	res, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	printConnections(reader, "after the request")
	client.CloseIdleConnections()
	printConnections(reader, "after CloseIdleConnections")
	// Output:
	// after the request: open_connections active=0 idle=1; connection.duration count=0
	// after CloseIdleConnections: open_connections active=0 idle=0; connection.duration count=1
}

// printConnections prints the two connection-lifetime metrics.
func printConnections(reader *sdkmetric.ManualReader, when string) {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		fmt.Println(err)
		return
	}
	open := map[string]int64{}
	var closed uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name == "http.client.open_connections" {
					for _, dp := range data.DataPoints {
						state, _ := dp.Attributes.Value("http.connection.state")
						open[state.AsString()] += dp.Value
					}
				}
			case metricdata.Histogram[float64]:
				if m.Name == "http.client.connection.duration" {
					for _, dp := range data.DataPoints {
						closed += dp.Count
					}
				}
			}
		}
	}
	fmt.Printf("%s: open_connections active=%d idle=%d; connection.duration count=%d\n", when, open["active"], open["idle"], closed)
}

// The cure, for a transport you build: close a connection the kernel shows
// dead, so that net/http resends a replayable request at once and fails
// the others fast, and keep TCP keep-alive below the path's idle timeout
// on the connections conntrace dials. Both are off by default.
func ExampleWithCloseDeadConnections() {
	base := &http.Transport{ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second}
	ct := conntrace.NewTransport(base,
		conntrace.WithNATIdleTimeout(350*time.Second),
		conntrace.WithCloseDeadConnections(),
		conntrace.WithNATKeepAlive()) // acts on the connections of WrapDialContext
	base.DialContext = ct.WrapDialContext((&net.Dialer{Timeout: 30 * time.Second}).DialContext)
	client := &http.Client{Transport: ct}

	req, _ := http.NewRequest(http.MethodPost, "https://api.example.com/orders", strings.NewReader("order=1"))
	res, err := client.Do(req)
	if errors.Is(err, conntrace.ErrDeadConnection) {
		// The POST was not resent: the error says what the kernel saw.
		log.Printf("not sent: %v", err)
		return
	}
	if err == nil {
		res.Body.Close()
	}
}

// CountHTTP2Errors counts golang.org/x/net/http2's transport errors, lost
// health-check pings among them, chaining the hook already there.
// net/http's own HTTP/2 client does not call CountError (Go 1.26).
func ExampleTransport_CountHTTP2Errors() {
	base := &http.Transport{ForceAttemptHTTP2: true}
	ct := conntrace.NewTransport(base)
	t2, err := http2.ConfigureTransports(base)
	if err != nil {
		log.Fatal(err)
	}
	t2.ReadIdleTimeout = 30 * time.Second // the health check
	t2.CountError = ct.CountHTTP2Errors(t2.CountError)
	_ = &http.Client{Transport: ct}
}

// otelhttp's controls, by the same names: health checks stay out of the
// traces (their connections' facts and alerts still count), spans are
// named after the route, and a Labeler adds the caller's attribute to
// http.client.request.duration.
func ExampleWithFilter() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))

	base := http.DefaultTransport.(*http.Transport).Clone()
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: conntrace.NewTransport(base,
		conntrace.WithTracerProvider(tp),
		conntrace.WithFilter(func(r *http.Request) bool { return r.URL.Path != "/healthz" }),
		conntrace.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }))}

	labeler := &conntrace.Labeler{}
	labeler.Add(attribute.String("tenant", "acme"))
	ctx := conntrace.ContextWithLabeler(context.Background(), labeler)
	for _, path := range []string{"/healthz", "/orders"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		res, err := client.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	for _, s := range spans.Ended() {
		fmt.Println(s.Name())
	}
	// Output:
	// GET /orders
}
