package detect

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
)

// The detector's name and outcomes: the detectors package's.
const (
	StreamStallName = detectors.StreamStallName
	OutcomeDead     = detectors.OutcomeDead
	OutcomeSilent   = detectors.OutcomeSilent
)

// Timing of [StreamStall]'s checks.
const (
	// StreamGate is how long a request must have waited for data, with no
	// byte for the caller, before the transport asks the kernel about it:
	// a stream that flows, and every request answered within a second,
	// cost no system call.
	StreamGate = time.Second
	// streamEvery is the longest time between two looks at a waiting
	// request: at most one kernel reading per second per stream, but
	// around a verdict.
	streamEvery = time.Second
	// judgeMargin is how far past the path's idle timeout a silent
	// connection is probed to judge it, without the cure: a conntrack
	// entry outlives its timeout by up to a quarter second (its garbage
	// collection), and a probe sent before the entry is gone would keep
	// the flow alive, so the verdict would say nothing.
	judgeMargin = 500 * time.Millisecond
	// probeGiveUp is how long a probe may go without a verdict (no answer
	// and no probe counted) before the socket is restored and the
	// connection looked at again later.
	probeGiveUp = 3 * time.Second
	// probeAgainAfter is how long after a first probe, unanswered, a second
	// one is sent before the connection is called dead: one lost segment
	// (the probe, or its answer) must not make a live connection dead. The
	// peer answers a keep-alive probe (a segment out of its window) at most
	// once per tcp_invalid_ratelimit (Linux: 500 ms) per socket, so a second
	// probe sooner after an answer that was lost would go unanswered too.
	probeAgainAfter = 600 * time.Millisecond
)

// Wait is what the transport saw of one request waiting for data at one
// look: what [StreamStall.Check] decides on.
type Wait struct {
	Host       string
	Port       int
	Method     string
	RemoteAddr net.Addr // may be nil
	Headers    bool     // waiting for the response's headers; else for body bytes
	HTTP2      bool     // the connection is HTTP/2, shared by other requests
	// Stale says that stale_reuse has already called this request a hang:
	// a request written into a dead path is its business, and one alert
	// for one hang is enough.
	Stale bool

	// Quiet is how long the caller has had no byte while waiting, as the
	// transport saw it (to a second): the fallback's measure.
	Quiet time.Duration
	// TCP is the kernel's reading of the connection's socket now; nil where
	// it cannot be read (not Linux, no socket under the connection).
	TCP *TCPInfo
	// Probe is the probe the transport turned on for this wait, at the
	// last ActProbe or ActKeepAlive; nil if none is pending a verdict.
	Probe *Probe
	// KeptAlive says that the cure's keep-alive is on the socket
	// (ActKeepAlive), every KeepAliveEvery.
	KeptAlive      bool
	KeepAliveEvery time.Duration
}

// Probe is a keep-alive probe the transport turned on to judge a silent
// connection.
type Probe struct {
	// At is when keep-alive was turned on (the last setsockopt done), or
	// turned on again for the second probe.
	At      time.Time
	Silence time.Duration // the connection's silence on the wire at the first probe
	// Again says that the second probe was sent (ActProbe on a pending
	// probe): the transport keeps Silence and sets At anew.
	Again bool
}

// Act is what the transport is to do after a [StreamStall.Check].
type Act int

const (
	// ActWait: nothing now; look again after Decision.Next.
	ActWait Act = iota
	// ActProbe: turn TCP keep-alive on the socket with a one-second idle
	// time and interval, so that a probe leaves now, and look again after
	// Next for the verdict. On a wait whose probe is pending (its first
	// probe unanswered), it sends the second probe: the transport sets the
	// options again, which re-arms the kernel's keep-alive timer.
	ActProbe
	// ActKeepAlive: the cure's prevention: turn keep-alive on the socket
	// every Decision.Every, below the path's idle timeout, left on until
	// the request ends; look again after Next for the first probe's verdict.
	ActKeepAlive
	// ActRestore: the probe was answered (or gave no verdict): put the
	// socket's keep-alive options back as they were; look again after Next.
	ActRestore
	// ActClose: the kernel showed the connection dead and the cure closes
	// it (StreamStall.CloseDead), so that the wait fails now.
	ActClose
	// ActStop: the verdict is given (or the wait is none of this detector's
	// business): put back the socket's options and look no more.
	ActStop
)

// Decision is the outcome of one [StreamStall.Check].
type Decision struct {
	Act   Act
	Next  time.Duration // when to look again: ActWait, ActProbe, ActKeepAlive, ActRestore
	Every time.Duration // ActKeepAlive: the keep-alive idle time and interval
	Alert *Alert        // to raise, if any
	// Judged says that the pending probe's verdict is in (alive, or none
	// in time): the transport forgets it.
	Judged bool
	Path   PathTimeoutFor // the path idle timeout the decision used
}

// PathTimeoutFor is the path idle timeout a decision compared silence with,
// and where it came from.
type PathTimeoutFor struct {
	Limit   time.Duration
	Learned bool // from what conntrace saw of the path; else WithNATIdleTimeout
	Bracket Bracket
}

// String says which timeout, for an alert: "3s, learned (between 2.9s and
// 3.5s)" or "350s, configured (WithNATIdleTimeout)".
func (p PathTimeoutFor) String() string {
	if p.Learned {
		return fmt.Sprintf("%s, learned from this path (its idle timeout is %s)", advice.Round(p.Limit), p.Bracket)
	}
	return fmt.Sprintf("%s, configured (WithNATIdleTimeout)", advice.Round(p.Limit))
}

// StreamStall detects a request that waits for data (its response's
// headers: a long poll, a slow first byte; or the next bytes of its body: a
// stream, an SSE feed, a watch) on a connection that has stayed silent past
// the path's idle timeout: a NAT or firewall on the path has likely
// forgotten it, and then nothing the server sends arrives, and nothing
// tells the client: the wait never ends.
//
// It is not a [Detector]: nothing happens on a request while it waits, so
// the transport's stream watcher looks at waiting requests (at most once a
// second each, after [StreamGate]) and asks Check what to do.
//
// Where the kernel can be read (Linux), the silence is the socket's: the
// time since it last received data or an ACK (tcpi_last_data_recv,
// tcpi_last_ack_recv; a keep-alive probe's answer is an ACK). A connection
// whose keep-alive is answered is never silent, so never suspect. Past the
// path's idle timeout (and a half-second margin), the connection is
// judged: the transport turns keep-alive on its socket so that one probe
// leaves at once; an answer (tcpi_probes 0, the last ACK younger than the
// probe) proves it alive, and the socket's options are put back; two
// probes unanswered (the second sent 0.6 s after the first, so that one
// lost segment does not make a live connection dead; each given twice the
// round trip: tcpi_probes 2 or more, the last ACK older than the silence)
// prove it dead: [OutcomeDead], ERROR,
// evidence kernel. Bytes unacknowledged on the connection make it
// stale_reuse's business (a request sent into a dead path), not this one's.
//
// Elsewhere the fallback is silence as the caller sees it: no byte for the
// path's idle timeout while waiting, [OutcomeSilent], WARN, evidence
// timeout: a slow server and a dead path look alike there.
//
// The path's idle timeout is the one learned for the server (its
// [PathTimeouts] bracket, as stale_reuse uses it), else NATIdleTimeout;
// the alert says which. Each verdict teaches Paths: the silence a probe
// found alive, or dead.
//
// With KeepAlive (the cure's WithNATKeepAlive), a connection silent for
// half the path's timeout gets keep-alive on its own socket, every half
// timeout, so that the NAT keeps it; two probes unanswered (the flow was
// already gone, or went) are a dead verdict. With CloseDead
// (WithCloseDeadConnections), a dead connection is closed, so that the wait
// fails now. An HTTP/2 connection whose pings (http.HTTP2Config.
// SendPingTimeout) come below the path's timeout is kept alive by them and
// is not watched.
//
// The zero value is ready to use with the defaults; it must not be changed
// after first use, and is safe for concurrent use.
type StreamStall struct {
	NATIdleTimeout time.Duration // zero means DefaultNATIdleTimeout
	Paths          *PathTimeouts
	CloseDead      bool
	KeepAlive      bool
	// HTTP2PingTimeout is the base transport's http.HTTP2Config.
	// SendPingTimeout; zero if none.
	HTTP2PingTimeout time.Duration
}

func (d *StreamStall) natIdle() time.Duration {
	if d.NATIdleTimeout > 0 {
		return d.NATIdleTimeout
	}
	return DefaultNATIdleTimeout
}

// PathTimeout is the idle timeout silence on the path to host:port is
// compared with: the learned one where stale_reuse or this detector has
// learned one, else NATIdleTimeout.
func (d *StreamStall) PathTimeout(host string, port int) PathTimeoutFor {
	b := d.Paths.Get(host, port)
	p := PathTimeoutFor{Limit: b.Limit(d.natIdle()), Bracket: b}
	p.Learned = b.Upper > 0
	return p
}

// PingsCover reports whether HTTP/2 pings come often enough to keep a
// connection to host:port alive through the path's idle timeout.
func (d *StreamStall) PingsCover(host string, port int) bool {
	return d.HTTP2PingTimeout > 0 && d.HTTP2PingTimeout < d.PathTimeout(host, port).Limit
}

// Check decides, at now, what to do about one waiting request.
func (d *StreamStall) Check(now time.Time, w *Wait) Decision {
	path := d.PathTimeout(w.Host, w.Port)
	limit := path.Limit
	dec := Decision{Path: path}
	if w.Stale {
		dec.Act = ActStop
		return dec
	}
	if w.HTTP2 && d.PingsCover(w.Host, w.Port) {
		dec.Act = ActStop // the pings keep it alive, and net/http closes it if one goes unanswered
		return dec
	}
	if w.TCP == nil {
		if w.Quiet >= limit {
			dec.Act = ActStop
			dec.Alert = d.alert(now, w, path, OutcomeSilent, w.Quiet)
			return dec
		}
		dec.Next = max(limit-w.Quiet, streamEvery)
		return dec
	}
	tcp := w.TCP
	silence := min(tcp.LastDataRecv, tcp.LastAckRecv)
	switch {
	case tcp.State != "ESTABLISHED":
		// A reset, the peer's FIN, or the kernel's own keep-alive verdict
		// (ETIMEDOUT): the read is about to fail or end by itself.
		dec.Act = ActStop
		return dec
	case tcp.Unacked > 0:
		// Something sent is unacknowledged: stale_reuse's business, or
		// retransmissions the kernel is already timing.
		if w.Probe != nil {
			dec.Judged = true
			if !w.KeptAlive {
				dec.Act = ActRestore
			}
		}
		dec.Next = streamEvery
		return dec
	}
	if p := w.Probe; p != nil {
		since := now.Sub(p.At)
		switch {
		case tcp.Probes == 0 && tcp.LastAckRecv < since+verdictSlack:
			// Answered: alive at the silence it was probed at.
			d.Paths.Alive(w.Host, w.Port, p.Silence)
			dec.Judged, dec.Act = true, ActRestore
			if w.KeptAlive {
				dec.Act = ActWait
			}
			dec.Next = d.next(w, limit, silence)
			return dec
		case tcp.Probes >= 1 && !p.Again && since >= verdictWait(tcp) && tcp.LastAckRecv >= p.Silence:
			// The first probe is unanswered: a dead path, or one lost
			// segment. Send the second once the peer's rate limit lets it
			// answer.
			if since < probeAgainAfter {
				dec.Next = probeAgainAfter - since
				return dec
			}
			dec.Act = ActProbe
			dec.Next = verdictWait(tcp)
			return dec
		case tcp.Probes >= 2 && p.Again && since >= verdictWait(tcp) && tcp.LastAckRecv >= p.Silence:
			d.Paths.Dead(w.Host, w.Port, p.Silence)
			dec.Alert = d.alert(now, w, path, OutcomeDead, p.Silence) // the timeout it was judged against, before this verdict taught Paths
			dec.Act = ActStop
			if d.CloseDead {
				dec.Act = ActClose
			}
			return dec
		case since >= probeGiveUp:
			dec.Judged, dec.Act = true, ActRestore
			if w.KeptAlive {
				dec.Act = ActWait
			}
			dec.Next = streamEvery
			return dec
		}
		dec.Next = max(verdictWait(tcp)-since, 50*time.Millisecond)
		return dec
	}
	if w.KeptAlive {
		// The cure's keep-alive probes every KeepAliveEvery of silence: two
		// outstanding (the kernel sends the second an interval after the
		// first, past the peer's rate limit), the second past the wait for
		// its answer, mean the path is gone; one may be a lost segment.
		every := w.KeepAliveEvery
		if tcp.Probes >= 2 && silence >= 2*every+verdictWait(tcp) {
			d.Paths.Dead(w.Host, w.Port, silence)
			dec.Alert = d.alert(now, w, path, OutcomeDead, silence)
			dec.Act = ActStop
			if d.CloseDead {
				dec.Act = ActClose
			}
			return dec
		}
		dec.Next = max(every+verdictWait(tcp)-silence, streamEvery)
		if tcp.Probes >= 1 {
			dec.Next = max(2*every+verdictWait(tcp)-silence, 50*time.Millisecond)
		}
		return dec
	}
	if d.KeepAlive && advice.KeepAliveHelps(limit) && silence >= limit/2 {
		dec.Act = ActKeepAlive
		dec.Every = advice.KeepAliveEvery(limit)
		dec.Next = verdictWait(tcp)
		return dec
	}
	if silence >= limit+judgeMargin {
		dec.Act = ActProbe
		dec.Next = verdictWait(tcp)
		return dec
	}
	dec.Next = d.next(w, limit, silence)
	return dec
}

// next is when a connection silent for silence is next worth a look: when
// it reaches the moment to keep it alive (the cure) or to judge it, and
// no sooner than a second from now.
func (d *StreamStall) next(w *Wait, limit, silence time.Duration) time.Duration {
	due := limit + judgeMargin
	if d.KeepAlive && advice.KeepAliveHelps(limit) && !w.KeptAlive {
		due = limit / 2
	}
	return max(due-silence, streamEvery)
}

// verdictSlack is how much older than the probe the last ACK may be and
// still be its answer: the time between turning keep-alive on and the
// probe leaving.
const verdictSlack = 50 * time.Millisecond

// verdictWait is how long after turning keep-alive on its first probe is
// given to be answered: twice the round trip and a delayed ACK's wait, at
// least a quarter second.
func verdictWait(i *TCPInfo) time.Duration {
	return max(2*i.RTT+ackWait, 250*time.Millisecond)
}

func (d *StreamStall) alert(now time.Time, w *Wait, path PathTimeoutFor, outcome string, silence time.Duration) *Alert {
	a := &Alert{
		Detector:  StreamStallName,
		Outcome:   outcome,
		Time:      now,
		Host:      w.Host,
		Port:      w.Port,
		Threshold: path.Limit,
		Waited:    w.Quiet,
		IdleTime:  silence,
	}
	what := "the next bytes of its response body (a stream, a watch)"
	if w.Headers {
		what = "its response (a long poll, a slow first byte)"
	}
	seen := fmt.Sprintf("%s %s has waited %s for %s on a connection (to %s)", w.Method, advice.HostPort(w.Host, w.Port),
		advice.Round(w.Quiet), what, advice.Addr(w.RemoteAddr))
	if w.HTTP2 {
		seen += " shared by HTTP/2 streams"
	}
	prevent := fmt.Sprintf("Keep such connections alive below the path's idle timeout: %s (%s)", advice.KeepAliveSetting(path.Limit), advice.KeepAliveNote)
	if w.HTTP2 {
		prevent = "Keep HTTP/2 connections alive below the path's idle timeout: " + advice.HTTP2Ping(path.Limit) + " (" + advice.HTTP2PingNote + ")"
	}
	switch outcome {
	case OutcomeDead:
		a.Level = slog.LevelError
		a.Evidence = EvidenceKernel
		a.WireIdle, a.TCP = silence, w.TCP
		a.Message = fmt.Sprintf("%s that had received nothing for %s, past the path's idle timeout (%s), and answered none of "+
			"two keep-alive probes (kernel: %s): a NAT or firewall on the path has forgotten the connection, so nothing the server "+
			"sends can arrive", seen, advice.Round(silence), path, w.TCP)
		if d.CloseDead {
			a.Message += ". The connection is closed (WithCloseDeadConnections): the wait fails now with an error that wraps " +
				"conntrace.ErrDeadConnection, so the caller's retry (a re-watch, a reconnect) runs"
		} else {
			a.Message += ", and the wait will not end until its deadline, if it has one"
		}
		a.Summary = fmt.Sprintf("%s/%s: silent %s (path timeout %s), two keep-alive probes unanswered: the path forgot the connection",
			StreamStallName, OutcomeDead, advice.Short(silence), advice.Short(path.Limit))
		a.Advice = prevent + "; or let conntrace do it for such waits (WithNATKeepAlive), and close the connections it finds dead " +
			"(WithCloseDeadConnections). Give the wait a deadline the caller retries after."
	case OutcomeSilent:
		a.Level = slog.LevelWarn
		a.Evidence = EvidenceTimeout
		a.Message = fmt.Sprintf("%s and has had nothing for as long as the path's idle timeout (%s): a NAT or firewall on the "+
			"path may have forgotten the connection, in which case the wait will not end until its deadline. The kernel cannot "+
			"be read here, so a slow server looks the same", seen, path)
		a.Summary = fmt.Sprintf("%s/%s: nothing for %s, the path's idle timeout: the path may have forgotten the connection",
			StreamStallName, OutcomeSilent, advice.Short(silence))
		a.Advice = prevent + ". Give the wait a deadline the caller retries after."
	}
	return a
}
