// Command conntrace is the command line of the conntrace project.
//
//	conntrace probe [flags] URL
//
// Every cure for a stale pooled connection needs one number: how long a
// connection may sit idle before something between this machine and the
// server stops carrying it. probe measures it, through conntrace's own
// Transport and stale_reuse detector, and prints Go settings that stay
// below it. Install it with
//
//	go install github.com/conntrace/conntrace/cmd/conntrace@latest
//
// or run it from a checkout with go run ./cmd/conntrace probe URL.
//
// # What it does
//
// It opens one connection per idle period of a ladder (by default 30s, 1m,
// 2m, 4m, 350s, 10m and 20m: the big cloud NATs' timeouts are on it), all
// at once, each with TCP keep-alive off (its probes would refresh the very
// state being measured). Each makes a GET, sits idle in the pool for its
// period, then makes a second GET on the same connection, and is
// classified:
//
//   - reused ok: answered on the same connection; the path kept it.
//   - closed by peer: a FIN or reset came while idle (net/http dialled
//     anew), or the reused request was answered at once with one (net/http
//     retried). A FIN is the server's (or an HTTP proxy's) own idle timer:
//     "FIN while idle" (nginx, HAProxy, Caddy) or "FIN on reuse" (lighttpd
//     answers a request that comes after its timer with a FIN). A reset is
//     a firewall or load balancer that forgot the flow. Nothing hangs, but
//     a request sent just as the connection closes fails or is retried.
//   - silent drop: conntrace's stale_reuse hang alert fired: on Linux, the
//     kernel saw the request unacknowledged through two retransmission
//     timeouts (about a second); elsewhere, no answer and no reset within
//     --timeout. A NAT or firewall forgot the flow and drops its packets:
//     the hang conntrace exists for.
//
// As soon as the first change and every shorter rung are known, the longer
// rungs stop. Rounds of --split connections spread evenly inside the
// bracket then narrow it to --resolution. A round lasts about as long as
// its longest idle period, so a run takes a few times the timeout it
// finds: against a simulated AWS NAT (350 s) the defaults need 23 min
// (the ladder up to 10m, then two rounds). On a terminal, a live display
// on stderr shows which rungs are idle, sent or done, and the time left;
// elsewhere it writes a line per round and verdict, and a summary every
// 30 s. Ctrl-C prints what was learned so far.
//
// # Reading the report
//
// An example run, against the NAT lab (a conntrack timeout of 3 s, so the
// ladder is scaled down to match):
//
//	$ conntrace probe --ladder 1s,2s,4s,8s --max 8s --resolution 500ms --timeout 5s http://203.0.113.2:8080/
//	...
//	ROUND     IDLE  RESULT       IDLE SEEN  ANSWER AFTER  DETAIL
//	ladder    1s    reused ok    1s         1ms           answered on the same connection
//	ladder    2s    reused ok    2s         1ms           answered on the same connection
//	ladder    4s    silent drop  4s         917ms         the request went unacknowledged through 2 retransmission timeouts in 916ms, no reset (kernel; conntrace stale_reuse/hang)
//	ladder    8s    skipped                               not needed: a shorter idle period already changed
//	refine 1  2.4s  reused ok    2.4s       1ms           answered on the same connection
//	refine 1  2.8s  reused ok    2.8s       1ms           answered on the same connection
//	refine 1  3.2s  silent drop  3.2s       917ms         the request went unacknowledged through 2 retransmission timeouts in 916ms, no reset (kernel; conntrace stale_reuse/hang)
//	refine 1  3.6s  skipped                               not needed: a shorter idle period already changed
//
//	Idle timeout: between 2.8s and 3.2s (reused ok after 2.8s idle; silent drop after 3.2s).
//	Kind: silent drop. A NAT or stateful firewall on the path forgets a connection idle this long and then drops its packets without a reset: a request sent on it hangs until its deadline.
//
//	Go settings, a tenth below 2.8s (transport is your *http.Transport, dialer the *net.Dialer it dials with):
//	  transport.IdleConnTimeout = 2500 * time.Millisecond // retire pooled connections before the path does
//	  dialer.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: 2 * time.Second} // or keep them alive: each probe refreshes the path's state
//	  conntrace.WithNATIdleTimeout(2800 * time.Millisecond) // alert when a connection idle that long is reused
//
// Each row is one connection. IDLE is the idle period asked for; IDLE SEEN
// is net/http's own account of it when the connection was reused
// (httptrace.GotConnInfo.IdleTime); ANSWER AFTER is how long the second
// request took to be answered, fail, or be declared silent. "Idle timeout:
// between A and B" means a connection idle A was reused fine and one idle
// B was not: the path's idle timeout lies in (A, B]. Kind says what
// happens past it.
//
// The Go settings stay a tenth below A. Either one alone cures a silent
// drop: IdleConnTimeout retires pooled connections first; keep-alive
// probes refresh the NAT's state. Keep-alive is given in whole seconds,
// rounded down (Go rounds it up to seconds for the kernel), with Interval
// no longer than Idle (after an answered probe Linux waits the longer of
// the two). Against a FIN, the server's (or a proxy's) own timer, only
// IdleConnTimeout helps: keep-alive probes carry no data, so none is
// advised; only a silent drop or a reset gets keep-alive advice. Pass the
// WithNATIdleTimeout line to conntrace so that its alerts match the path.
//
// # Flags
//
// Durations are Go durations (90s, 5m) or plain seconds.
//
//   - --max (20m): the longest idle period to probe.
//   - --ladder (the default ladder cut at --max, plus --max): the first
//     round's idle periods, each at most --max.
//   - --resolution (10s): stop when the bracket is this narrow.
//   - --timeout (10s): how long a reused connection may stay silent before
//     it counts as a silent drop; also bounds each first request.
//   - --split (4): connections per refining round; each round shrinks the
//     bracket to 1/(split+1).
//   - --json: the report as JSON, durations in seconds (bracket.low_s,
//     bracket.kind, advice.idle_conn_timeout_s, ...).
//
// Exit codes: 0 a result (also "no idle timeout up to --max"), 1 nothing
// could be measured, 2 bad input with a one-line reason (a bad URL or
// duration, a ladder above --max, an unreachable host, a server that
// closes after each response), 130 interrupted (Ctrl-C; what was learned
// so far is printed first).
//
// # Caveats
//
// The probe GETs the URL twice per rung (about 30 requests with the
// defaults), so point it at a cheap, idempotent endpoint. It speaks
// HTTP/1.1 and connects directly (no proxy from the environment). It
// measures the path as the server uses it too: a server that sends TCP
// keep-alive probes of its own (Go servers do, every 15 s) keeps the NAT's
// state fresh from its side, and then the probe, like your clients, sees
// no timeout.
//
// The measuring is done by internal/probe; this command reads flags, shows
// progress and prints the report.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first Ctrl-C the probe stops and prints what it learned; a
	// second one should kill at once, as usual.
	context.AfterFunc(ctx, stop)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
