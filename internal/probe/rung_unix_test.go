//go:build unix

package probe

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/internal/testkit"
)

// TestDialerKeepAliveOff checks on a real socket that a rung's connection
// sends no TCP keep-alive probes, which would refresh the NAT state the
// probe measures. A plain net.Dialer is the control: Go turns them on.
func TestDialerKeepAliveOff(t *testing.T) {
	addr := testkit.AcceptAndClose(t)
	s, err := Config{URL: "http://" + addr + "/"}.validate()
	if err != nil {
		t.Fatal(err)
	}
	base, _ := s.transport(time.Minute, &connTrace{})
	for _, tt := range []struct {
		name string
		dial func(context.Context, string, string) (net.Conn, error)
		want int
	}{
		{"rung dialer", base.DialContext, 0},
		{"control: plain net.Dialer", (&net.Dialer{}).DialContext, 1},
	} {
		c, err := tt.dial(t.Context(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		got, err := soKeepAlive(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("%s: SO_KEEPALIVE = %d; want %d", tt.name, got, tt.want)
		}
	}
}

func soKeepAlive(c net.Conn) (int, error) {
	if w, ok := sockopt.Find[*watchedConn](c); ok {
		c = w.NetConn() // the rung's dialer watches how its connections end
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, fmt.Errorf("%T is not a *net.TCPConn", c)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var v int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	}); err != nil {
		return 0, err
	}
	return v, serr
}
