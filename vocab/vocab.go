package vocab

import "go.opentelemetry.io/otel/attribute"

// Span event names: the moments of a request's connection that a person
// reads on its client span's timeline. The wait for a connection is a
// number on got_conn ([AttrWaitTime]); the write and the first response
// byte are numbers on the span ([AttrWroteAt], [AttrFirstByteAt]), and
// events only where they tell a story: on a request a detector suspects,
// and for a write that failed.
const (
	EventGotConn      = "conntrace.got_conn"      // a connection was handed out (GotConn), after [AttrWaitTime]
	EventDNSStart     = "conntrace.dns.start"     // DNSStart
	EventDNSDone      = "conntrace.dns.done"      // DNSDone
	EventConnectStart = "conntrace.connect.start" // one dial attempt starts (ConnectStart)
	EventConnectDone  = "conntrace.connect.done"  // one dial attempt ends, maybe with error (ConnectDone)
	EventTLSStart     = "conntrace.tls.start"     // TLSHandshakeStart
	EventTLSDone      = "conntrace.tls.done"      // TLSHandshakeDone
	// EventWroteRequest: the request was written (WroteRequest). An event
	// on a request a detector suspects (it raised an alert, or was woken
	// for it and still waits: a reused connection whose request went
	// unacknowledged past its first look), on an
	// alert span's timeline, and for a write that failed (with error.type
	// and [AttrError]); else the span's [AttrWroteAt].
	EventWroteRequest = "conntrace.wrote_request"
	// EventFirstByte: the first byte of the response came
	// (GotFirstResponseByte). An event on a request a detector suspects;
	// else the span's [AttrFirstByteAt]. A hung request has neither.
	EventFirstByte   = "conntrace.first_response_byte"
	EventPutIdleConn = "conntrace.put_idle_conn" // PutIdleConn: pooled (no attribute) or rejected ([AttrOutcome], [AttrReason])
	EventAlert       = "conntrace.alert"         // a detector raised an alert
	// EventClosedDead: conntrace closed the request's connection, found
	// dead by the kernel, so that net/http resends or fails the request
	// now (conntrace's WithCloseDeadConnections); after the stale_reuse alert, with
	// [AttrWaited] and [AttrWireIdle]; or a stream or long wait the
	// stream_stall detector found dead, so that the wait fails now, after
	// its alert, with [AttrWireIdle] (the connection's silence).
	EventClosedDead = "conntrace.connection.closed_dead"
	// EventBodyAbandoned: the response body was dropped without Close or
	// EOF, and the garbage collector found it unreachable; the span ends
	// with this event, at that moment, with [AttrBodyRead].
	EventBodyAbandoned = "conntrace.body.abandoned"
)

// Attribute keys that OpenTelemetry's semantic conventions lack. Where
// semconv has a name (server.address, network.peer.address, error.type,
// tls.resumed, ...) conntrace uses it instead.
const (
	// AttrReused: the connection came from the pool (bool, got_conn).
	AttrReused = attribute.Key("conntrace.connection.reused")
	// AttrWasIdle: the connection sat idle before this request (bool, got_conn).
	AttrWasIdle = attribute.Key("conntrace.connection.was_idle")
	// AttrIdleTime: how long it sat idle, in seconds (float64, got_conn).
	AttrIdleTime = attribute.Key("conntrace.connection.idle_time")
	// AttrWaitTime: how long the request waited for its connection, from
	// asking for one (GetConn) to being handed it (GotConn), dial
	// included, in seconds (float64, got_conn).
	AttrWaitTime = attribute.Key("conntrace.connection.wait_time")
	// AttrHostPort: the host:port the connection was wanted for, on
	// got_conn only where it is not server.address:server.port: behind a
	// proxy, the proxy's.
	AttrHostPort = attribute.Key("conntrace.host_port")
	// AttrWroteAt: when the request was written, in seconds from the
	// start of its span (float64, on the span; the last write, for a
	// request sent again). See [EventWroteRequest].
	AttrWroteAt = attribute.Key("conntrace.request.wrote_at")
	// AttrFirstByteAt: when the first byte of the response came, in
	// seconds from the start of the request's span (float64, on the
	// span): the time to first byte. See [EventFirstByte].
	AttrFirstByteAt = attribute.Key("conntrace.response.first_byte_at")
	// AttrDuration: how long the DNS lookup, dial or TLS handshake took, in
	// seconds (float64, *.done events).
	AttrDuration = attribute.Key("conntrace.duration")
	// AttrDNSAddresses: the addresses a DNS lookup returned (string slice).
	AttrDNSAddresses = attribute.Key("conntrace.dns.addresses")
	// AttrError: the text of the error that ended a DNS lookup, dial, TLS
	// handshake or write; error.type carries its type.
	AttrError = attribute.Key("conntrace.error")
	// AttrOutcome: what happened: rejected on a put_idle_conn event (one
	// without it was pooled), pooled|rejected on the put-idle metric; an alert's outcome (hang|failed|retried|ok for
	// stale_reuse) on its event, the alert metrics, and, with
	// [AttrDetector], on the span of a request given a verdict (see
	// [AttrSummary]).
	AttrOutcome = attribute.Key("conntrace.outcome")
	// AttrReason: why a connection was not pooled (put_idle_conn, rejected):
	// one of the Reason* values.
	AttrReason = attribute.Key("conntrace.reason")
	// AttrDetector: the detector that raised an alert (its event, the
	// alert metric), or gave a request its verdict (the request's span).
	AttrDetector = attribute.Key("conntrace.detector")
	// AttrLevel: an alert's level: INFO, WARN or ERROR.
	AttrLevel = attribute.Key("conntrace.alert.level")
	// AttrSummary: an alert on one line of about 120 characters at most,
	// led by detector/outcome, in plain units (detectors.Alert.Summary),
	// such as "stale_reuse/hang: reused after 6.0s idle, no ACK through 2
	// RTOs: the path forgot the connection".
	//
	// It is on every alert event. A request on which a detector raised an
	// alert of level WARN or above carries its verdict on its span too,
	// where a span list shows it without opening the events:
	// [AttrDetector], [AttrOutcome], [AttrLevel] and AttrSummary of the most
	// severe of its alerts (the first raised, among equals). They are set
	// as the alert is raised, on conntrace's span and on otelhttp's when
	// stacked (an alert raised after otelhttp ended its span, at the end of
	// the body, is lost with its event), and on the alert span (see
	// [AttrAlertSpan]). When conntrace ends its own span in error, the
	// status description is the verdict's summary, "; ", and the error:
	// "stale_reuse/hang: ...: the path forgot the connection; context
	// deadline exceeded". error.type keeps its meaning: the error's class.
	// A request without such an alert has none of these.
	AttrSummary = attribute.Key("conntrace.alert.summary")
	// AttrMessage and AttrAdvice: what an alert saw, and what to change.
	AttrMessage = attribute.Key("conntrace.alert.message")
	AttrAdvice  = attribute.Key("conntrace.alert.advice")
	// AttrThreshold: the limit an idle time was compared with, in seconds.
	AttrThreshold = attribute.Key("conntrace.alert.threshold")
	// AttrWaited: how long the request had waited for a response, in seconds.
	AttrWaited = attribute.Key("conntrace.alert.waited")
	// AttrEvidence: what decided a stale-reuse verdict: kernel or timeout.
	AttrEvidence = attribute.Key("conntrace.alert.evidence")
	// AttrWireIdle: how long the connection's socket had seen no packet
	// (data, ACK or keep-alive reply) when it was handed out, in seconds
	// (float64, got_conn; Linux, reused connections idle 1 s or more).
	// A NAT forgets a flow by this idle time, not the pool's.
	AttrWireIdle = attribute.Key("conntrace.connection.wire_idle")
	// AttrBodyRead: how many bytes of the response body the caller read
	// (int, body.abandoned).
	AttrBodyRead = attribute.Key("conntrace.body.read")
	// AttrAlertSpan marks an alert span (bool, true, set at the span's
	// start so that a sampler sees it).
	//
	// An alert span is a span conntrace starts to hold an alert of level
	// WARN or above raised on a request whose own span is not sampled. It
	// is named after what happened: the alert's detector and outcome, and
	// the request's method, as "stale_reuse/hang GET" (no host: span names
	// stay few). It starts when the request started, ends at the alert,
	// and holds the request's timeline so far as events: [EventGotConn]
	// for each connection handed out (reused, idle time, wire idle),
	// [EventWroteRequest], and every [EventAlert] raised on the request,
	// with its message, advice and evidence. It carries the verdict's
	// attributes ([AttrSummary]) and, for an alert of level ERROR, the
	// status Error described by the alert's summary. It is a new root,
	// linked to the request's span (whose trace ID is the request's, from
	// its context or the trace context in its headers), with the request's
	// http.request.method, server.address and server.port. A later alert on
	// the same request goes into a child of the first alert span: one
	// request, one alert trace.
	//
	// Alert spans are rate-limited like logged alerts (conntrace's
	// WithAlertInterval): at most one per detector and host per interval,
	// so a storm of hangs adds a trace per interval, not one per request.
	// WithoutSpans starts none.
	AttrAlertSpan = attribute.Key("conntrace.alert_span")
)

// Values of [AttrOutcome] on the put-idle metric; a put_idle_conn event
// carries only the second (the first is the event without attributes).
const (
	OutcomePooled   = "pooled"
	OutcomeRejected = "rejected"
)

// Values of [AttrReason]: why net/http did not put a connection back in its
// idle pool (the PutIdleConn error, classified). With DisableKeepAlives,
// net/http does not call PutIdleConn at all.
const (
	ReasonTooManyIdleForHost = "too_many_idle_for_host" // MaxIdleConnsPerHost reached
	ReasonTooManyIdle        = "too_many_idle"          // MaxIdleConns reached
	ReasonBroken             = "broken"                 // the connection was in a bad state
	ReasonClosing            = "closing"                // CloseIdleConnections, or the transport is closing
	ReasonOther              = "other"
)

// Metric instrument names of conntrace's own metrics. The standard ones use
// their semconv names: http.client.request.duration,
// http.client.active_requests and dns.lookup.duration.
const (
	// MetricIdleTime: histogram (s) of how long a reused connection sat idle,
	// with bucket boundaries at 0.1, 1, 5, 15, 30, 60 (AWS ALB/NLB), 90, 120,
	// 180, 240 (Azure), 300, 350 (AWS NAT), 450, 600, 900, 1200 (GCP Cloud
	// NAT), 1800 and 3600.
	MetricIdleTime = "conntrace.connection.idle_time"
	// MetricReuses: counter of connections handed out from the pool,
	// with conntrace.connection.was_idle. Observable: read at collection.
	MetricReuses = "conntrace.connection.reuses"
	// MetricDials: counter of dial attempts, with error.type on failure.
	MetricDials = "conntrace.connection.dials"
	// MetricPutIdle: counter of PutIdleConn outcomes, with conntrace.outcome
	// and, when rejected, conntrace.reason. Observable: read at collection.
	MetricPutIdle = "conntrace.connection.put_idle"
	// MetricStaleReuses: counter of stale reuses by outcome. Prometheus:
	// conntrace_stale_reuses_total.
	MetricStaleReuses = "conntrace.stale_reuses"
	// MetricAlerts: counter of alerts (level WARN and above) by detector and
	// outcome: stream_stall's dead and silent count here (a stream or long
	// wait on a connection the path forgot). Prometheus:
	// conntrace_alerts_total.
	MetricAlerts = "conntrace.alerts"
	// MetricPathIdleTimeout: gauge (s) of the idle timeout conntrace has
	// learned for the path to each server, as a bracket: with
	// conntrace.bound=lower, the longest wire idle time after which a
	// reused connection was seen alive; with conntrace.bound=upper, the
	// shortest after which one was seen dead. Prometheus:
	// conntrace_path_idle_timeout_seconds.
	MetricPathIdleTimeout = "conntrace.path.idle_timeout"
	// MetricConfigIdleConnTimeout: gauge (s) of the base *http.Transport's
	// IdleConnTimeout; 0 means idle connections are never closed for
	// idleness. Not reported for a base that is not an *http.Transport.
	// Prometheus: conntrace_config_idle_conn_timeout_seconds.
	MetricConfigIdleConnTimeout = "conntrace.config.idle_conn_timeout"
	// MetricConfigNATIdleTimeout: gauge (s) of the NAT idle timeout the
	// Transport was told (WithNATIdleTimeout, default 350 s). Prometheus:
	// conntrace_config_nat_idle_timeout_seconds.
	MetricConfigNATIdleTimeout = "conntrace.config.nat_idle_timeout"
)

// AttrBound says which end of a learned bracket a
// [MetricPathIdleTimeout] point is: [BoundLower] or [BoundUpper].
const AttrBound = attribute.Key("conntrace.bound")

// Values of [AttrBound].
const (
	BoundLower = "lower" // the longest idle time a connection survived
	BoundUpper = "upper" // the shortest idle time a connection did not
)

// Attribute keys of the socket options read from a newly dialled
// connection, on its got_conn event (keepalive_gap).
const (
	// AttrSocketKeepAlive: "on", "off", or "unknown" where the options
	// cannot be read (not Linux, not a TCP socket).
	AttrSocketKeepAlive = attribute.Key("conntrace.socket.keepalive")
	// AttrSocketKeepAliveIdle, AttrSocketKeepAliveInterval: TCP_KEEPIDLE and
	// TCP_KEEPINTVL in seconds; AttrSocketKeepAliveCount: TCP_KEEPCNT. Only
	// when keep-alive is on.
	AttrSocketKeepAliveIdle     = attribute.Key("conntrace.socket.keepalive.idle")
	AttrSocketKeepAliveInterval = attribute.Key("conntrace.socket.keepalive.interval")
	AttrSocketKeepAliveCount    = attribute.Key("conntrace.socket.keepalive.count")
	// AttrSocketUserTimeout: TCP_USER_TIMEOUT in seconds; 0 is the
	// kernel's default. Only when the options are known.
	AttrSocketUserTimeout = attribute.Key("conntrace.socket.user_timeout")
)

// Values of [AttrReason] on the not-reused metric ([MetricNotReused]).
const (
	// ReasonBodyNotDrained: the response body was closed before EOF.
	ReasonBodyNotDrained = "body_not_drained"
	// ReasonStreamClosed: the caller stopped reading a stream (Server-Sent
	// Events, a watch: see the detectors package, body_not_drained) and
	// closed it, which is how a stream ends; no alert is raised.
	ReasonStreamClosed = "stream_closed"
	// ReasonConnectionClose: the response or the request asked to close
	// the connection (Connection: close, HTTP/1.0, DisableKeepAlives).
	ReasonConnectionClose = "connection_close"
	// ReasonBodyAbandoned: the HTTP/1 response body was dropped without
	// Close or EOF (see [EventBodyAbandoned]); net/http holds the
	// connection until the request's context ends, if ever, then closes it.
	ReasonBodyAbandoned = "body_abandoned"
)

// Metric instrument names of the connection-lifetime and detector metrics.
// The lifetime ones are semconv's: http.client.open_connections (with
// http.connection.state active|idle) and http.client.connection.duration,
// recorded only for connections dialled through the Transport's
// WrapDialContext.
const (
	// MetricNotReused: counter of HTTP/1 connections that net/http closed
	// after a request instead of pooling them, with conntrace.reason.
	MetricNotReused = "conntrace.connection.not_reused"
	// MetricClosedDead: counter of connections conntrace closed because
	// the kernel showed them dead under a request, a reused one's or a
	// waiting stream's (conntrace's WithCloseDeadConnections). Prometheus:
	// conntrace_connection_closed_dead_total.
	MetricClosedDead = "conntrace.connection.closed_dead"
	// MetricHTTP2Errors: counter of HTTP/2 transport errors, with
	// error.type set to the transport's error name, such as
	// conn_close_lost_ping; see the Transport's CountHTTP2Errors.
	MetricHTTP2Errors = "conntrace.http2.errors"
)

// Values of error.type for the errors HTTP clients meet most, on the span,
// its events, http.client.request.duration, dns.lookup.duration and
// [MetricDials]. semconv asks for a low-cardinality, documented class of
// error; for errors of other kinds, error.type is the one the error gives
// (an ErrorType() string method), else its type's name, as semconv.ErrorType
// says, else _OTHER for a bare errors.New value, whose type says nothing.
const (
	// ErrorTypeTimeout: a deadline ended the request: http.Client.Timeout,
	// the context's deadline, or one of the transport's timeouts (dial,
	// TLS handshake, response header, an i/o deadline, a DNS timeout).
	ErrorTypeTimeout = "timeout"
	// ErrorTypeCanceled: the request's context was cancelled (or its
	// deprecated Request.Cancel closed) before any deadline.
	ErrorTypeCanceled = "canceled"
	// ErrorTypeConnectionRefused: the server's host refused the
	// connection (ECONNREFUSED): nothing listens on the port.
	ErrorTypeConnectionRefused = "connection_refused"
	// ErrorTypeConnectionReset: the peer reset the connection (ECONNRESET,
	// ECONNABORTED, or EPIPE on a write): a server, load balancer or
	// firewall aborted it.
	ErrorTypeConnectionReset = "connection_reset"
	// ErrorTypeConnectionClosed: the connection was closed before the
	// response was complete (EOF, unexpected EOF, "server closed idle
	// connection"): a server's idle timer, typically.
	ErrorTypeConnectionClosed = "connection_closed"
	// ErrorTypeHostNotFound, ErrorTypeTryAgain, ErrorTypeNoRecovery: DNS
	// errors, named after getaddrinfo's as semconv's dns.lookup.duration
	// asks: the name does not exist; a temporary failure; any other.
	ErrorTypeHostNotFound = "host_not_found"
	ErrorTypeTryAgain     = "try_again"
	ErrorTypeNoRecovery   = "no_recovery"
	// ErrorTypeServerCertificateInvalid: the server's certificate was
	// rejected (unknown authority, wrong host name, expired).
	ErrorTypeServerCertificateInvalid = "server_certificate_invalid"
	// ErrorTypeTLS: any other TLS failure: an alert from the server, a
	// server that does not speak TLS, a protocol error.
	ErrorTypeTLS = "tls_error"
	// ErrorTypeDeadConnection: conntrace closed the request's connection
	// because the kernel showed it dead, and did not resend the request
	// (conntrace's ErrDeadConnection and WithCloseDeadConnections).
	ErrorTypeDeadConnection = "dead_connection"
)
