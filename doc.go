// Package conntrace is OpenTelemetry instrumentation for the connections of
// Go HTTP clients. It tells a service what its pooled connections are really
// doing, and raises an alert while a request hangs on a connection that a
// NAT, load balancer or firewall silently forgot.
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
// Wrap the transport you already have with [NewTransport] (see its
// example); a nil base means http.DefaultTransport. Each request then gets
// a client span with its connection's story (the connection handed out,
// how long it was waited for and had been idle, its dial, its return to
// the pool) and the moments of the write and the first response byte; the
// same moments feed metrics, and five detectors watch them.
//
// Under otelhttp, put conntrace inside:
// otelhttp.NewTransport(conntrace.NewTransport(base)). conntrace then
// finds otelhttp's recording client span in the request's context and adds
// its events and alerts to it, instead of starting a second span; it
// neither writes the trace context into the headers (otelhttp did) nor
// records http.client.request.duration (otelhttp does). The stale-reuse
// verdict is given inside RoundTrip, so it reaches otelhttp's span before
// otelhttp ends it. The NewTransport example for otelhttp shows the span.
//
// A span that does not record does not say its kind, so for a request
// otelhttp did not sample conntrace knows otelhttp's span another way: the
// request's headers already carry it (otelhttp injects its span, sampled or
// not, with the propagators the service set). It then starts no span and
// records no duration either. Without propagators nothing is injected, and
// conntrace cannot tell: it starts its own span (which a parent-based
// sampler does not sample either) and records the duration under its own
// scope.
//
// # Options
//
// Options are applied in order; a later one overrides an earlier one. A
// zero or negative duration, a typed-nil provider or propagator, and
// [WithNATKeepAlive] with a NAT idle timeout of 1 s or less are
// programming errors: NewTransport panics, naming the option and the
// value. Nothing panics inside RoundTrip.
//
//   - [WithNATIdleTimeout] (350 s, AWS NAT Gateway): the idle timeout of
//     the path, for the fallback verdict, the failed, retried and ok
//     outcomes, keepalive_gap, the audit and the advice until a path's
//     own timeout is learned.
//   - [WithHangTimeout] (10 s): how long a request may go without a
//     response before the fallback calls it a hang, or before an
//     acknowledged request is reported beyond_first_hop.
//   - [WithAlertInterval] (1 min): at most one logged and handled alert,
//     and one alert span, per detector and host per interval.
//   - [WithLogger] (slog.Default()) and [WithAlertHandler] (none): where
//     alerts of level WARN and above go, besides spans and metrics.
//   - [WithTracerProvider], [WithMeterProvider], [WithPropagators] (the
//     globals): conntrace imports the OpenTelemetry API only, and the
//     application chooses the SDK; tests pass their own, never globals.
//   - [WithoutSpans]: metrics, detectors and alerts only.
//   - [WithParentBasedSampling]: no span for a request whose parent was
//     not sampled, for a sampler that follows the parent.
//   - [WithoutAudit]: no audit of the base at start (see Audit).
//   - [WithCloseDeadConnections] and [WithNATKeepAlive] (off): the cure.
//   - [WithFilter], [WithSpanNameFormatter], [WithMetricAttributesFn] and
//     [Labeler] ([ContextWithLabeler], [LabelerFromContext]): otelhttp's
//     controls, with otelhttp's names and signatures, so that a service
//     that used them switches by renaming the package. A filtered request
//     (a health check, a metrics scrape) has no span, injects no trace
//     context and records no request duration, but what it meets on the
//     shared connections is still counted and alerted: a stale connection
//     a filtered health check finds raises the same alert (WithFilter
//     lists what it still feeds). User attributes go on
//     http.client.request.duration only, at most 256 distinct sets per
//     Transport, then otel.metric.overflow=true.
//
// # Span events
//
// The request's span is named after its method (semconv), and is a child
// of the span in the request's context; if there is none but the
// request's headers carry a trace context (go-openapi/runtime's
// WithOpenTelemetry writes one without touching the context), of that
// one, as a remote parent, so that the header conntrace writes stays in
// the caller's trace. A sampler sees http.request.method, server.address
// and server.port; url.full and the response's attributes are set when the
// round trip returns, on spans that record. url.full hides the user and
// password (of an opaque http:user:pw@host too) and the values of the
// query parameters that carry credentials: semconv's list (the AWS
// Signature Version 4 and 2, Azure SAS and Google Cloud Storage
// signatures, credentials and tokens) and a few more, which
// [WithRedactedQueryKeys] gives and adds to; whatever their key's
// percent-encoding and whether & or ; separates them. The text of an
// error that carries the URL, in the span's status or conntrace.error, is
// redacted the same way.
//
// A span event is a moment a person reads on the timeline: a connection
// handed out (got_conn, with how long the request waited for it), each
// dial's DNS lookup, connect and TLS handshake, the connection's return to
// the pool, an alert. The write and the first response byte are numbers
// on the span, seconds from its start ([vocab.AttrWroteAt],
// [vocab.AttrFirstByteAt]), set with its other attributes, an event costing
// the SDK several times an attribute; on a request a detector suspects (it
// raised an alert, or was woken for it and still waits, as for a reused
// connection whose request went unacknowledged past its first look) they
// are events as well, at their moments, so that a hang reads got_conn, wrote_request, alert and no
// first_response_byte. The names, attributes and when each comes are in
// package [vocab]. Durations are numbers of
// seconds. A PutIdleConn refusal (a full idle pool) is recorded but is
// never an error of the request: only the request's own error, or a status
// of 400 and up, sets the span's status.
//
// error.type names the class of an error, on the span, its events,
// http.client.request.duration, dns.lookup.duration and
// [vocab.MetricDials]: one of the ErrorType* values of [vocab] (timeout,
// which includes http.Client.Timeout; canceled; connection_refused;
// connection_reset; connection_closed; the DNS and TLS failures;
// dead_connection), else the error's own ErrorType() or type name, or
// _OTHER; for a response, its status code from 400 up.
//
// # Metrics
//
// The semconv instruments http.client.request.duration (to the response
// headers, as otelhttp measures it), http.client.active_requests and
// dns.lookup.duration, and conntrace's own; their names, attributes and
// Prometheus names are in package [vocab].
//
// A request is active from RoundTrip until its response body reaches EOF
// or is closed, or, for a body dropped without either, until the garbage
// collector finds it unreachable: then its span ends with a
// [vocab.EventBodyAbandoned] event, the request stops counting as active,
// and an HTTP/1 connection counts in [vocab.MetricNotReused] with reason
// [vocab.ReasonBodyAbandoned] (net/http holds it until the request's
// context ends, if it ever does). A body that is closed or read to EOF
// costs the collector nothing.
//
// The three metrics that change on nearly every request (active requests,
// reuses, put-idle outcomes) are per-host atomic counts that the SDK reads
// when it collects: an atomic add instead of a synchronous measurement.
// They are counted for up to 1,999 hosts per Transport; later hosts share
// one series with otel.metric.overflow=true, as the SDK's own cardinality
// limit does.
//
// # Detectors
//
// Five detectors watch every request: stale_reuse (a request on a pooled
// connection that the path forgot, decided from the kernel's TCP state on
// Linux in about a second), stream_stall (a stream, watch or long poll
// waiting for data on a connection silent past the path's idle timeout,
// judged by keep-alive probes on its socket: in the NAT lab, 1.35-1.47 s
// after the NAT forgot the flow; see Streams and long waits
// below), body_not_drained (a body closed before EOF, which costs the
// connection; not a stream its reader stops, such as Server-Sent Events or
// a watch), pool_overflow (an idle pool smaller than
// the concurrency) and keepalive_gap (a new connection whose TCP keep-alive
// cannot keep the NAT's entry alive). Package [detectors] says what each
// sees, raises and advises, and what it never raises. When the base is an
// *http.Transport, NewTransport configures them from it: its
// IdleConnTimeout, MaxIdleConnsPerHost and HTTP2.SendPingTimeout; and
// where it pools nothing (DisableKeepAlives, a negative
// MaxIdleConnsPerHost), no connection can idle into a NAT timeout, and
// keepalive_gap does not run.
//
// # Streams and long waits
//
// A stream (SSE, a Kubernetes watch) that pauses, or a long poll that
// waits, longer than a NAT's idle timeout loses its flow without a sign:
// nothing is unacknowledged, the server's next bytes die at the NAT, and
// the read never returns. A request that has waited a second or more with
// nothing for its caller (for its headers, or in a body Read) is looked at
// once a second by the Transport's stream watcher, one goroutine started
// with the first such request and gone when none is in flight; a request
// answered at once costs it one compare-and-swap to join and one to leave.
// On Linux it reads TCP_INFO: past the path's idle timeout (learned, else
// [WithNATIdleTimeout]) it turns keep-alive on the socket so one probe
// leaves at once, and reads the answer a quarter second later; the socket's
// options are put back. Unanswered, a second probe leaves 0.6 s after the
// first (one lost segment must not make a live connection dead); two
// unanswered probes are the stream_stall alert
// (dead, ERROR, kernel evidence), raised while the read still waits: in the
// NAT lab (conntrack timeout 3 s, lab/natlab TestNATLabStreams) a stream
// paused 6 s, a long poll answered after 6 s, an HTTP/2 stream and a real
// client-go watch were each reported 1.35-1.47 s after the NAT forgot
// them, with no alert on a pause below the timeout or kept alive.
// [WithNATKeepAlive] keeps such a wait alive (keep-alive on its socket
// from half the timeout); [WithCloseDeadConnections] closes a dead one so
// that the read fails at once with [ErrDeadConnection]. HTTP/2 pings below
// the timeout (http.HTTP2Config.SendPingTimeout) already keep a shared
// connection alive; conntrace then leaves it to them. A 101 Switching
// Protocols connection (WebSocket) is the caller's after the upgrade and is
// not watched: keep it alive with the protocol's own pings.
//
// # Alerts
//
// Every alert becomes a [vocab.EventAlert] event on the request's span,
// and stale_reuse's verdicts count in [vocab.MetricStaleReuses] by
// outcome. An alert of level WARN or above also counts in
// [vocab.MetricAlerts] by detector and outcome, is logged with slog
// ([WithLogger]) and handed to the [AlertHandler] ([WithAlertHandler]);
// those two are rate-limited, one per detector and host per
// [WithAlertInterval], the next one saying how many were held back
// (Alert.Suppressed). Events and counts are never rate-limited.
//
// A span list shows a span's name, status and attributes, not its events;
// so a request on which a detector raised an alert of level WARN or above
// carries its verdict on its span: the detector, outcome, level and
// one-line summary (Alert.Summary) of the most severe of its alerts, as
// [vocab.AttrSummary] describes, on conntrace's span or otelhttp's. No
// alert makes a request an error; but when conntrace's own span ends in
// error, its status description leads with the verdict's summary, then the
// error: "stale_reuse/hang: reused after 6.0s idle, no ACK through 2 RTOs:
// the path forgot the connection; context deadline exceeded". error.type
// stays the error's class (timeout). The slog record's message is the same
// summary. A healthy request carries none of this, and builds no string
// for it.
//
// Head sampling keeps few requests (at 1 %, 99 in 100 have a span that is
// not sampled), and an alert must not vanish with its request's span. An
// alert of level WARN or above on a request whose span is not sampled is
// recorded in an alert span, named after it
// ("stale_reuse/hang GET") and carrying its verdict: a new root, linked to
// the request's span, started with [vocab.AttrAlertSpan] so that a sampler
// keeps it (exporters.KeepAlertSpans does), holding the request's timeline
// so far. The alert's counts are made in the context of the span that
// holds the alert, the request's or the alert span, so that an SDK keeping
// exemplars links each count to a trace that exists; the logger and the
// AlertHandler get that context too. The exporters package's
// documentation follows an alert from Prometheus to its trace in Jaeger.
//
// # Cure
//
// Two options, off by default, act on what stale_reuse finds.
// [WithCloseDeadConnections] closes a reused connection once the kernel
// shows it dead, so that net/http resends a request it may replay at once
// and fails the others fast, with an error that wraps [ErrDeadConnection],
// instead of letting them hang to their deadline; for HTTP/2, where
// net/http resends nothing, conntrace resends such a request itself.
// [WithNATKeepAlive] keeps the connections conntrace dials alive with TCP
// keep-alive below the path's idle timeout, learned or configured. Each
// option says what it does, what it never does, and why it is off by
// default; the WithCloseDeadConnections example shows both.
//
// # Connection lifetimes
//
// The semconv metrics http.client.open_connections (by
// http.connection.state: active while requests use a connection, idle in
// the pool) and http.client.connection.duration need to see connections
// open and close, which httptrace does not report. They are observed at
// the dialer: [Transport.WrapDialContext] wraps the base's dial function,
// and says what that costs (wrapped connections, DialTLSContext
// connections not seen).
//
// # HTTP/2
//
// For HTTP/2, net/http reports GotConn with reuse and idle time (since the
// connection's last stream), so stale reuse is seen as for HTTP/1.1.
// PutIdleConn never fires: an HTTP/2 connection is shared by concurrent
// requests, not handed back to a pool after each, so there are no
// put_idle_conn events or counts and no pool_overflow.
//
// A forgotten HTTP/2 connection is worse than an HTTP/1 one: every request
// to the host goes to it. Without a health check, requests keep being sent
// on it (up to the server's concurrent-stream limit of them, each hanging
// until its own deadline) until the kernel gives up retransmitting, about
// 15 minutes with Linux's defaults. http.HTTP2Config.SendPingTimeout turns
// the health check on; the audit and keepalive_gap advise a value below
// the NAT idle timeout. [Transport.CountHTTP2Errors] counts HTTP/2
// errors, lost pings included, for golang.org/x/net/http2's transport: in
// Go 1.26 net/http's own client ignores http.HTTP2Config.CountError.
//
// # Audit
//
// When the base is an *http.Transport, or wraps one and says so (client-go's
// wrappers answer WrappedRoundTripper; a wrapper may also have an
// Unwrap() http.RoundTripper method), NewTransport logs the findings of
// [detectors.Audit] on it, each at its severity, to the logger of
// [WithLogger]: the settings that make the failures conntrace detects
// likely, and what to change. The same findings are logged once per
// process, however many Transports are made; [WithoutAudit] turns it off.
// A program can also call detectors.Audit itself, in a test or at start.
//
// # Concurrency and cost
//
// A [Transport] is safe for concurrent use. Its hooks run on several
// goroutines (the caller's, the dialer's, the connection's read loop, a
// hang timer); per-request state is guarded by a per-request lock. Every
// request has its own state, and its hooks are bound to it: a hook called
// by other code at any time (a base transport that mirrors the request
// with its context, code that kept the request's ClientTrace) finds its
// request ended and changes nothing, and never reaches another request.
//
// Only what is recorded is hooked: a request whose span records gets every
// hook; any other gets the three the metrics, detectors and timeline need,
// and the DNS and connect hooks when, and only when, it dials. A request
// on a connection reused within a second shares no lock with other
// requests but a read lock of its host's shard, and arms no timer; a reuse after a second of idle gets
// stale_reuse's kernel check: a TCP_INFO reading kept in a timer from the
// Transport's pool, stopped unfired and given back when the answer comes
// first, and the learned path timeouts' lock for its verdict. What
// conntrace keeps per host is built once and kept while the host is in use, so a request costs the same whether a client
// calls one server or 100,000; a host unused for five to ten minutes is
// dropped, so memory follows the hosts in use (about 1.5 KB each), not
// every host a client ever met. Instrument creation errors go to otel.Handle: nothing in the
// telemetry path can fail a request. The README's Overhead section gives
// the measured cost.
package conntrace
