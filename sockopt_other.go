//go:build !linux

package conntrace

import (
	"syscall"

	"github.com/conntrace/conntrace/detectors"
)

// readSocketOptions reads nothing outside Linux: the options are reported
// as unknown, never guessed from the dialer's settings.
func readSocketOptions(syscall.Conn) detectors.SocketOptions {
	return detectors.SocketOptions{}
}
