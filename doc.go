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
// Four detectors watch every request; each alert says what was seen and
// which setting to change. Every alert becomes a span event ([vocab.EventAlert])
// and, at WARN and above, is counted in [vocab.MetricAlerts] by detector and
// outcome, logged with slog ([WithLogger]) and handed to an [AlertHandler]
// ([WithAlertHandler]); those last two are rate-limited per detector and
// host ([WithAlertInterval]). No alert sets the span's status: only the
// request's own error does.
//
// Head sampling keeps few requests (at 1 %, 99 in 100 have a span that is
// not sampled), and an alert must not vanish with its request's span. An
// alert of level WARN or above on a request whose span is not sampled is
// recorded in an alert span ([vocab.AlertSpanName]): a new root, linked to the
// request's span, started with [vocab.AttrAlertSpan] so that a sampler keeps it
// (exporters.KeepAlertSpans does), holding the request's timeline so far.
// The alert's counts in [vocab.MetricStaleReuses] and [vocab.MetricAlerts] are made in
// the context of the span that holds the alert, the request's or the alert
// span, so that an SDK keeping exemplars (its default keeps those of
// sampled spans) links each count to a trace that exists; the logger and
// the [AlertHandler] get that context too.
//
// A healthy request costs the detectors no allocation, no timer, no
// goroutine and no lock shared with other requests: only a suspect request,
// or one on a connection reused after a second or more of idle, arms a
// timer, and pool_overflow costs a request one atomic load while no
// host's pool has overflowed (a map lookup after that, and an atomic add
// for requests to a host that has). Reading socket options costs each new
// connection five getsockopt calls, on Linux.
//
// # Stale reuse
//
// stale_reuse ([detectors.StaleReuse]) sees the connection a request is
// handed (GotConn): reused, idle, and for how long. On Linux, for a
// connection reused after a second or more of idle, the transport also
// reads the socket's TCP_INFO (one getsockopt): its wire idle time, which
// is what a NAT's timer saw (keep-alive replies reset it, the pool's idle
// time does not), and, on a timer, whether the peer acknowledged the
// request. From that evidence, whatever [WithNATIdleTimeout] says, it
// raises "hang" (ERROR) as soon as the request stays unacknowledged through
// two retransmission timeouts in a row (about 0.9 s on a LAN), while the
// request still hangs; four where that would contradict what is known of
// the path (recent packet loss, or a request carried after as long an
// idle). A request the peer acknowledged is never a stale hang: if no
// answer comes within [WithHangTimeout] it records "beyond_first_hop"
// (Info), the delay being past the first TCP hop (a proxy, load balancer,
// sidecar, or the server). Where the kernel cannot be read, the fallback
// rule holds: a connection idle at least the NAT idle timeout whose request
// has no response within the hang timeout is a "hang". When the round trip
// returns, a connection idle at least the NAT idle timeout gives "failed"
// (ERROR: an error before any response), "retried" (WARN: net/http retried
// on another connection) or "ok" (Info: the connection was fine). Deciding
// there, inside RoundTrip, puts the verdict on otelhttp's span before
// otelhttp can end it. Each alert says which evidence decided
// ([vocab.AttrEvidence]).
//
// The verdicts teach each path's idle timeout, as a bracket: the longest
// wire idle after which a connection carried a request, the shortest after
// which one was dead ([vocab.MetricPathIdleTimeout], by [vocab.AttrBound]). The advice
// quotes it: an IdleConnTimeout below the path's timeout (learned, else the
// configured one), or keep-alive probes that start and repeat before it.
// Metric: [vocab.MetricStaleReuses] by outcome.
//
// # The cure
//
// Two options, off by default, act on what stale_reuse finds.
// [WithCloseDeadConnections] closes a reused connection once the kernel's
// evidence says it is dead (never on the timeout fallback, never when the
// peer acknowledged the request, never a fresh dial): net/http resends a
// request it may replay (GET, HEAD, OPTIONS, TRACE, or one with an
// Idempotency-Key header, its body empty or rewound by GetBody) on a new
// connection and fails the others at once, with an error that wraps
// [ErrDeadConnection] and says why, instead of letting them hang to their
// deadline. net/http resends nothing after an HTTP/2 connection is lost,
// so conntrace resends such a request itself. The span shows the alert, a
// [vocab.EventClosedDead] event and the resend (a second got_conn,
// http.request.resend_count); [vocab.MetricClosedDead] counts.
// [WithNATKeepAlive] prevents the staleness on connections conntrace dials:
// TCP keep-alive below the path's idle timeout, learned or configured.
//
// # Body not drained
//
// body_not_drained ([detectors.BodyNotDrained]) sees how each response
// body ended. net/http returns an HTTP/1 connection to its pool only once
// the body was read to EOF; closed earlier, the connection is closed and
// the next request dials again. It fires (WARN, outcome "closed_early")
// when an HTTP/1.x body is closed before EOF, and stays silent for HEAD,
// 204 and 304 (no body is handed out), bodies read to EOF, failed reads,
// responses with Connection: close, 101 Switching Protocols and HTTP/2
// (closing a stream keeps the connection). It advises draining the body
// (io.Copy(io.Discard, res.Body)) before Close, bounded if the rest may be
// large, and after a json.Decoder too. Metric: [vocab.MetricNotReused] with
// reason body_not_drained (connection_close counts the connections the
// server or request closed on purpose).
//
// # Pool overflow
//
// pool_overflow ([detectors.PoolOverflow]) sees every PutIdleConn refusal
// because the idle pool already holds MaxIdleConnsPerHost connections to
// the host, and every new connection. It fires (WARN, outcome "churn"), at
// most once per host and minute, when a host has had 5 refusals and 5 new
// connections within a minute: connections are closed after each burst
// and dialled again. From
// a host's first refusal on it counts the requests in flight to it, and
// advises MaxIdleConnsPerHost of at least the peak it saw. A refusal is
// never an error of the request. Metric: [vocab.MetricPutIdle] with outcome
// rejected and reason too_many_idle_for_host.
//
// # Keep-alive gap
//
// keepalive_gap ([detectors.KeepAliveGap]) sees the real socket options of
// each new connection: SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL,
// TCP_KEEPCNT and TCP_USER_TIMEOUT, read through syscall.RawConn on Linux
// and put on the got_conn event (ConnectDone carries no socket). Elsewhere
// they are "unknown", and it never guesses. It fires (WARN, outcome
// "keepalive_off" or "keepalive_late") when the connection can outlive the
// NAT idle timeout: keep-alive off, or its first probe or the interval to
// the next (Linux probes again an interval after the last) at or after
// that timeout, while the pool may keep the connection idle that long
// (IdleConnTimeout zero, at or above it, or unknown) and, for HTTP/2, no
// health-check ping comes sooner. It advises an IdleConnTimeout below the
// NAT's, a net.Dialer KeepAliveConfig with Idle and Interval of half of it,
// or for HTTP/2 a SendPingTimeout. Metric: [vocab.MetricAlerts] with detector
// keepalive_gap.
//
// # Audit
//
// [detectors.Audit] asks the same questions of an *http.Transport's
// configuration up front: an IdleConnTimeout that outlives the NAT, the
// dialer's keep-alive (known for a nil DialContext, a zero net.Dialer, and
// for http.DefaultTransport, KeepAlive 30 s; a DialContext is otherwise a
// function whose dialer cannot be inspected, so [detectors.AuditDialer]
// takes it), MaxIdleConnsPerHost at its default of 2 (or negative),
// missing ResponseHeaderTimeout and TLSHandshakeTimeout, DisableKeepAlives,
// and HTTP/2 without a health check (http.HTTP2Config.SendPingTimeout).
// Each [detectors.Finding] has a severity, what was seen, why it matters,
// the setting and the advice. NewTransport logs the audit of an
// *http.Transport base, once per process for the same findings;
// [WithoutAudit] turns that off.
//
// # Connection lifetimes
//
// The semconv metrics http.client.open_connections (by
// http.connection.state: active while requests use a connection, idle in
// the pool) and http.client.connection.duration need to see connections
// open and close, which httptrace does not report. They are observed at
// the dialer: [Transport.WrapDialContext] wraps the base's dial function. The trade-offs are on
// [Transport.WrapDialContext]: the connections are wrapped (NetConn
// returns the dialled one), the base's requests must all go through the
// Transport, DialTLSContext connections are not seen, and SOCKS5
// connections stay counted as idle. HTTP/2, TLS and HTTP proxies keep
// working.
//
// # Telemetry
//
// Span events are named by the Event* constants and carry semconv
// attributes where semconv has them (network.peer.address, error.type,
// tls.resumed, ...) and the Attr* keys otherwise; durations are numbers of
// seconds. Metrics use the semconv instruments http.client.request.duration,
// http.client.active_requests and dns.lookup.duration (and, with the
// dialer observed, http.client.open_connections and
// http.client.connection.duration), and conntrace's own, named by the
// Metric* constants. Every metric carries server.address and server.port,
// except [vocab.MetricHTTP2Errors]: HTTP/2's CountError does not say which host.
//
// A PutIdleConn rejection (for example a full idle pool) is recorded but is
// never an error of the request: it does not set the span's status.
//
// A sampler sees the span's http.request.method, server.address and
// server.port; url.full is set with the response's attributes when the
// round trip returns, and only on spans that record. url.full hides the
// user and password (of an opaque http:user:pw@host too) and the values of
// the query parameters semconv lists as sensitive, whatever their key's
// percent-encoding and whether & or ; separates them.
//
// error.type names the class of error, from a short documented list (the
// ErrorType* constants: timeout, canceled, connection_refused,
// connection_reset, connection_closed, the DNS and TLS failures), on the
// span, its events, http.client.request.duration, dns.lookup.duration and
// [vocab.MetricDials]. http.Client.Timeout is a timeout.
//
// The span's parent is the span in the request's context. A request whose
// context holds none but whose headers carry a trace context (as
// go-openapi/runtime's WithOpenTelemetry writes it) gets that one as its
// remote parent, so the header conntrace writes stays in the caller's
// trace.
//
// Trailer values set while the request body is read are sent.
//
// A request ends when its response body reaches EOF or is closed. A body
// the caller drops without either is found by the garbage collector: its
// span then ends with an [vocab.EventBodyAbandoned] event giving the bytes read,
// the request stops counting as active, and an HTTP/1 connection counts in
// [vocab.MetricNotReused] with reason [vocab.ReasonBodyAbandoned]: net/http holds it
// until the request's context ends, if it ever does. The span's end is when
// the collector noticed, not when the caller stopped. A body that is closed
// or read to EOF costs the collector nothing.
//
// # Providers
//
// conntrace imports the OpenTelemetry API only. By default it uses the
// global TracerProvider, MeterProvider and propagator; [WithTracerProvider],
// [WithMeterProvider] and [WithPropagators] pass others, so neither tests
// nor applications need the globals (a typed nil, such as a nil
// *sdktrace.TracerProvider, makes NewTransport panic, naming the option).
// [WithoutSpans] keeps metrics and detectors and drops tracing. Instrument
// creation errors go to otel.Handle; nothing in the telemetry path can fail
// a request.
//
// # HTTP/2
//
// For HTTP/2, net/http reports GotConn with reuse and idle time (since the
// connection's last stream), so idle time and stale reuse are seen as for
// HTTP/1.1. PutIdleConn never fires: an HTTP/2 connection is shared by
// concurrent requests, not handed back to a pool after each one, so there
// are no put_idle_conn events or counts, and no pool_overflow.
//
// A forgotten HTTP/2 connection is worse than an HTTP/1 one: every request
// to the host goes to it. Without a health check, requests keep being sent
// on it (up to the server's concurrent-stream limit of them, each hanging
// until its own deadline) until the kernel gives up retransmitting, about
// 15 minutes with Linux's defaults. http.HTTP2Config.SendPingTimeout turns
// the health check on: a connection without frames for that long is
// pinged. A ping due before the NAT idle timeout keeps the NAT's entry
// alive; one that is lost closes the connection after PingTimeout (default
// 15 s), so the next request dials. [Transport.CountHTTP2Errors] counts
// HTTP/2 errors, lost pings included (error.type conn_close_lost_ping), in
// [vocab.MetricHTTP2Errors], chaining any existing CountError hook. In Go 1.26
// only golang.org/x/net/http2.Transport calls CountError for a client;
// net/http's own client ignores http.HTTP2Config.CountError.
//
// # Concurrency
//
// A [Transport] is safe for concurrent use. Its hooks run on several
// goroutines (the caller's, the dialer's, the connection's read loop, a
// hang timer); per-request state is guarded by a per-request lock. Every
// request has its own state, and its hooks are bound to it: a hook called
// by other code at any time (a base transport that mirrors the request with
// its context, code that kept the request's ClientTrace) finds its request
// ended and changes nothing, and never reaches another request.
//
// # Cost
//
// Only what is recorded is hooked: a request whose span records gets every
// hook; any other gets the three the metrics, detectors and timeline need,
// and the DNS and connect hooks when, and only when, it dials. The request
// is itself the context it is sent with, so installing its hooks costs no
// context allocation. Everything conntrace knows of a host (attribute sets,
// metric options) is built once and kept in a fixed-size cache, so memory
// stays bounded however many hosts a client meets. A request whose parent
// was not sampled costs no span [WithParentBasedSampling]. The README's
// Overhead section gives the measured figures.
package conntrace
