//go:build !linux

package conntrace

import (
	"net"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// readTCPInfo reads nothing outside Linux: no kernel evidence, so the
// stale-reuse detector keeps to its fallback rule.
func readTCPInfo(net.Conn, time.Time) *detectors.TCPInfo {
	return nil
}
