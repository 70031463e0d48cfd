// Package conntrace is OpenTelemetry instrumentation for the connections of
// Go HTTP clients. It tells a service what its pooled connections are really
// doing, and raises an alert while a request hangs on a connection that a
// NAT, load balancer or firewall silently forgot.
//
// # The problem
//
// net/http keeps idle connections in a pool and reuses them. A NAT gateway
// or stateful firewall between client and server drops its record of a TCP
// flow after an idle timeout (AWS NAT Gateway: 350 s) without telling either
// end. The next request written on that pooled connection goes nowhere: no
// reply, no reset. The client waits until its own deadline and reports
// "context deadline exceeded" after a quiet period, and nothing in the
// usual telemetry says why.
//
// # Use
//
// Wrap the transport you already have:
//
//	client.Transport = conntrace.NewTransport(client.Transport,
//		conntrace.WithNATIdleTimeout(350*time.Second))
//
// Each request gets a client span (or, under otelhttp, otelhttp's span is
// annotated instead of making a second one) with an event for every moment
// of its connection's life: wanted, DNS, each dial attempt, TLS, acquired
// (reused or new, idle for how long), request written, first response byte,
// returned to the pool or rejected by it. The same moments feed metrics,
// and the detectors watch them.
//
// To stack under otelhttp, put conntrace inside:
//
//	otelhttp.NewTransport(conntrace.NewTransport(base))
//
// # Detectors and alerts
//
// The stale-reuse detector ([detectors.StaleReuse]) suspects a request that
// was handed a pooled connection idle for at least the NAT idle timeout
// ([WithNATIdleTimeout]). If no response byte arrives within the hang
// timeout ([WithHangTimeout]) after the request was written, it raises a
// "hang" alert at once, while the request still hangs. Otherwise it reports,
// when the round trip returns, "failed" (an error before any response),
// "retried" (net/http retried on another connection) or "ok" (the
// connection was fine, at Info level). Deciding there, inside RoundTrip,
// puts the verdict on otelhttp's span before otelhttp can end it.
//
// Every alert becomes a span event ([EventAlert]) and is counted
// ([MetricStaleReuses] by outcome; [MetricAlerts] by detector for alerts at
// WARN and above). Alerts at WARN and above are also logged with slog
// ([WithLogger]) and handed to an [AlertHandler] ([WithAlertHandler]);
// those two are rate-limited per detector and host ([WithAlertInterval]).
// Each alert says what was seen and which setting to change.
//
// Only a suspect request costs a timer; a healthy one costs no timer, no
// goroutine and no lock shared with other requests.
//
// # Telemetry
//
// Span events are named by the Event* constants and carry semconv
// attributes where semconv has them (network.peer.address, error.type,
// tls.resumed, ...) and the Attr* keys otherwise; durations are numbers of
// seconds. Metrics use the semconv instruments http.client.request.duration,
// http.client.active_requests and dns.lookup.duration, and conntrace's own,
// named by the Metric* constants. Every metric carries server.address and
// server.port.
//
// A PutIdleConn rejection (for example a full idle pool) is recorded but is
// never an error of the request: it does not set the span's status.
//
// A sampler sees the span's http.request.method, server.address and
// server.port; url.full is set with the response's attributes when the
// round trip returns, and only on spans that record.
//
// # Providers
//
// conntrace imports the OpenTelemetry API only. By default it uses the
// global TracerProvider, MeterProvider and propagator; [WithTracerProvider],
// [WithMeterProvider] and [WithPropagators] pass others, so neither tests
// nor applications need the globals. [WithoutSpans] keeps metrics and
// detectors and drops tracing. Instrument creation errors go to otel.Handle;
// nothing in the telemetry path can fail a request.
//
// # HTTP/2
//
// For HTTP/2, net/http reports GotConn with reuse and idle time, so idle
// time and stale reuse are seen as for HTTP/1.1. PutIdleConn never fires:
// an HTTP/2 connection is shared by concurrent requests, not handed back to
// a pool after each one, so there are no put_idle_conn events or counts.
//
// # Concurrency
//
// A [Transport] is safe for concurrent use. Its hooks run on several
// goroutines (the caller's, the dialer's, the connection's read loop, a
// hang timer); per-request state is guarded by a per-request lock.
//
// # Cost
//
// A request's state, with its hooks, comes from a pool and goes back to it
// when net/http can no longer call those hooks; everything conntrace knows
// of a host (attribute sets, metric options) is built once and kept in a
// fixed-size cache, so memory stays bounded however many hosts a client
// meets. The README's Overhead section gives the measured figures.
package conntrace
