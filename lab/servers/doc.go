// Package servers holds the tests that run against real HTTP servers with
// keep-alive idle timers of their own: Debian's nginx, HAProxy (in front of
// a tiny backend), lighttpd and Caddy, on 127.0.0.1, each with an idle
// timeout of a few seconds.
//
// TestRealServers sends requests through conntrace with idle gaps just
// below and just above each server's timeout: the first must reuse the
// connection, the second must end on a new one, and neither may raise an
// alert. A server closing its own idle connections is not a NAT that
// forgot a flow.
//
// scripts/servers.sh installs the servers if they are missing, starts
// them, runs `conntrace probe` against each, then these tests, and stops
// the servers. It tells the tests where the servers are through
// CONNTRACE_SERVERS; under a plain go test they skip with one line saying
// so.
//
//	sudo scripts/servers.sh run
package servers
