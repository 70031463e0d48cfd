// Package natlab holds the real-kernel NAT lab's tests: conntrace's client
// in one network namespace, a Go server in another, and between them a
// Linux router whose conntrack forgets idle flows after a few seconds.
//
// TestNATLab proves detection and both cures; TestNATLabProbe runs the
// engine of `conntrace probe` (internal/probe) against the router and
// checks that the bracket it reports holds the conntrack timeout, and that
// the settings it advises cure the hang.
//
// TestNATLabMatrix scores stale_reuse over a fault matrix: ten cases in
// which it must say hang, retried or failed, or must stay silent (keep-alive
// probes, a slow server, a NAT timeout told wrong, a resetting firewall,
// HTTP/2 over TLS, 15% loss, a proxy that ACKs and black-holes), each run
// several times. It logs a table of what each run raised, with what
// evidence and how long after the write, beside what the socket's TCP_INFO
// said a second after the write; then precision, recall and verdict times.
// missedTargets holds the targets it must meet. Its sweep reuses connections
// idle below and above the conntrack timeout and reads the path idle
// timeout conntrace learned (conntrace.path.idle_timeout).
//
// TestNATLabCure proves the cure of issue 14: with WithCloseDeadConnections
// a GET on a forgotten connection is resent and answered within 2 s of its
// write, and a POST fails as fast with ErrDeadConnection, where without it
// both hang to their 10 s deadline (timed side by side); a slow server on a
// live path is never cut; and WithNATKeepAlive keeps a connection, dialled
// with keep-alive off, alive across the conntrack timeout.
//
// TestNATLabStreams proves stream_stall on streams and long waits whose
// flow conntrack forgets during a pause (an SSE stream, a long poll, HTTP/2
// over TLS): the kernel's verdict within 1.5 s of the moment it forgot,
// nothing on a pause below the timeout or kept alive, the cure's fast
// error and reconnect, and WithNATKeepAlive keeping a silent stream alive;
// it prints a STREAMS line. TestNATLabWatch does it with a real client-go
// watch, which without conntrace stops silently.
//
// The tests run only when scripts/natlab.sh drives them (it builds the
// namespaces, needs root, and sets CONNTRACE_NATLAB_SERVER); under a plain
// go test they skip with one line saying so.
//
//	sudo scripts/natlab.sh run     # the tests
//	sudo scripts/natlab.sh probe   # the conntrace probe command itself
package natlab
