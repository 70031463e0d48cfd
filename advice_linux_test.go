package conntrace

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestKeepAliveAdvice pins what the stale-reuse advice says about Go's TCP
// keep-alive against real sockets: probes are on by default with a 15 s idle
// delay, a negative Dialer.KeepAlive turns them off, and KeepAliveConfig.Idle
// sets the delay. If Go changes its defaults, the advice must change too.
func TestKeepAliveAdvice(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tests := []struct {
		name     string
		dialer   net.Dialer
		wantOn   int
		wantIdle int // seconds; checked only when on
	}{
		{"zero Dialer", net.Dialer{}, 1, 15},
		{"KeepAlive 30s (http.DefaultTransport)", net.Dialer{KeepAlive: 30 * time.Second}, 1, 30},
		{"KeepAlive < 0", net.Dialer{KeepAlive: -1}, 0, 0},
		{"KeepAliveConfig.Idle", net.Dialer{KeepAlive: -1, KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 60 * time.Second}}, 1, 60},
	}
	for _, tt := range tests {
		c, err := tt.dialer.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var on, idle int
		var serr error
		raw.Control(func(fd uintptr) {
			on, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
			if serr == nil {
				idle, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE)
			}
		})
		c.Close()
		if serr != nil {
			t.Fatalf("%s: getsockopt: %v", tt.name, serr)
		}
		if on != tt.wantOn || (on == 1 && idle != tt.wantIdle) {
			t.Errorf("%s: SO_KEEPALIVE %d, TCP_KEEPIDLE %ds; want %d, %ds", tt.name, on, idle, tt.wantOn, tt.wantIdle)
		}
	}
}
