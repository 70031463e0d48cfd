package conntrace

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conntrace/conntrace/detectors"
)

// readTCPInfo reads the kernel's TCP_INFO for the socket under c (looking
// through *tls.Conn and conntrace's dialer wrapper): one getsockopt, about a
// microsecond. Where there is no socket, or the read fails (the connection
// was closed under it), the reading is not Known.
func readTCPInfo(c net.Conn, at time.Time) detectors.TCPInfo {
	sc, ok := findConn[syscall.Conn](c)
	if !ok {
		return detectors.TCPInfo{}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return detectors.TCPInfo{}
	}
	var ti *unix.TCPInfo
	cerr := raw.Control(func(fd uintptr) {
		ti, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil || ti == nil {
		return detectors.TCPInfo{}
	}
	ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
	us := func(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }
	return detectors.TCPInfo{
		Known:        true,
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
	}
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
