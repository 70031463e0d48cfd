package detectors

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/conntrace/conntrace/internal/advice"
)

// Names of conntrace's detectors: the Alert.Detector values, and the
// conntrace.detector attribute of the alert metric and events.
const (
	// StaleReuseName: a request sent on a pooled connection that a NAT or
	// firewall had forgotten.
	StaleReuseName = "stale_reuse"
	// BodyNotDrainedName: an HTTP/1 response body closed before EOF, so the
	// connection was closed instead of pooled.
	BodyNotDrainedName = "body_not_drained"
	// KeepAliveGapName: a new connection whose TCP keep-alive cannot keep
	// a NAT's entry alive through the pool's idle time.
	KeepAliveGapName = "keepalive_gap"
	// PoolOverflowName: an idle pool too small for the concurrency, so
	// connections are closed and dialled again.
	PoolOverflowName = "pool_overflow"
	// StreamStallName: a request waiting for data (response headers, or
	// the next bytes of a stream, a watch, a long poll) on a connection
	// that stayed silent past the path's idle timeout, which a NAT or
	// firewall may have forgotten.
	StreamStallName = "stream_stall"
)

// Outcomes, the Alert.Outcome values, by detector.
const (
	// OutcomeHang (stale_reuse, ERROR): the request on a reused connection
	// went unacknowledged through retransmission timeouts (kernel
	// evidence), or, where the kernel cannot be read, had no response
	// within the hang timeout. Raised while the request still waits.
	OutcomeHang = "hang"
	// OutcomeFailed (stale_reuse, ERROR): the round trip on a connection
	// reused after the NAT idle timeout failed before a response.
	OutcomeFailed = "failed"
	// OutcomeRetried (stale_reuse, WARN): net/http gave up on such a
	// connection and sent the request again on another.
	OutcomeRetried = "retried"
	// OutcomeOK (stale_reuse, INFO): such a connection worked.
	OutcomeOK = "ok"
	// OutcomeBeyondFirstHop (stale_reuse, INFO): the peer's TCP
	// acknowledged the request, yet no response came within the hang
	// timeout: the delay is past the first hop (a proxy, a load balancer,
	// the server). Not a stale connection, and not counted as one.
	OutcomeBeyondFirstHop = "beyond_first_hop"
	// OutcomeClosedEarly (body_not_drained, WARN).
	OutcomeClosedEarly = "closed_early"
	// OutcomeKeepAliveOff (keepalive_gap, WARN): SO_KEEPALIVE is off.
	OutcomeKeepAliveOff = "keepalive_off"
	// OutcomeKeepAliveLate (keepalive_gap, WARN): the first probe, or the
	// interval between probes, comes only after the NAT idle timeout.
	OutcomeKeepAliveLate = "keepalive_late"
	// OutcomeChurn (pool_overflow, WARN).
	OutcomeChurn = "churn"
	// OutcomeDead (stream_stall, ERROR): a request waiting for data on a
	// connection silent past the path's idle timeout, whose two keep-alive
	// probes the peer did not answer (kernel evidence): the path has
	// forgotten the connection, and the wait will never end on its own.
	// Raised while it waits.
	OutcomeDead = "dead"
	// OutcomeSilent (stream_stall, WARN): where the kernel cannot be
	// read, a request that has had no byte for the path's idle timeout
	// while waiting for data: its connection may have been forgotten.
	// A suspicion, not evidence (Evidence "timeout").
	OutcomeSilent = "silent"
)

// Values of Alert.Evidence: what decided a stale-reuse verdict.
const (
	// EvidenceKernel: the kernel's TCP state of the socket (Linux
	// TCP_INFO): the request stayed unacknowledged through retransmission
	// timeouts, or the peer acknowledged it.
	EvidenceKernel = "kernel"
	// EvidenceTimeout: the fallback where the kernel cannot be read: the
	// connection sat idle at least the configured NAT idle timeout, and no
	// response came within the hang timeout.
	EvidenceTimeout = "timeout"
)

// Alert is one diagnosis. Message says what was seen, Advice what to change.
type Alert struct {
	Detector string     // the detector's name, such as "stale_reuse"
	Outcome  string     // detector-specific outcome, such as "hang"
	Level    slog.Level // Info: worth recording, no action needed; Warn and Error: act
	Time     time.Time  // when it was raised
	Host     string     // server host
	Port     int        // server port

	// IdleTime is how long the connection had been idle and Threshold the
	// limit it was compared with; zero where they do not apply.
	IdleTime  time.Duration
	Threshold time.Duration
	// Waited is how long the request had waited for a response when the
	// alert was raised; zero where it does not apply.
	Waited time.Duration

	// Evidence says what decided a stale-reuse verdict: EvidenceKernel or
	// EvidenceTimeout; empty for the other detectors. For EvidenceKernel,
	// WireIdle is how long the connection had been idle on the wire when it
	// was handed out, and TCP the kernel reading that decided.
	Evidence string
	WireIdle time.Duration
	TCP      *TCPInfo

	// Summary is the alert on one line of at most about 120 characters,
	// led by "detector/outcome: " and in plain units, such as
	// "stale_reuse/hang: reused after 6.0s idle, no ACK through 2 RTOs: the
	// path forgot the connection". It is what a trace shows first: the
	// conntrace.alert.summary attribute of the alert's event and of the
	// request's span, and the start of the span's status description when
	// the request ends in error. Message says the same at length, with the
	// addresses and the kernel's reading.
	Summary string
	Message string
	Advice  string

	// Suppressed counts the alerts of the same detector and host that were
	// held back by rate limiting since the last one that was delivered.
	Suppressed int
}

// TCPInfo is what the kernel reported of a connection's TCP socket at one
// moment: the fields of Linux's struct tcp_info (getsockopt TCP_INFO) that
// tell whether a request got through. The transport reads it; detectors
// only compare the values.
//
// A nil *TCPInfo means it was not read: not Linux, no socket under the
// connection (a custom net.Conn, net.Pipe), a reused connection idle less
// than a second, or a failed read.
type TCPInfo struct {
	At time.Time // when it was read
	// State is the kernel's name of the TCP state: "ESTABLISHED", or
	// "CLOSE_WAIT" after the peer's FIN, "CLOSE" after a reset, ...
	State string
	// Unacked is the number of segments sent and not yet acknowledged
	// (tcpi_unacked).
	Unacked int
	// Retransmits is the number of retransmission timeouts in a row since
	// an ACK last moved the window (tcpi_retransmits): 2 means the oldest
	// unacknowledged segment was sent, probed and retransmitted twice
	// without an answer. A tail-loss probe does not count.
	Retransmits int
	// TotalRetrans and SegsOut are the segments retransmitted and sent over
	// the connection's life (tcpi_total_retrans, tcpi_segs_out), and
	// DSACKDups how many of the retransmissions the peer reported as
	// duplicates (tcpi_dsack_dups, Linux 5.0+): sent again needlessly, as
	// a tail-loss probe often is on a LAN. Together, how lossy its path has
	// been.
	TotalRetrans int
	SegsOut      int
	DSACKDups    int
	RTO          time.Duration // retransmission timeout, backed off (tcpi_rto)
	RTT          time.Duration // smoothed round-trip time (tcpi_rtt)
	// BytesAcked counts the bytes the peer acknowledged over the
	// connection's life (tcpi_bytes_acked). It grows when, and only when,
	// the peer's TCP received something new: the only sure sign that a
	// request got through to it.
	BytesAcked uint64
	// Times since data was last sent (first sent or retransmitted), since
	// data was last received, and since an ACK was last received. The peer's
	// replies to keep-alive probes are ACKs.
	LastDataSent time.Duration
	LastDataRecv time.Duration
	LastAckRecv  time.Duration
	// Probes is the number of keep-alive (or zero-window) probes sent and
	// not answered (tcpi_probes): an answer of any kind resets it to 0.
	// Backoff is the exponential backoff of the retransmission timer
	// (tcpi_backoff).
	Probes  int
	Backoff int
}

// WireIdle is how long the socket had sent and received nothing: no data,
// no ACK, no reply to a keep-alive probe. A NAT or firewall times a flow
// out by this idle time, not by the pool's, which keep-alive probes do not
// reset.
func (i *TCPInfo) WireIdle() time.Duration {
	if i == nil {
		return 0
	}
	return min(i.LastDataSent, i.LastDataRecv, i.LastAckRecv)
}

// String describes the reading for people, as alerts quote it.
func (i *TCPInfo) String() string {
	if i == nil {
		return "not read"
	}
	s := fmt.Sprintf("state %s, unacknowledged segments %d, retransmission timeouts in a row %d (RTO %s, RTT %s), segments retransmitted %d of %d sent",
		i.State, i.Unacked, i.Retransmits, advice.Round(i.RTO), advice.Round(i.RTT), i.TotalRetrans, i.SegsOut)
	if i.Probes > 0 {
		s += fmt.Sprintf(", keep-alive probes unanswered %d, last data received %s ago, last ACK %s ago",
			i.Probes, advice.Round(i.LastDataRecv), advice.Round(i.LastAckRecv))
	}
	return s
}
