// Package detectors is what conntrace's diagnoses look like to a user: the
// [Alert] an AlertHandler receives, the detectors' names and outcomes, the
// evidence a stale-reuse verdict rests on, and [Audit], the same questions
// asked of an *http.Transport's configuration before any request is made.
// The detectors themselves run inside conntrace's Transport; this package
// only describes them, and imports nothing outside conntrace and the
// standard library.
//
// Five detectors watch every request. A healthy request costs them no
// allocation, no timer, no goroutine and no lock shared with other
// requests; reading the socket options of a new connection costs five
// getsockopt calls, on Linux. Every alert says what was seen (its Message)
// and which setting to change (its Advice), and first the whole of it on one
// line (its Summary), with the values that decided it, such as
// "stale_reuse/hang: reused after 6.0s idle, no ACK through 2 RTOs: the
// path forgot the connection" or "body_not_drained/closed_early: body
// closed after 10 of 5000 bytes; the connection was closed, not pooled":
// what a span list shows of the request, and the log record's message.
// Where each alert goes (span event, the request's span, metrics, log,
// handler) and how it is rate-limited is conntrace's package
// documentation, section Alerts.
//
// # stale_reuse: a pooled connection the NAT forgot
//
// [StaleReuseName] sees the connection each request is handed (httptrace
// GotConn): reused or dialled, and how long it sat idle in the pool, for
// HTTP/1.1 and HTTP/2 alike. On Linux, for a connection reused after a
// second or more of idle, the transport also reads the socket's TCP_INFO
// (one getsockopt, [TCPInfo]): its wire idle time, which is what a NAT's
// timer saw (keep-alive replies reset it, the pool's idle time does not),
// and, on a timer, whether the peer acknowledged the request. A reuse
// after less than a second costs nothing.
//
// Where the kernel can be read, the verdict rests on that evidence
// ([EvidenceKernel]), whatever the configured NAT idle timeout:
// [OutcomeHang] (ERROR) as soon as the request stays unacknowledged
// through two retransmission timeouts in a row (about 0.9 s on a LAN,
// scaled by the RTO elsewhere), while the request still hangs. Where a
// dead verdict would contradict what is known of the path (it lost
// packets lately, on this connection or another to the same server, or it
// carried a request after as long an idle time), four are asked for
// instead (about 3.4 s on a LAN: each timeout doubles the last). A request
// the peer acknowledged is never a stale hang, however slow the answer: if
// none comes within the hang timeout, [OutcomeBeyondFirstHop] (INFO: a
// span event, neither counted nor logged) says the delay is past the first
// TCP hop, in a proxy, load balancer, sidecar or the server. The same
// holds behind an L7 load
// balancer, a TLS-terminating or CONNECT proxy, or a sidecar: the kernel
// sees that first hop acknowledge, and a hang beyond it is never blamed on
// a NAT.
//
// Where the kernel cannot be read (not Linux, or no socket under the
// connection), the fallback rule decides ([EvidenceTimeout]): a connection
// idle at least the NAT idle timeout whose request has no response within
// the hang timeout is a hang. In both cases, when the round trip returns,
// a connection reused after at least the NAT idle timeout gives
// [OutcomeFailed] (ERROR: an error before any response), [OutcomeRetried]
// (WARN: net/http gave up on it and sent the request again on another
// connection) or [OutcomeOK] (INFO: it worked; counted, not logged). The
// verdict is given inside RoundTrip, so that it lands on a span opened
// outside (otelhttp's) before that span ends.
//
// From its kernel verdicts, stale_reuse learns each path's idle timeout as
// a bracket: the longest wire idle after which a reused connection was
// alive (the lower bound) and the shortest after which one was dead (the
// upper bound), for up to 1,024 servers per Transport. Its advice quotes
// the bracket and sets the cure below it, or below the configured NAT
// idle timeout while nothing is learned: an IdleConnTimeout a tenth below,
// or TCP keep-alive probes that start and repeat within it (only where the
// limit is above a second, since keep-alive counts whole seconds).
//
// # stream_stall: a stream or long wait on a connection the path forgot
//
// [StreamStallName] watches a request while it waits for data: its
// response's headers (a long poll, a slow first byte) or, while the caller
// is in a Read, the next bytes of its body (SSE, a Kubernetes watch, any
// stream). A NAT or firewall that forgets the connection during the pause
// leaves nothing to see: nothing is unacknowledged, the server's next
// bytes are dropped (or reset at the NAT), and the read waits forever. A
// stale_reuse detector cannot see it (no request is sent into the dead
// path); this one looks, once a second at most, at each request that has
// waited a second or more with nothing for its caller.
//
// On Linux the verdict rests on the kernel ([EvidenceKernel]): the
// connection's silence is min(tcpi_last_data_recv, tcpi_last_ack_recv), the
// time since anything, data or ACK (a keep-alive probe's answer included),
// came in. A quiet stream whose keep-alive probes are answered is never
// silent, and a wait shorter than the path's idle timeout raises nothing.
// Half a second past the path's idle timeout (conntrack outlives its
// timeout by up to a quarter second, and a probe sent before the entry is
// gone would keep it), the transport turns TCP keep-alive on the socket
// (SO_KEEPALIVE, then TCP_KEEPIDLE and TCP_KEEPINTVL of 1 s: one probe
// leaves at once) and reads TCP_INFO again a quarter second (twice the
// RTT, at least) later: answered (tcpi_probes 0, a fresh ACK), the
// connection is alive and the socket's options are put back as they were;
// unanswered, the transport sends a second probe 0.6 s after the first
// (past the peer's 500 ms rate limit on answering such probes), so that
// one lost segment, the probe or its answer, does not make a live
// connection dead; both unanswered (tcpi_probes 2 or more, no ACK since),
// it is dead: [OutcomeDead] (ERROR), while the request still waits. In the
// NAT lab (conntrack timeout 3 s) that is 1.35-1.47 s after conntrack
// forgot the flow. Bytes unacknowledged on the connection are stale_reuse's
// business, not this detector's.
//
// Where the kernel cannot be read, the fallback ([EvidenceTimeout]) is
// silence as the caller sees it: no byte while waiting for the path's idle
// timeout, [OutcomeSilent] (WARN): a suspicion, since a slow server looks
// the same.
//
// The path's idle timeout is the one learned for the server (the bracket
// stale_reuse learns, which this detector's verdicts feed too: the silence
// a probe found alive or dead), else the configured NAT idle timeout; the
// alert says which, and its Threshold is that timeout, its IdleTime and
// WireIdle the silence. An HTTP/2 connection whose health-check pings
// (http.HTTP2Config.SendPingTimeout) come below the path's timeout is kept
// alive by them and not watched; otherwise a stream on a shared HTTP/2
// connection is judged as an HTTP/1 one, and the connection is closed
// (WithCloseDeadConnections) only on the kernel's evidence, when every
// stream on it is stuck alike. A 101 Switching Protocols connection
// (WebSocket) is the caller's after the upgrade: it is not watched once
// RoundTrip has returned, and keeping it alive (WebSocket pings) is the
// caller's.
//
// With WithNATKeepAlive, a silent wait gets keep-alive probes on its own
// socket at half the path's timeout, every half timeout, so that the NAT
// keeps the flow (no dialer is touched); with WithCloseDeadConnections a
// dead one is closed, so that the read fails at once with an error that
// wraps conntrace.ErrDeadConnection and the caller's retry (a re-watch, a
// reconnect) runs. The socket's options are put back when the request
// ends, so that a pooled connection is as its dialer left it.
//
// # body_not_drained: a body closed before EOF
//
// [BodyNotDrainedName] sees how each response body ended. net/http returns
// an HTTP/1 connection to its idle pool only once the body was read to
// EOF; a body closed earlier makes it close the connection, so the next
// request to the host dials (and, for HTTPS, handshakes) again. It raises
// [OutcomeClosedEarly] (WARN) when an HTTP/1.x body is closed before EOF,
// and nothing for HEAD, 204 and 304 (net/http hands out no body), a body
// read to EOF (exactly Content-Length bytes included: net/http returns EOF
// with the last of them), a failed read, a response with Connection:
// close, 101 Switching Protocols, or HTTP/2 (closing resets one stream,
// the connection stays). Its advice: drain the body before Close, bounded
// if the rest may be large, and after a json.Decoder too.
//
// Nor does it raise anything for a stream, which has no EOF to drain to:
// a caller that stops reading Server-Sent Events or a Kubernetes watch
// closes the body, and that is how the stream ends. Where the line is: a
// response that gave no Content-Length and either said it is a stream by
// its media type (text/event-stream, application/x-ndjson and the other
// newline-delimited JSON types, multipart/x-mixed-replace, any type with
// stream=watch), or answered a watch=true (or watch=1) request, or was
// read, some of it, for 10 s or more before it was closed. Such a close
// is counted in conntrace.connection.not_reused with reason stream_closed
// (the connection is still lost, as it must be), with no alert. A body
// with a Content-Length, and a document of unknown length (application/json)
// closed soon after its headers, stay on the other side: the small body
// left unread, whose connection the pool loses for nothing.
//
// # pool_overflow: an idle pool smaller than the concurrency
//
// [PoolOverflowName] sees every PutIdleConn refusal because the pool
// already holds MaxIdleConnsPerHost idle connections to the host ("too
// many idle connections for host"), and every new connection; from a
// host's first refusal on, it also counts the requests in flight to it.
// It raises [OutcomeChurn] (WARN), at most once per host and minute, when
// a host has had 5 refusals and 5 new connections within a minute:
// connections are closed after each burst and dialled again. A refusal is
// never an error of the request. Its advice: MaxIdleConnsPerHost of at
// least the peak concurrency it saw. HTTP/2 never calls PutIdleConn, so it
// never fires there.
//
// # keepalive_gap: keep-alive that cannot keep the NAT alive
//
// [KeepAliveGapName] sees the socket options the kernel holds for each new
// connection, read through syscall.RawConn on Linux: SO_KEEPALIVE,
// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT and TCP_USER_TIMEOUT. Elsewhere
// they are unknown, and it never guesses. It raises [OutcomeKeepAliveOff]
// or [OutcomeKeepAliveLate] (WARN), once per connection, on the request
// that dialled it, when the connection can outlive the NAT idle timeout:
// keep-alive off, or its first probe or the interval to the next (Linux
// probes again an interval after the last) at or after that timeout,
// while the pool may keep the connection idle that long (IdleConnTimeout
// zero, at or above it, or unknown) and, for HTTP/2, no health-check ping
// comes sooner. It does not run for a transport that pools nothing
// (DisableKeepAlives, a negative MaxIdleConnsPerHost). Its advice: an
// IdleConnTimeout below the NAT's, or dialer keep-alive whose Idle and
// Interval are both below it, or for HTTP/2 a SendPingTimeout.
//
// # Audit
//
// [Audit] asks the same questions of an *http.Transport's configuration
// up front, against a NAT idle timeout, and returns a [Finding] per
// problem, with a severity, what was seen, why it matters, the setting and
// the advice: idle_conn_timeout (zero, or not below the NAT's),
// dialer_keepalive (off, or too late for the NAT), max_idle_conns_per_host
// (net/http's default of 2, or negative), response_header_timeout and
// tls_handshake_timeout (missing), disable_keep_alives, and http2_ping
// (HTTP/2 on without http.HTTP2Config.SendPingTimeout, or with one not
// below the NAT's). The dialer's keep-alive is known only for a nil
// DialContext and for http.DefaultTransport itself: a DialContext is a
// function whose dialer cannot be inspected, so [AuditDialer] takes it.
// conntrace.NewTransport logs the audit of an *http.Transport base, each
// finding at its severity, once per process for the same findings.
//
// The advice in alerts and findings is written once, for both: the same
// words and the same numbers (a tenth below the limit for IdleConnTimeout,
// half of it, in whole seconds, for keep-alive and HTTP/2 pings).
package detectors
