// Package probe measures the idle timeout of the network path between this
// machine and an HTTP server: how long a kept-alive connection may sit idle
// before a NAT, firewall, load balancer or the server itself stops carrying
// it. It is the engine of `conntrace probe`.
//
// # Method
//
// Each measurement, a rung, is one connection with its own
// [net/http.Transport] (TCP keep-alive off, so no probe refreshes the path's
// state; one idle connection; IdleConnTimeout 0, so only the path can end
// it), wrapped in conntrace's own [conntrace.Transport]. The rung makes one
// GET, leaves the connection idle in the pool for its idle period (timed
// from the moment net/http pooled it), then makes a second GET and looks at
// what happened to the connection:
//
//   - reused ok: the second request was answered on the same connection;
//   - closed by peer: the connection was closed while idle (the pool saw
//     the FIN or reset and dialled a new one), or it failed at once when
//     reused (net/http retried). Which of the two the peer sent is told
//     apart ([End]) by the first error the connection's reads returned
//     (above TLS, for https): io.EOF for a FIN, ECONNRESET for a reset.
//     A FIN is the server's (or an HTTP proxy's) own idle timeout, which
//     TCP keep-alive cannot reset, whether it comes while idle (nginx,
//     HAProxy, Caddy) or in answer to the reused request (lighttpd); a
//     reset is a firewall or load balancer that forgot the flow (or a
//     server that aborts idle connections);
//   - silent drop: no answer and no reset within the timeout. conntrace's
//     stale_reuse detector raises its hang alert, and the rung stops
//     there: a NAT or firewall forgot the flow and drops its packets.
//
// # Rounds
//
// The first round runs a geometric ladder of idle periods in parallel
// ([DefaultLadder]). The first rung whose result is not "reused ok" and
// the longest shorter one that was give a bracket; once it is known, the
// longer rungs are stopped. Each later round probes points spread evenly
// inside the bracket, again in parallel, until the bracket is no wider than
// the resolution. The [Report] holds every rung, the bracket, its kind,
// and Go settings that stay below it with a margin ([Advice]): always an
// IdleConnTimeout, and TCP keep-alive only against a silent drop or a
// reset.
//
// # Testing
//
// [Config.DialContext] replaces the dialer, so tests can run the probe
// over internal/natsim's in-memory Network inside a testing/synctest
// bubble, where a 20-minute ladder takes no real time.
package probe
