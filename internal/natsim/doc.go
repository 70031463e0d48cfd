// Package natsim is an in-process NAT simulator for tests and examples.
//
// It imitates a stateful NAT or firewall that forgets a TCP flow once the
// flow has been idle: bytes are forwarded both ways until no byte has
// crossed in either direction for longer than the idle timeout. After that
// the flow is black-holed: every later byte, FIN or reset from either side
// is swallowed, and nothing (no FIN, no RST) reaches the other side. This is
// what a client sees when a NAT silently drops its conntrack entry: a
// request written on a reused keep-alive connection hangs until the
// client's own deadline expires.
//
// [Join] applies the rule to two connected [net.Conn]s, [Proxy] is a
// loopback TCP proxy built on it, and [Network] is an in-memory variant,
// made only of [net.Pipe]s, for use inside a testing/synctest bubble, where
// fake time can jump across idle periods of minutes in no real time.
//
// What it cannot imitate: natsim is a userspace proxy, so it only sees
// payload bytes and end-of-stream. TCP keep-alive probes carry no payload
// and are answered by the kernel between the client and the proxy; they
// never reach natsim and never refresh a flow. So natsim cannot show that
// enabling TCP keep-alive keeps a real NAT entry alive; that needs a lab
// with a real kernel NAT (for example network namespaces and conntrack).
// Likewise it does not model per-packet timing, retransmissions or a NAT
// that answers forgotten flows with a reset.
package natsim
