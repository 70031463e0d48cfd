//go:build !linux

package sockopt

import (
	"net"
	"syscall"

	"github.com/conntrace/conntrace/internal/detect"
)

// readOptions reads nothing outside Linux: the options are reported
// as unknown, never guessed from the dialer's settings.
func readOptions(syscall.Conn) detect.SocketOptions {
	return detect.SocketOptions{}
}

// SetKeepAlive writes nothing outside Linux: conntrace reads no socket
// there, so it changes none.
func SetKeepAlive(net.Conn, detect.SocketOptions) error {
	return errUnsupported
}
