package conntrace

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	"golang.org/x/sys/unix"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/vocab"
)

// acceptAndClose listens on loopback and closes whatever connects.
func acceptAndClose(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

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
// conntrace reads back, through TLS and its own dialer wrapper too, is what
// was set.
func TestSocketOptions(t *testing.T) {
	addr := acceptAndClose(t)
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
	in := newInstruments(noop.NewMeterProvider().Meter("test"))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.dialer.DialContext(context.Background(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tracked := newTrackedConn(c, in, addr)
			for name, conn := range map[string]net.Conn{
				"TCPConn":       c,
				"tls.Conn":      tls.Client(c, &tls.Config{}),
				"dialer's wrap": tracked,
				"both":          tls.Client(tracked, &tls.Config{}),
			} {
				if got := socketOptions(conn); got != tt.want {
					t.Errorf("%s: got %+v; want %+v", name, got, tt.want)
				}
			}
		})
	}
	// A conn with no socket under it: unknown, never guessed.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := socketOptions(a); got.Known {
		t.Errorf("net.Pipe: got %+v; want not Known", got)
	}
}

// TestKeepAliveGap reproduces the gap on real sockets through a natsim NAT
// of 300ms: the dialer turns keep-alive off and the pool keeps connections
// forever. keepalive_gap warns when the connection is dialled, reading
// SO_KEEPALIVE 0 off its socket; once it has sat idle past the NAT timeout,
// the next request on it hangs, as the warning said it would.
func TestKeepAliveGap(t *testing.T) {
	_, url := behindNAT(t, newServer(t, hello), 300*time.Millisecond)
	tel := newTelemetry(t)
	base := &http.Transport{DialContext: (&net.Dialer{KeepAlive: -1}).DialContext}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: NewTransport(base, tel.options(
		WithNATIdleTimeout(300*time.Millisecond), WithHangTimeout(200*time.Millisecond))...)}

	get(t, client, url)
	alerts := tel.handledBy(detectors.KeepAliveGapName)
	if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeKeepAliveOff {
		t.Fatalf("after the first request: got alerts %+v; want one keepalive_gap/keepalive_off", tel.handled())
	}
	t.Logf("alert: %s\nadvice: %s", alerts[0].Message, alerts[0].Advice)
	span := tel.spans.Ended()[0]
	got, _ := event(span, vocab.EventGotConn)
	if v, _ := got.Value(vocab.AttrSocketKeepAlive); v.AsString() != "off" {
		t.Errorf("got_conn %s: got %q; want \"off\"", vocab.AttrSocketKeepAlive, v.AsString())
	}
	if !hasAll(got, []attribute.KeyValue{vocab.AttrSocketUserTimeout.Float64(0)}) {
		t.Errorf("got_conn lacks %s = 0 (the kernel's default)", vocab.AttrSocketUserTimeout)
	}

	time.Sleep(400 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if _, err := client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request after the NAT timeout: got %v; want it to hang until its deadline", err)
	}
	if got := tel.handledBy(detectors.StaleReuseName); len(got) != 1 || got[0].Outcome != detectors.OutcomeHang {
		t.Errorf("got stale_reuse alerts %+v; want one hang", got)
	}
	if got := len(tel.handledBy(detectors.KeepAliveGapName)); got != 1 {
		t.Errorf("keepalive_gap alerts: got %d; want still 1 (the reused connection is not judged again)", got)
	}
}

// TestKeepAliveGapQuiet: no alert where the socket or the pool closes the
// gap, and the got_conn event shows the options that were read.
func TestKeepAliveGapQuiet(t *testing.T) {
	srv := newServer(t, hello)
	tests := []struct {
		name     string
		base     *http.Transport
		nat      time.Duration
		wantIdle float64 // TCP_KEEPIDLE on the event, seconds; 0 for keep-alive off
	}{
		{"Go's default dialer, AWS NAT", &http.Transport{}, 350 * time.Second, 15},
		{"KeepAliveConfig Idle and Interval 1s, 2s NAT",
			&http.Transport{DialContext: (&net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second}}).DialContext},
			2 * time.Second, 1},
		{"keep-alive off, pool closes first",
			&http.Transport{DialContext: (&net.Dialer{KeepAlive: -1}).DialContext, IdleConnTimeout: 90 * time.Second},
			350 * time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			defer tt.base.CloseIdleConnections()
			client := &http.Client{Transport: NewTransport(tt.base, tel.options(WithNATIdleTimeout(tt.nat))...)}
			get(t, client, srv.URL)
			get(t, client, srv.URL)
			if got := tel.handled(); len(got) != 0 {
				t.Errorf("got alerts %+v; want none", got)
			}
			got, _ := event(tel.spans.Ended()[0], vocab.EventGotConn)
			on, _ := got.Value(vocab.AttrSocketKeepAlive)
			idle, _ := got.Value(vocab.AttrSocketKeepAliveIdle)
			if wantOn := tt.wantIdle > 0; on.AsString() != map[bool]string{true: "on", false: "off"}[wantOn] || idle.AsFloat64() != tt.wantIdle {
				t.Errorf("got_conn: keepalive %q, idle %v; want on=%v, idle %v", on.AsString(), idle.AsFloat64(), wantOn, tt.wantIdle)
			}
			if _, ok := event(tel.spans.Ended()[1], vocab.EventGotConn); !ok {
				t.Fatal("no got_conn on the second request")
			}
			reused, _ := event(tel.spans.Ended()[1], vocab.EventGotConn)
			if _, ok := reused.Value(vocab.AttrSocketKeepAlive); ok {
				t.Errorf("a reused connection's got_conn carries socket options; they are read once, when dialled")
			}
		})
	}
}
