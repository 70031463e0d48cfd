package detect

import (
	"time"
)

// KernelIdleGate is the pool idle time from which the transport asks the
// kernel about a reused connection. A NAT or firewall forgets a flow after
// seconds at the least, so a connection reused sooner cannot be stale, and
// a busy connection costs no system call: at most one reading per
// connection per second of idle.
const KernelIdleGate = time.Second

// tcpVerdict is what the kernel says of a request sent on a reused
// connection, from a reading taken when the connection was handed out and a
// later one.
type tcpVerdict int

const (
	tcpPending tcpVerdict = iota // nothing sure yet
	tcpAcked                     // the peer acknowledged new bytes: the connection is alive
	tcpDead                      // unacknowledged through the required retransmission timeouts
)

// Evidence the kernel verdicts rest on.
const (
	// deadRTOs is how many retransmission timeouts in a row, with nothing
	// acknowledged, make a connection dead: the request, its tail-loss
	// probe and two retransmissions all went unanswered (about 0.85 s at a
	// LAN's 200 ms minimum RTO). On a path that loses 15 % of packets each
	// way, one in about 170 live requests looks like that.
	deadRTOs = 2
	// doubtRTOs is the stronger evidence asked for when a dead verdict
	// would contradict what is known: the connection's path has lost
	// packets before, or it has carried a request after as long an idle
	// time. Six unanswered sends: one in about 2,000 on that lossy path.
	doubtRTOs = 4
	// ackWait is how long after its last retransmission an answer to it
	// is still awaited, at the least (a delayed ACK takes up to 40 ms).
	ackWait = 50 * time.Millisecond
)

// lossy reports whether the connection had lost at least one segment in
// fifty before the request (retransmitted, and not reported by the peer as
// a needless duplicate): its path loses packets, so a few unanswered
// retransmissions prove less.
func lossy(i *TCPInfo) bool {
	lost := i.TotalRetrans - i.DSACKDups
	return lost > 0 && lost*50 >= i.SegsOut
}

// judgeTCP compares the reading at hand-out (base) with a later one (now).
// rtos is the number of retransmission timeouts that make it dead.
//
// Acknowledged means BytesAcked grew: a reset can empty the send queue
// while the state still reads ESTABLISHED, so Unacked == 0 alone proves
// nothing. A state other than ESTABLISHED is left to the round trip's own
// error (failed or retried).
func judgeTCP(base, now *TCPInfo, rtos int) tcpVerdict {
	switch {
	case base == nil || now == nil:
		return tcpPending
	case now.BytesAcked > base.BytesAcked:
		return tcpAcked
	case now.State != "ESTABLISHED" || now.Unacked == 0:
		return tcpPending
	case now.Retransmits >= rtos && now.LastDataSent >= 2*now.RTT+ackWait:
		return tcpDead
	}
	return tcpPending
}

// firstCheck is when, after a connection was handed out, the kernel is
// first asked about it: past the second retransmission timeout (the
// tail-loss probe after about one RTO, the first retransmission after two,
// the second after four) and the wait for its answer.
func firstCheck(base *TCPInfo) time.Duration {
	return 4*rto(base) + 2*ackWait
}

// pollEvery is how often the kernel is asked again while its verdict is
// pending.
func pollEvery(base *TCPInfo) time.Duration {
	return min(max(rto(base)/2, 25*time.Millisecond), 500*time.Millisecond)
}

// rto is the reading's retransmission timeout, or Linux's 200 ms minimum
// plus a little if it is unknown.
func rto(i *TCPInfo) time.Duration {
	if i != nil && i.RTO > 0 {
		return i.RTO
	}
	return 204 * time.Millisecond
}
