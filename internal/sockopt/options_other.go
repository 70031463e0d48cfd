//go:build !linux

package sockopt

import (
	"syscall"

	"github.com/conntrace/conntrace/internal/detect"
)

// readOptions reads nothing outside Linux: the options are reported
// as unknown, never guessed from the dialer's settings.
func readOptions(syscall.Conn) detect.SocketOptions {
	return detect.SocketOptions{}
}
