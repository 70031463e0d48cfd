// Package exporters sets up the OpenTelemetry SDK for a program that uses
// conntrace: a TracerProvider and a MeterProvider, with exporters chosen by
// the standard OTEL_* environment variables. The conntrace package itself
// imports the OpenTelemetry API only; this package is where the SDK and the
// exporters live, for applications that want them in two lines (see the
// Setup example).
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
//     [Providers.MetricsAddr]). See Prometheus below.
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
// win over [WithServiceName]. Without either, the service is
// "unknown_service:" and the program's name. The resource also carries
// telemetry.sdk.*, host.name and the Go runtime.
//
// OTEL_TRACES_SAMPLER (default parentbased_always_on) and
// OTEL_TRACES_SAMPLER_ARG: always_on, always_off, traceidratio,
// parentbased_always_on, parentbased_always_off or
// parentbased_traceidratio, with the ratio (0 to 1, default 1) in the
// argument, read as the SDK reads them. New wraps the sampler in
// [KeepAlertSpans], so that the spans conntrace starts to hold an alert
// raised on an unsampled request are sampled whatever the ratio: at 1 %
// (parentbased_traceidratio and 0.01) the trace of a hang would otherwise
// be lost 99 times in 100. A program that builds its own TracerProvider
// wraps its sampler the same way (see the KeepAlertSpans example).
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
// # Jaeger
//
// With OTEL_TRACES_EXPORTER=otlp the traces go to any OTLP receiver, a
// Jaeger v2 among them (OTLP/HTTP on :4318, its API on :16686). Each
// request is one span named after its method; a hang shows as a
// conntrace.got_conn event (reused, idle), conntrace.wrote_request, then
// conntrace.alert with outcome hang and the advice, while the request
// still waits, and no conntrace.first_response_byte. The span's own tags,
// which Jaeger shows before its events, give the verdict:
// conntrace.detector=stale_reuse, conntrace.outcome=hang,
// conntrace.alert.summary, and otel.status_description leading with that
// summary, then the error. A program that samples sees, for an unsampled
// request, the alert span instead: a trace of its own named after the
// alert ("stale_reuse/hang GET"), with the same tags, linked
// (FOLLOWS_FROM) to the request's trace, holding the request's timeline up
// to the alert.
//
// # Prometheus
//
// With OTEL_METRICS_EXPORTER=prometheus, conntrace's metrics are served as
// the OpenTelemetry Prometheus exporter names them (conntrace.stale_reuses
// is conntrace_stale_reuses_total, with labels conntrace_outcome,
// server_address, server_port; package vocab lists every name). A scraper
// that accepts OpenMetrics, as Prometheus does, gets it, with exemplars: a
// counter incremented in a sampled span's context carries that span's
// trace and span IDs, one exemplar per series, from the latest scrape
// interval that had one. Prometheus keeps them with
// --enable-feature=exemplar-storage and serves them at
// /api/v1/query_exemplars. On Prometheus 2.x, histogram buckets scraped as
// OpenMetrics are labelled le="5.0", not le="5" (Prometheus 3 normalises
// both).
//
// The directory exporters/prometheus holds rules to load next to each
// other, each with its promtool unit tests (alerts_test.yml,
// fleet_test.yml; promtool test rules runs them):
//
//	alert                                 fires when                                                            severity
//	ConntraceStaleReuseHang               a request hung or failed on a connection idle past the NAT idle       critical
//	                                      timeout (conntrace_stale_reuses_total{conntrace_outcome=~"hang|failed"}
//	                                      rose, or appeared, in the last 10 min)
//	ConntraceBodyNotDrained               more than 5 bodies per 10 min closed before EOF, for 10 min           warning
//	ConntracePoolOverflow                 more than 10 connections per 10 min refused by a full idle pool       warning
//	                                      while more than 10 new ones were dialled, for 10 min
//	ConntracePathIdleTimeoutBelowConfig   the fleet's upper bound of a path's idle timeout is at or below the   warning
//	                                      IdleConnTimeout (0 always counts) or the NAT idle timeout an
//	                                      instance of the job reports, for 5 min (fleet.yml)
//
// The first three are in alerts.yml; each alert's summary and description
// name the server, what happened and the setting to change. A counter's
// series appears only when it is first incremented, already at 1, and
// Prometheus 2.x's increase() then sees no increase, so the stale-reuse
// rule also fires on a hang or failure series that appeared after
// Prometheus began scraping its target.
//
// fleet.yml adds up the evidence of every instance of a job, per server:
// job_server:conntrace_path_idle_timeout_seconds:bracket keeps the largest
// lower bound and the smallest upper bound of conntrace_path_idle_timeout_seconds.
// A lower bound alone says connections idle that long survived, and
// nothing needs to change. An upper bound says the path forgets idle
// connections after at most that long: keep IdleConnTimeout and the
// keep-alive idle below the lower bound (a tenth below, as conntrace
// probe advises), or well below the upper one while no lower bound is
// known. A lower bound above the upper means the instances do not share
// one path (different NATs, or the timeout changed): the metric by
// instance shows who saw what. A lower bound never fires the alert: it is
// no evidence against a setting. The rules group by job; if one job runs
// in several networks, add the label that tells them apart (cluster,
// region) to their by clauses.
//
// # From the alert to the trace
//
// The on-call path, with Prometheus scraping the program and Jaeger
// receiving its traces, at any sampling ratio:
//
//  1. The page: ConntraceStaleReuseHang fires, with job, instance,
//     server_address, server_port and conntrace_outcome.
//  2. The exemplar: query conntrace_stale_reuses_total with those labels
//     and show its exemplars (Prometheus's graph, Grafana's exemplar dots
//     with a data link on trace_id, or /api/v1/query_exemplars).
//  3. The trace: open that trace_id in Jaeger (/api/traces/<id>). For a
//     sampled request it is the request's own span, holding the alert; for
//     an unsampled one, the alert span, linked to the request's trace (the
//     one its traceparent carried to the server).
package exporters
