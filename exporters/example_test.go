package exporters_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/exporters"
	"github.com/conntrace/conntrace/vocab"
)

// A program sets up the SDK from the OTEL_* variables in two lines, and
// conntrace reports through the globals Setup installs. Run it with, for
// example, OTEL_TRACES_EXPORTER=otlp OTEL_METRICS_EXPORTER=prometheus.
func ExampleSetup() {
	ctx := context.Background()
	shutdown, err := exporters.Setup(ctx, exporters.WithServiceName("checkout"))
	if err != nil {
		log.Fatal(err) // names the variable and its valid values
	}
	defer shutdown(context.Background()) // flushes every span and metric

	client := &http.Client{Transport: conntrace.NewTransport(nil,
		conntrace.WithNATIdleTimeout(350*time.Second))}
	_ = client
}

// New returns the providers instead of installing them, to be passed to
// conntrace; tests use it so that they share no globals. Here, with no
// OTEL_* variable set, nothing is exported, and a reader of the program's
// own collects what conntrace measured.
func ExampleNew() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer srv.Close()
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	p, err := exporters.New(ctx,
		exporters.WithServiceName("checkout"),
		exporters.WithDefaultTracesExporter("none"), // unless OTEL_TRACES_EXPORTER says otherwise
		exporters.WithDefaultMetricsExporter("none"),
		exporters.WithMetricReader(reader))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Shutdown(ctx)
	fmt.Println("traces:", p.TracesExporter, "metrics:", p.MetricsExporter)

	base := http.DefaultTransport.(*http.Transport).Clone()
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: conntrace.NewTransport(base,
		conntrace.WithTracerProvider(p.TracerProvider), conntrace.WithMeterProvider(p.MeterProvider))}
	res, err := client.Get(srv.URL)
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch data := m.Data.(type) {
			case metricdata.Histogram[float64]:
				if m.Name == "http.client.request.duration" {
					fmt.Println(m.Name, "count:", data.DataPoints[0].Count)
				}
			case metricdata.Gauge[float64]:
				if m.Name == vocab.MetricConfigNATIdleTimeout {
					fmt.Println(m.Name, "=", data.DataPoints[0].Value)
				}
			}
		}
	}
	// Unordered output:
	// traces: none metrics: none
	// http.client.request.duration count: 1
	// conntrace.config.nat_idle_timeout = 350
}
