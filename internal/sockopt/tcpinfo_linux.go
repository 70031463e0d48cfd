package sockopt

import (
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conntrace/conntrace/detectors"
)

// TCPInfo reads the kernel's TCP_INFO for the socket under c (looking
// through *tls.Conn and conntrace's dialer wrapper): one getsockopt, about a
// microsecond. Where there is no socket, or the read fails (the connection
// was closed under it), it returns nil.
func TCPInfo(c net.Conn, at time.Time) *detectors.TCPInfo {
	var ti detectors.TCPInfo
	if !ReadTCPInfo(c, at, &ti) {
		return nil
	}
	return &ti
}

// ReadTCPInfo is TCPInfo into dst, for a caller that keeps the reading in
// memory of its own: it allocates only the RawConn that net hands out. It
// reports whether it read anything; if not, dst is unchanged.
func ReadTCPInfo(c net.Conn, at time.Time, dst *detectors.TCPInfo) bool {
	sc, ok := Find[syscall.Conn](c)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	// A pooled reader, its Control func bound once: a closure over
	// locals would escape through the RawConn interface on every read.
	r := tcpInfoReaders.Get().(*tcpInfoReader)
	defer tcpInfoReaders.Put(r)
	if err := raw.Control(r.control); err != nil || r.err != nil {
		return false
	}
	ti := &r.info
	ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
	us := func(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
	*dst = detectors.TCPInfo{
		At:           at,
		State:        tcpStateName(ti.State),
		Unacked:      int(ti.Unacked),
		Retransmits:  int(ti.Retransmits),
		TotalRetrans: int(ti.Total_retrans),
		SegsOut:      int(ti.Segs_out),
		DSACKDups:    int(ti.Dsack_dups),
		RTO:          us(ti.Rto),
		RTT:          us(ti.Rtt),
		BytesAcked:   ti.Bytes_acked,
		LastDataSent: ms(ti.Last_data_sent),
		LastDataRecv: ms(ti.Last_data_recv),
		LastAckRecv:  ms(ti.Last_ack_recv),
		Probes:       int(ti.Probes),
		Backoff:      int(ti.Backoff),
	}
	return true
}

// Kernel reports whether TCPInfo can read the kernel's state of c: there
// is a socket under it (on Linux). Where it can, a failed read means the
// socket is closed, not that the kernel has nothing to say.
func Kernel(c net.Conn) bool {
	_, ok := Find[syscall.Conn](c)
	return ok
}

// tcpInfoReader reads TCP_INFO into its own buffer. A kernel older than a
// field leaves it zero: tcpi_bytes_acked needs Linux 4.1, tcpi_segs_out
// 4.2, tcpi_dsack_dups 5.0.
type tcpInfoReader struct {
	info    unix.TCPInfo
	err     error
	control func(fd uintptr)
}

var tcpInfoReaders = sync.Pool{New: func() any {
	r := new(tcpInfoReader)
	r.control = r.read
	return r
}}

func (r *tcpInfoReader) read(fd uintptr) {
	r.info = unix.TCPInfo{}
	r.err = getsockoptTCPInfo(int(fd), &r.info)
}

// tcpStates are Linux's TCP states (include/net/tcp_states.h), by number.
var tcpStates = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}

func tcpStateName(s uint8) string {
	if int(s) < len(tcpStates) && s != 0 {
		return tcpStates[s]
	}
	return "UNKNOWN"
}
