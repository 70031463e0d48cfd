package sockopt

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/testkit"
)

// wrapper wraps a connection as conntrace's dialer does: NetConn returns
// the one under it.
type wrapper struct{ net.Conn }

func (w wrapper) NetConn() net.Conn { return w.Conn }

// sysctl reads an integer kernel setting, such as net/ipv4/tcp_keepalive_time.
func sysctl(t *testing.T, name string) int {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

// TestSocketOptions dials real sockets with keep-alive disabled, with Go's
// default, with Dialer.KeepAlive and with KeepAliveConfig (and a
// TCP_USER_TIMEOUT set through Dialer.Control), and checks that what
// conntrace reads back, through TLS and a wrapper like its dialer's too, is what
// was set. It also pins Go's keep-alive defaults (on, 15s idle and
// interval): advice.KeepAliveNote states them, and must change if Go does.
func TestSocketOptions(t *testing.T) {
	addr := testkit.AcceptAndClose(t)
	userTimeout := func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 5000)
		})
		return errors.Join(err, serr)
	}
	// With keep-alive off, Go leaves the socket's timers alone: the kernel's
	// defaults are read back, as the kernel holds them.
	kernel := detect.SocketOptions{Known: true,
		Idle:     time.Duration(sysctl(t, "net/ipv4/tcp_keepalive_time")) * time.Second,
		Interval: time.Duration(sysctl(t, "net/ipv4/tcp_keepalive_intvl")) * time.Second,
		Count:    sysctl(t, "net/ipv4/tcp_keepalive_probes"),
	}
	withUserTimeout := kernel
	withUserTimeout.UserTimeout = 5 * time.Second
	tests := []struct {
		name   string
		dialer net.Dialer
		want   detect.SocketOptions
	}{
		{"keep-alive disabled", net.Dialer{KeepAlive: -1}, kernel},
		{"Go's default", net.Dialer{}, detect.SocketOptions{Known: true, KeepAlive: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}},
		{"KeepAlive 30s (http.DefaultTransport)", net.Dialer{KeepAlive: 30 * time.Second},
			detect.SocketOptions{Known: true, KeepAlive: true, Idle: 30 * time.Second, Interval: 15 * time.Second, Count: 9}},
		{"KeepAliveConfig", net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 60 * time.Second, Interval: 5 * time.Second, Count: 3}},
			detect.SocketOptions{Known: true, KeepAlive: true, Idle: 60 * time.Second, Interval: 5 * time.Second, Count: 3}},
		{"TCP_USER_TIMEOUT", net.Dialer{KeepAlive: -1, Control: userTimeout}, withUserTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.dialer.DialContext(context.Background(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tracked := wrapper{c}
			for name, conn := range map[string]net.Conn{
				"TCPConn":       c,
				"tls.Conn":      tls.Client(c, &tls.Config{}),
				"dialer's wrap": tracked,
				"both":          tls.Client(tracked, &tls.Config{}),
			} {
				if got := Options(conn); got != tt.want {
					t.Errorf("%s: got %+v; want %+v", name, got, tt.want)
				}
			}
		})
	}
	// A conn with no socket under it: unknown, never guessed.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := Options(a); got.Known {
		t.Errorf("net.Pipe: got %+v; want not Known", got)
	}
}

// TestReadTCPInfo reads real sockets: the reading knows the state, sees a
// write acknowledged, and times the wire idle; it looks through TLS and the
// dialer wrapper, and knows nothing of a connection with no socket.
func TestReadTCPInfo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	before := TCPInfo(c, time.Now())
	if before == nil || before.State != "ESTABLISHED" || before.RTO <= 0 {
		t.Fatalf("fresh connection: %+v; want a known ESTABLISHED reading with an RTO", before)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	var after *detectors.TCPInfo
	testkit.WaitFor(t, 2*time.Second, "the 5 bytes to be acknowledged", func() bool {
		after = TCPInfo(c, time.Now())
		return after != nil && after.BytesAcked >= before.BytesAcked+5
	})
	if after.Unacked != 0 {
		t.Fatalf("after a 5-byte write: bytes acked %d (before %d), unacked %d; want 5 more, none unacked", after.BytesAcked, before.BytesAcked, after.Unacked)
	}
	// Wall clock on purpose: the kernel's own record of the last segment is what is read.
	time.Sleep(300 * time.Millisecond)
	if idle := TCPInfo(c, time.Now()).WireIdle(); idle < 250*time.Millisecond || idle > 2*time.Second {
		t.Errorf("wire idle after 300ms quiet: %v", idle)
	}

	// Through the dialer wrapper, and through TLS over it.
	tracked := wrapper{c}
	if TCPInfo(tracked, time.Now()) == nil {
		t.Error("through a wrapper: not known")
	}
	if TCPInfo(tls.Client(tracked, &tls.Config{}), time.Now()) == nil {
		t.Error("through *tls.Conn over a wrapper: not known")
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if got := TCPInfo(p1, time.Now()); got != nil {
		t.Errorf("net.Pipe: %+v; want not known", got)
	}

	c.Close()
	if got := TCPInfo(c, time.Now()); got != nil {
		t.Errorf("closed: %+v; want not known", got)
	}
	<-done
}

// BenchmarkReadTCPInfo is what a reuse after a second of idle pays at
// GotConn, and each kernel check on a timer: one getsockopt(TCP_INFO).
func BenchmarkReadTCPInfo(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if TCPInfo(c, now) == nil {
			b.Fatal("not known")
		}
	}
}
