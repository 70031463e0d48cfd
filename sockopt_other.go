//go:build !linux

package conntrace

import (
	"syscall"

	"github.com/conntrace/conntrace/internal/detect"
)

// readSocketOptions reads nothing outside Linux: the options are reported
// as unknown, never guessed from the dialer's settings.
func readSocketOptions(syscall.Conn) detect.SocketOptions {
	return detect.SocketOptions{}
}
