// Package exporters sets up the OpenTelemetry SDK for a program that uses
// conntrace: a TracerProvider and a MeterProvider, with exporters chosen by
// the standard OTEL_* environment variables. The conntrace package itself
// imports the OpenTelemetry API only; this package is where the SDK and the
// exporters live, for applications that want them in two lines:
//
//	shutdown, err := exporters.Setup(ctx, exporters.WithServiceName("checkout"))
//	if err != nil { ... }
//	defer shutdown(context.Background()) // flushes every span and metric
//
// [Setup] installs the providers as the OpenTelemetry globals, which
// conntrace.NewTransport uses by default. [New] returns them instead, to be
// passed with conntrace.WithTracerProvider and conntrace.WithMeterProvider;
// tests should use New, so that they never share globals.
//
// # Environment variables
//
// OTEL_TRACES_EXPORTER (one name; default "otlp", or [WithDefaultTracesExporter]):
//   - otlp: OTLP, batched, to OTEL_EXPORTER_OTLP_ENDPOINT through the
//     contrib autoexport package. Without an endpoint (or _INSECURE)
//     variable it goes to the specification's default, a local receiver
//     without TLS: http://localhost:4318, or localhost:4317 for grpc (the
//     Go exporters alone would use TLS there, which a local Jaeger or
//     collector does not serve by default).
//   - console: stdouttrace, each span as indented JSON as it ends, to
//     stdout or [WithConsoleWriter].
//   - none: no exporter.
//
// OTEL_METRICS_EXPORTER (one name; default "otlp", or [WithDefaultMetricsExporter]):
//   - otlp: OTLP as for traces, every OTEL_METRIC_EXPORT_INTERVAL
//     milliseconds (default 60000) and at shutdown.
//   - prometheus: the OpenTelemetry Prometheus exporter, serving /metrics
//     on OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT
//     (default localhost:9464; port 0 picks a free one, see
//     [Providers.MetricsAddr]). A scraper that accepts OpenMetrics, as
//     Prometheus does, gets it, with exemplars: a counter incremented in a
//     sampled span's context carries that span's trace and span IDs, so
//     conntrace_stale_reuses_total leads to the trace of the hang. Each
//     counter keeps one exemplar per series, from the latest scrape
//     interval that had one, since a Prometheus counter shows one.
//   - console: stdoutmetric, as indented JSON at each export interval and
//     at shutdown.
//   - none: no exporter.
//
// OTEL_EXPORTER_OTLP_PROTOCOL, or per signal OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
// and OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: "http/protobuf" (default) or
// "grpc". The OTLP exporters also read OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT and their
// per-signal forms.
//
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES describe the service; they
// win over [WithServiceName]. The resource also carries telemetry.sdk.*,
// host.name and the Go runtime.
//
// OTEL_TRACES_SAMPLER (default parentbased_always_on) and
// OTEL_TRACES_SAMPLER_ARG: always_on, always_off, traceidratio,
// parentbased_always_on, parentbased_always_off or
// parentbased_traceidratio, with the ratio (0 to 1, default 1) in the
// argument, read as the SDK reads them; New wraps the sampler in
// [KeepAlertSpans], so that the spans conntrace starts to hold an alert are
// sampled whatever the ratio. For 1 % of traces and every alert:
//
//	OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01
//
// The SDK itself reads the batch span processor's OTEL_BSP_*, the span
// limits and the exemplar filter (OTEL_METRICS_EXEMPLAR_FILTER, default
// trace_based: a measurement made in a sampled span's context carries its
// trace ID).
//
// An unknown exporter, protocol or sampler, a port that is not a number or
// a ratio outside 0 to 1, is an error of New and Setup that names the
// variable and the valid values, for example:
//
//	exporters: OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'; valid: otlp, console, none
//
// # Options
//
// Options set defaults and add to what the environment chose; where an
// OTEL_* variable is set, it wins, so an operator can redirect telemetry
// without a rebuild. [WithSpanProcessor] and [WithMetricReader] add a
// processor or reader of the program's own next to the exporter's.
//
// # Alert rules
//
// The directory exporters/prometheus holds Prometheus alerting rules for
// conntrace's metrics (alerts.yml), the fleet view of each path's idle
// timeout (fleet.yml: recording rules that combine every instance's
// learned bracket, and an alert when a setting outlives it) and their
// promtool unit tests:
//
//	promtool test rules exporters/prometheus/alerts_test.yml exporters/prometheus/fleet_test.yml
package exporters
