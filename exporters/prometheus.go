package exporters

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
)

// prometheusReader is the OTel Prometheus exporter and the HTTP server that
// serves its /metrics. autoexport builds the same pair, but hides the
// address it bound and can only be asked for it through
// OTEL_METRICS_EXPORTER; building it here gives [Providers.MetricsAddr]
// and lets [WithDefaultMetricsExporter] choose "prometheus".
type prometheusReader struct {
	sdkmetric.Reader
	server *http.Server
	addr   string
}

func newPrometheusReader() (*prometheusReader, error) {
	addr, err := prometheusAddr()
	if err != nil {
		return nil, err
	}
	// Its own registry, not the global one: only OTel's metrics, and no
	// clash between two providers in one process.
	reg := prometheus.NewRegistry()
	exp, err := promexporter.New(promexporter.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, errors.Join(
			fmt.Errorf("exporters: Prometheus exporter: listening on %s (%s, %s): %w", addr, EnvPrometheusHost, EnvPrometheusPort, err),
			exp.Shutdown(context.Background()))
	}
	mux := http.NewServeMux()
	// OpenMetrics, when the scraper asks for it (Prometheus does, first),
	// is the only exposition format that carries exemplars: the trace IDs
	// that lead from a counter to the trace of an alert.
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, EnableOpenMetrics: true}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			otel.Handle(fmt.Errorf("exporters: Prometheus endpoint on %s stopped: %w", ln.Addr(), err))
		}
	}()
	return &prometheusReader{Reader: exp, server: srv, addr: ln.Addr().String()}, nil
}

// oneExemplarPerCounter makes every counter keep one exemplar per series
// (a trace ID from its latest collection cycle with a measurement in a
// sampled span) instead of the SDK's default of GOMAXPROCS. A Prometheus
// counter carries one exemplar, and the Prometheus client serves the last
// the reservoir holds; the default reservoir refills from its first slot
// after each collection, so its last slot would keep serving a trace from
// an old burst of alerts while the new alert's trace never reaches
// Prometheus. Views are the MeterProvider's, so a reader added with
// WithMetricReader sees the same.
var oneExemplarPerCounter = sdkmetric.NewView(
	sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindCounter},
	sdkmetric.Stream{ExemplarReservoirProviderSelector: func(sdkmetric.Aggregation) exemplar.ReservoirProvider {
		return exemplar.FixedSizeReservoirProvider(1)
	}},
)

// Shutdown stops the exporter and the server; a scrape in progress may
// finish within ctx.
func (r *prometheusReader) Shutdown(ctx context.Context) error {
	return errors.Join(r.Reader.Shutdown(ctx), r.server.Shutdown(ctx))
}
