package exporters

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Providers are the SDK providers that [New] built, and what it chose.
type Providers struct {
	TracerProvider *sdktrace.TracerProvider
	MeterProvider  *sdkmetric.MeterProvider

	// TracesExporter and MetricsExporter are the exporters in use: the
	// names of OTEL_TRACES_EXPORTER and OTEL_METRICS_EXPORTER ("otlp",
	// "console", "prometheus", "none").
	TracesExporter  string
	MetricsExporter string

	// MetricsAddr is the address the Prometheus exporter serves /metrics
	// on, once bound (so a port of 0 shows the port chosen); empty unless
	// MetricsExporter is "prometheus".
	MetricsAddr string
}

// Shutdown flushes every span and metric still buffered to the exporters,
// then stops them, the Prometheus endpoint included. It returns the
// errors of both providers, joined. Call it once, before the program
// exits; ctx bounds how long it may take.
func (p *Providers) Shutdown(ctx context.Context) error {
	return errors.Join(p.TracerProvider.Shutdown(ctx), p.MeterProvider.Shutdown(ctx))
}

// Setup builds the providers as [New] does and installs them as the
// OpenTelemetry globals, with the W3C trace-context and baggage
// propagators, so that instrumentation using the globals (conntrace's
// default) reports through them. Call the returned shutdown before the
// program exits: it flushes everything. On error nothing was installed and
// shutdown does nothing, so it is always safe to defer.
//
// Tests should call [New] instead and pass the providers explicitly: the
// globals are shared by every test in the binary.
func Setup(ctx context.Context, opts ...Option) (shutdown func(context.Context) error, err error) {
	p, err := New(ctx, opts...)
	if err != nil {
		return func(context.Context) error { return nil }, err
	}
	otel.SetTracerProvider(p.TracerProvider)
	otel.SetMeterProvider(p.MeterProvider)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return p.Shutdown, nil
}

// New builds a TracerProvider and a MeterProvider from the OTEL_*
// environment variables and opts, without touching the globals. Bad input
// (an unknown exporter or protocol, a malformed port) is an error that
// names the variable or option and the valid values; on error everything
// New started is stopped again.
func New(ctx context.Context, opts ...Option) (*Providers, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	res, err := newResource(ctx, c.serviceName)
	if err != nil {
		return nil, err
	}
	p := &Providers{}
	tracesOpts, err := c.tracing(ctx, p)
	if err != nil {
		return nil, err
	}
	p.TracerProvider = sdktrace.NewTracerProvider(append(tracesOpts, sdktrace.WithResource(res))...)
	metricsOpts, err := c.metrics(ctx, p)
	if err != nil {
		return nil, errors.Join(err, p.TracerProvider.Shutdown(ctx))
	}
	p.MeterProvider = sdkmetric.NewMeterProvider(append(metricsOpts, sdkmetric.WithResource(res))...)
	return p, nil
}

// newResource describes the service: service.name (OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES win over the option), the SDK, the host and the
// Go runtime.
func newResource(ctx context.Context, serviceName string) (*resource.Resource, error) {
	if serviceName == "" {
		serviceName = "unknown_service:" + filepath.Base(os.Args[0])
	}
	return resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(serviceName)),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessRuntimeName(),
		resource.WithProcessRuntimeVersion(),
		resource.WithFromEnv(), // last, so that it wins
	)
}

// tracing returns the TracerProvider options for the traces exporter, the
// sampler (OTEL_TRACES_SAMPLER's, keeping conntrace's alert spans) and the
// options' span processors.
func (c *config) tracing(ctx context.Context, p *Providers) ([]sdktrace.TracerProviderOption, error) {
	name, err := exporterName(EnvTracesExporter, c.tracesDefault, tracesExporters)
	if err != nil {
		return nil, err
	}
	p.TracesExporter = name
	sampler, err := samplerFromEnv()
	if err != nil {
		return nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSampler(KeepAlertSpans(sampler))}
	switch name {
	case "otlp":
		if err := checkOTLPProtocol(envOTLPTracesProtocol); err != nil {
			return nil, err
		}
		exp, err := newOTLPSpanExporter(ctx)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	case "console":
		exp, err := stdouttrace.New(stdouttrace.WithWriter(c.console), stdouttrace.WithPrettyPrint())
		if err != nil {
			return nil, err
		}
		// Synchronous: a span is printed as it ends, in order with the
		// program's own output.
		opts = append(opts, sdktrace.WithSyncer(exp))
	}
	for _, sp := range c.spanProcessors {
		opts = append(opts, sdktrace.WithSpanProcessor(sp))
	}
	return opts, nil
}

// metrics returns the MeterProvider options for the metrics exporter, and
// the options' readers.
func (c *config) metrics(ctx context.Context, p *Providers) ([]sdkmetric.Option, error) {
	name, err := exporterName(EnvMetricsExporter, c.metricsDefault, metricsExporters)
	if err != nil {
		return nil, err
	}
	p.MetricsExporter = name
	var opts []sdkmetric.Option
	switch name {
	case "otlp":
		if err := checkOTLPProtocol(envOTLPMetricsProtocol); err != nil {
			return nil, err
		}
		r, err := newOTLPMetricReader(ctx)
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdkmetric.WithReader(r))
	case "prometheus":
		r, err := newPrometheusReader()
		if err != nil {
			return nil, err
		}
		p.MetricsAddr = r.addr
		opts = append(opts, sdkmetric.WithReader(r), sdkmetric.WithView(oneExemplarPerCounter))
	case "console":
		exp, err := stdoutmetric.New(stdoutmetric.WithWriter(c.console), stdoutmetric.WithPrettyPrint())
		if err != nil {
			return nil, err
		}
		opts = append(opts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)))
	}
	for _, r := range c.readers {
		opts = append(opts, sdkmetric.WithReader(r))
	}
	return opts, nil
}
