//go:build !linux

package sockopt

import (
	"net"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// TCPInfo reads nothing outside Linux: no kernel evidence, so the
// stale-reuse detector keeps to its fallback rule.
func TCPInfo(net.Conn, time.Time) *detectors.TCPInfo {
	return nil
}

// ReadTCPInfo reads nothing outside Linux, and reports false.
func ReadTCPInfo(net.Conn, time.Time, *detectors.TCPInfo) bool { return false }

// Kernel reports false outside Linux: TCPInfo reads nothing.
func Kernel(net.Conn) bool { return false }
