package exporters

import (
	"errors"
	"fmt"
	"io"
	"os"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Option changes what [New] and [Setup] build. The OTEL_* environment
// variables still win where they are set: options give the defaults and add
// to the pipelines, so an operator can redirect telemetry without a rebuild.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// config is what the options set.
type config struct {
	serviceName    string
	tracesDefault  string
	metricsDefault string
	spanProcessors []sdktrace.SpanProcessor
	readers        []sdkmetric.Reader
	console        io.Writer
	errs           []error
}

func newConfig(opts []Option) (*config, error) {
	c := &config{
		tracesDefault:  "otlp",
		metricsDefault: "otlp",
		console:        os.Stdout,
	}
	for _, o := range opts {
		o.apply(c)
	}
	return c, errors.Join(c.errs...)
}

// WithServiceName sets the service.name resource attribute, unless
// OTEL_SERVICE_NAME or a service.name in OTEL_RESOURCE_ATTRIBUTES sets it.
// Without either, the service is "unknown_service:" and the program's name,
// as the OpenTelemetry specification says.
func WithServiceName(name string) Option {
	return optionFunc(func(c *config) {
		if name == "" {
			c.errs = append(c.errs, errors.New("exporters: WithServiceName: empty service name"))
			return
		}
		c.serviceName = name
	})
}

// WithDefaultTracesExporter sets the traces exporter used when
// OTEL_TRACES_EXPORTER is unset or empty: "otlp" (the default, as in the
// specification), "console" or "none". An unknown name is an error of
// [New].
func WithDefaultTracesExporter(name string) Option {
	return optionFunc(func(c *config) {
		if err := checkName(name, tracesExporters); err != nil {
			c.errs = append(c.errs, fmt.Errorf("exporters: WithDefaultTracesExporter: %w", err))
			return
		}
		c.tracesDefault = name
	})
}

// WithDefaultMetricsExporter sets the metrics exporter used when
// OTEL_METRICS_EXPORTER is unset or empty: "otlp" (the default, as in the
// specification), "prometheus", "console" or "none". An unknown name is an
// error of [New].
func WithDefaultMetricsExporter(name string) Option {
	return optionFunc(func(c *config) {
		if err := checkName(name, metricsExporters); err != nil {
			c.errs = append(c.errs, fmt.Errorf("exporters: WithDefaultMetricsExporter: %w", err))
			return
		}
		c.metricsDefault = name
	})
}

// WithSpanProcessor adds sp to the TracerProvider, next to the exporter's
// processor, whatever OTEL_TRACES_EXPORTER says (even "none"). The
// TracerProvider shuts it down.
func WithSpanProcessor(sp sdktrace.SpanProcessor) Option {
	return optionFunc(func(c *config) {
		if sp == nil {
			c.errs = append(c.errs, errors.New("exporters: WithSpanProcessor: nil SpanProcessor"))
			return
		}
		c.spanProcessors = append(c.spanProcessors, sp)
	})
}

// WithMetricReader adds r to the MeterProvider, next to the exporter's
// reader, whatever OTEL_METRICS_EXPORTER says (even "none"); for example a
// ManualReader that a program or test collects from itself. The
// MeterProvider shuts it down.
func WithMetricReader(r sdkmetric.Reader) Option {
	return optionFunc(func(c *config) {
		if r == nil {
			c.errs = append(c.errs, errors.New("exporters: WithMetricReader: nil Reader"))
			return
		}
		c.readers = append(c.readers, r)
	})
}

// WithConsoleWriter sets where the "console" exporters write: traces as
// indented JSON, one object per span as it ends; metrics as JSON at each
// export interval and at shutdown. The default is os.Stdout. The writer
// must be safe for concurrent use if the program writes to it too.
func WithConsoleWriter(w io.Writer) Option {
	return optionFunc(func(c *config) {
		if w == nil {
			c.errs = append(c.errs, errors.New("exporters: WithConsoleWriter: nil Writer"))
			return
		}
		c.console = w
	})
}
