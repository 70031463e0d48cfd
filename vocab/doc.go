// Package vocab is conntrace's telemetry vocabulary: the names of its span
// events, attribute keys, metrics and span, and the values its attributes
// take, as constants, so that dashboards' code, span processors and tests
// never spell them by hand. Where OpenTelemetry's semantic conventions
// name a thing (server.address, network.peer.address, error.type,
// http.client.request.duration, ...) conntrace uses that name, and it is
// not repeated here. Durations are numbers of seconds, never strings.
//
// # The request's span
//
// One client span per request, named after its method as semconv asks
// ("GET", or "HTTP" for a method semconv does not know), with
// http.request.method (and http.request.method_original for an unknown
// method), server.address, server.port, url.full (credentials, and the
// query parameters that carry them, redacted: see the root package's
// WithRedactedQueryKeys), http.response.status_code,
// network.protocol.version, error.type and http.request.resend_count,
// and the moments of the request, in seconds from the span's start:
// conntrace.request.wrote_at (the write) and
// conntrace.response.first_byte_at (the first byte of the response).
// Under otelhttp the span is otelhttp's, when it records, and conntrace
// adds only its events, the two moments and the verdict. Its events, in
// the order a request meets them:
//
//	event                                 when                                         attributes
//	conntrace.dns.start, .dns.done        the DNS lookup of a dial                     dns.question.name; conntrace.dns.addresses, conntrace.duration, error.type, conntrace.error
//	conntrace.connect.start, .done        each dial attempt                            network.transport, network.peer.address, network.peer.port; conntrace.duration, error.type, conntrace.error
//	conntrace.tls.start, .tls.done        the TLS handshake                            conntrace.duration, tls.resumed, tls.protocol.version, error.type, conntrace.error
//	conntrace.got_conn                    a connection is handed out                   conntrace.connection.reused, .was_idle, .idle_time, .wire_idle (Linux, a reuse after 1 s or more
//	                                                                                   of idle), .wait_time (since the connection was asked for), network.peer.address,
//	                                                                                   network.peer.port, network.local.port; conntrace.host_port behind a proxy; for a new
//	                                                                                   connection its socket: conntrace.socket.keepalive (on, off, unknown), .keepalive.idle,
//	                                                                                   .keepalive.interval, .keepalive.count, conntrace.socket.user_timeout
//	conntrace.wrote_request               the request is written: on a request a       error.type, conntrace.error on failure
//	                                      detector suspects, or a failed write
//	conntrace.first_response_byte         the first byte of the response: on a
//	                                      request a detector suspects
//	conntrace.alert                       a detector raised an alert                   conntrace.detector, conntrace.outcome, conntrace.alert.level, .summary, .message, .advice, .threshold,
//	                                                                                   .waited, .evidence (stale_reuse, stream_stall: kernel or timeout), conntrace.connection.idle_time, .wire_idle
//	conntrace.connection.closed_dead      WithCloseDeadConnections closed it           conntrace.alert.waited, conntrace.connection.wire_idle
//	conntrace.put_idle_conn               returned to the pool or refused (HTTP/1)     none when pooled; refused: conntrace.outcome=rejected, conntrace.reason, conntrace.error; never an error status
//	conntrace.body.abandoned              the body was dropped unclosed before EOF     conntrace.body.read (bytes); the span ends with it
//
// A detector suspects a request when it raises an alert on it, or when it
// was woken to look again and still waits (stale_reuse, for a reused
// connection the peer has not acknowledged the request on by its first
// look, about two retransmission timeouts after the write): the span's
// timeline then tells the request's story with the write and the first
// response byte as events, at their moments. An ordinary
// request has them as the two numbers only.
//
// The verdict: a request on which a detector raised an alert of level WARN
// or above carries, on its span, conntrace.detector, conntrace.outcome,
// conntrace.alert.level and conntrace.alert.summary of the most severe one,
// and, if conntrace's span ends in error, a status description that leads
// with that summary: see [AttrSummary]. A healthy request has none of them.
//
// An alert raised on a request whose span is not sampled is held in an
// alert span of its own, named after the alert, as "stale_reuse/hang GET":
// see [AttrAlertSpan].
//
// # Metrics
//
// Every metric carries server.address and server.port, except the three
// marked otherwise. The Prometheus names are those of OpenTelemetry's
// Prometheus exporter.
//
//	metric                                 type (unit)                          attributes                                          Prometheus
//	http.client.request.duration           histogram (s), semconv               method, status code, url.scheme,                    http_client_request_duration_seconds
//	                                                                            network.protocol.version, error.type
//	http.client.active_requests            up-down counter, semconv                                                                 http_client_active_requests
//	dns.lookup.duration                    histogram (s), semconv               dns.question.name, error.type                       dns_lookup_duration_seconds
//	conntrace.connection.idle_time         histogram (s), buckets at NAT and                                                        conntrace_connection_idle_time_seconds
//	                                       load-balancer timeouts
//	conntrace.connection.reuses            counter                              conntrace.connection.was_idle                       conntrace_connection_reuses_total
//	conntrace.connection.dials             counter                              error.type on failure                               conntrace_connection_dials_total
//	conntrace.connection.put_idle          counter                              conntrace.outcome, conntrace.reason                 conntrace_connection_put_idle_total
//	conntrace.connection.not_reused        counter                              conntrace.reason (body_not_drained,                 conntrace_connection_not_reused_total
//	                                                                            connection_close, body_abandoned,
//	                                                                            stream_closed)
//	conntrace.stale_reuses                 counter                              conntrace.outcome (hang, failed, retried, ok)       conntrace_stale_reuses_total
//	conntrace.alerts                       counter (WARN and above)             conntrace.detector, conntrace.outcome               conntrace_alerts_total
//	                                                                            (stream_stall: dead, silent)
//	conntrace.connection.closed_dead       counter                                                                                  conntrace_connection_closed_dead_total
//	conntrace.path.idle_timeout            gauge (s)                            conntrace.bound (lower, upper)                      conntrace_path_idle_timeout_seconds
//	conntrace.config.idle_conn_timeout     gauge (s), no server attributes                                                          conntrace_config_idle_conn_timeout_seconds
//	conntrace.config.nat_idle_timeout      gauge (s), no server attributes                                                          conntrace_config_nat_idle_timeout_seconds
//	conntrace.http2.errors                 counter, no server attributes        error.type (conn_close_lost_ping, ...)              conntrace_http2_errors_total
//	http.client.open_connections           up-down counter, semconv             http.connection.state (active, idle)                http_client_open_connections
//	http.client.connection.duration        histogram (s), semconv                                                                   http_client_connection_duration_seconds
//
// The last two are recorded only for connections dialled through the
// Transport's WrapDialContext, with the dialled address as the server
// (the proxy's, behind a proxy). Each constant below says more.
package vocab
