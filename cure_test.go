package conntrace

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestCureOptionsValidate: a keep-alive that cannot come before the NAT
// idle timeout is refused at construction, naming both options, whatever
// their order; the same options with a timeout above a second are fine.
func TestCureOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		opts    []Option
		wantErr string // "" for no panic
	}{
		{name: "keep-alive, 1s timeout", opts: []Option{WithNATKeepAlive(), WithNATIdleTimeout(time.Second)},
			wantErr: "WithNATKeepAlive with WithNATIdleTimeout(1s)"},
		{name: "timeout first", opts: []Option{WithNATIdleTimeout(800 * time.Millisecond), WithNATKeepAlive()},
			wantErr: "WithNATKeepAlive with WithNATIdleTimeout(800ms)"},
		{name: "keep-alive, 1.5s timeout", opts: []Option{WithNATKeepAlive(), WithNATIdleTimeout(1500 * time.Millisecond)}},
		{name: "keep-alive, default timeout", opts: []Option{WithNATKeepAlive()}},
		{name: "close dead, 1s timeout", opts: []Option{WithCloseDeadConnections(), WithNATIdleTimeout(time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				r := recover()
				switch {
				case tt.wantErr == "" && r != nil:
					t.Fatalf("NewTransport panicked: %v", r)
				case tt.wantErr != "" && (r == nil || !strings.Contains(r.(string), tt.wantErr)):
					t.Fatalf("NewTransport: got panic %v; want one saying %q", r, tt.wantErr)
				}
			}()
			base := &http.Transport{}
			NewTransport(base, append(tt.opts, WithoutAudit())...)
		})
	}
}

// TestKeepAliveConfig: the change WithNATKeepAlive makes to a socket's
// options: keep-alive on, Idle and Interval lowered to the wanted value,
// never lengthened, Count untouched.
func TestKeepAliveConfig(t *testing.T) {
	const sec = time.Second
	on := func(idle, intvl time.Duration) detect.SocketOptions {
		return detect.SocketOptions{Known: true, KeepAlive: true, Idle: idle, Interval: intvl, Count: 9}
	}
	tests := []struct {
		name       string
		have       detect.SocketOptions
		want       time.Duration
		wantCfg    net.KeepAliveConfig
		wantChange bool
	}{
		{name: "off (Dialer.KeepAlive -1): turned on at want", have: detect.SocketOptions{Known: true, Idle: 7200 * sec, Interval: 75 * sec, Count: 9},
			want: 2 * sec, wantCfg: net.KeepAliveConfig{Enable: true, Idle: 2 * sec, Interval: 2 * sec, Count: -1}, wantChange: true},
		{name: "off, with a shorter idle set: kept", have: detect.SocketOptions{Known: true, Idle: sec, Interval: 75 * sec},
			want: 2 * sec, wantCfg: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: 2 * sec, Count: -1}, wantChange: true},
		{name: "Go's default 15s/15s: both lowered", have: on(15*sec, 15*sec),
			want: 2 * sec, wantCfg: net.KeepAliveConfig{Enable: true, Idle: 2 * sec, Interval: 2 * sec, Count: -1}, wantChange: true},
		{name: "Dialer.KeepAlive 1s sets only idle: interval lowered", have: on(sec, 15*sec),
			want: 2 * sec, wantCfg: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: 2 * sec, Count: -1}, wantChange: true},
		{name: "already shorter: unchanged", have: on(sec, sec),
			want: 2 * sec, wantCfg: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}},
		{name: "equal: unchanged", have: on(175*sec, 175*sec),
			want: 175 * sec, wantCfg: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, change := keepAliveConfig(tt.have, tt.want)
			if cfg != tt.wantCfg || change != tt.wantChange {
				t.Errorf("got %+v, change %v; want %+v, change %v", cfg, change, tt.wantCfg, tt.wantChange)
			}
		})
	}
}

// TestKeepAliveLimit: the idle time keep-alive must stay below, per
// dialled address: the path's learned bracket (its lower bound where both
// are known, else its upper one), else the configured NAT idle timeout.
func TestKeepAliveLimit(t *testing.T) {
	const sec = time.Second
	paths := new(detect.PathTimeouts)
	paths.Alive("both.test", 443, 40*sec)
	paths.Dead("both.test", 443, 60*sec)
	paths.Dead("upper.test", 80, 30*sec)
	paths.Alive("lower.test", 80, 500*sec)
	cu := cure{keepAlive: true, natIdle: 350 * sec, paths: paths}
	for addr, want := range map[string]time.Duration{
		"both.test:443":  40 * sec,
		"both.test:80":   350 * sec, // another port, another path
		"upper.test:80":  30 * sec,
		"lower.test:80":  350 * sec, // survived 500s: no limit learned
		"unknown.test:1": 350 * sec,
		"no-port":        350 * sec,
	} {
		if got := cu.limit(addr); got != want {
			t.Errorf("limit(%q): got %v; want %v", addr, got, want)
		}
	}
}

// TestReplay: conntrace resends (HTTP/2) exactly what net/http would
// resend on another connection.
func TestReplay(t *testing.T) {
	body := func() io.ReadCloser { return io.NopCloser(strings.NewReader("x")) }
	tests := []struct {
		name    string
		method  string
		header  http.Header
		body    io.ReadCloser
		getBody bool
		want    bool
		why     string
	}{
		{name: "GET", method: http.MethodGet, want: true},
		{name: "empty method", method: "", want: true},
		{name: "HEAD", method: http.MethodHead, want: true},
		{name: "OPTIONS with NoBody", method: http.MethodOptions, body: http.NoBody, want: true},
		{name: "TRACE", method: http.MethodTrace, want: true},
		{name: "POST", method: http.MethodPost, body: body(), getBody: true, why: "a POST is not resent"},
		{name: "PUT, no body", method: http.MethodPut, why: "a PUT is not resent"},
		{name: "POST with Idempotency-Key and GetBody", method: http.MethodPost, header: http.Header{"Idempotency-Key": {"k"}}, body: body(), getBody: true, want: true},
		{name: "POST with an empty X-Idempotency-Key", method: http.MethodPost, header: http.Header{"X-Idempotency-Key": nil}, want: true},
		{name: "POST with Idempotency-Key, no GetBody", method: http.MethodPost, header: http.Header{"Idempotency-Key": {"k"}}, body: body(),
			why: "its body cannot be rewound"},
		{name: "GET with a body, no GetBody", method: http.MethodGet, body: body(), why: "its body cannot be rewound"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{Method: tt.method, Header: tt.header, Body: tt.body}
			if tt.getBody {
				r.GetBody = func() (io.ReadCloser, error) { return body(), nil }
			}
			again, why := replay(r)
			if (again != nil) != tt.want || !strings.Contains(why, tt.why) {
				t.Fatalf("got %v, %q; want resent: %v, why containing %q", again != nil, why, tt.want, tt.why)
			}
			if again != nil && tt.getBody && again.Body == r.Body {
				t.Errorf("resent with the spent body; want GetBody's")
			}
		})
	}
}

// TestDeadConnError: the error of a request failed on a connection
// conntrace closed says why, matches ErrDeadConnection, keeps the error
// net/http returned, and has its own error.type.
func TestDeadConnError(t *testing.T) {
	read := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	dc := &deadClose{alert: detectors.Alert{Host: "203.0.113.2", Port: 8080, Waited: 917 * time.Millisecond, WireIdle: 5 * time.Second,
		TCP: &detectors.TCPInfo{Retransmits: 2}}}
	_, why := replay(&http.Request{Method: http.MethodPost})
	var err error = &deadConnError{dc: dc, method: http.MethodPost, why: why, err: read}
	if !errors.Is(err, ErrDeadConnection) || !errors.Is(err, net.ErrClosed) || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is: ErrDeadConnection %v, net.ErrClosed %v, DeadlineExceeded %v; want true, true, false",
			errors.Is(err, ErrDeadConnection), errors.Is(err, net.ErrClosed), errors.Is(err, context.DeadlineExceeded))
	}
	for _, want := range []string{"conntrace: closed the connection to 203.0.113.2:8080 as dead",
		"acknowledged nothing of the POST request through 2 retransmission timeouts in the 917ms after it was sent",
		"idle 5s on the wire", "a POST is not resent", "use of closed network connection"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %s", want, err)
		}
	}
	if got := errorType(context.Background(), err); got != vocab.ErrorTypeDeadConnection {
		t.Errorf("error.type: got %q; want %q", got, vocab.ErrorTypeDeadConnection)
	}
}

// TestResendFailsOnItsOwn: a resend that fails before it is handed a
// connection (the dial is refused) is not resent again, nor blamed on the
// dead connection: its own error is returned.
func TestResendFailsOnItsOwn(t *testing.T) {
	refused := errors.New("dial tcp 203.0.113.2:8080: connect: connection refused")
	calls := 0
	base := roundTripperFunc(func(*http.Request) (*http.Response, error) {
		calls++
		return nil, refused
	})
	tr := NewTransport(base, WithCloseDeadConnections(), WithoutSpans(), WithoutAudit())
	r, _ := http.NewRequest(http.MethodGet, "http://203.0.113.2:8080/", nil)
	req := tr.newRequest(r)
	req.tl.Conns = append(req.tl.Conns, detect.Conn{Reused: true})
	req.closed = &deadClose{conn: 0, alert: detectors.Alert{Host: "203.0.113.2", Port: 8080, TCP: &detectors.TCPInfo{Retransmits: 2}}}
	closedErr := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	_, err := req.resendAfterClose(r.WithContext(req), nil, closedErr)
	if calls != 1 || err != refused {
		t.Errorf("resent %d times, error %v; want resent once, failing with the dial's own error", calls, err)
	}
	req.end(detect.BodyNone, 0, err)
}

// TestCloseDeadNotOnTimeoutFallback: where the kernel cannot be read
// (net.Pipe connections, as off Linux), a hang decided by the timeout
// fallback never closes the connection: the request hangs to its deadline
// as without the option, and nothing is counted.
func TestCloseDeadNotOnTimeoutFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		lab := newNATLab(t, 350*time.Second, tel.options(WithCloseDeadConnections())...)
		if err := lab.get(30 * time.Second); err != nil {
			t.Fatalf("first request: %v", err)
		}
		time.Sleep(351 * time.Second)
		start := time.Now()
		if err := lab.get(30 * time.Second); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrDeadConnection) {
			t.Fatalf("stale request: got %v; want context.DeadlineExceeded, not ErrDeadConnection", err)
		}
		if got := time.Since(start); got != 30*time.Second {
			t.Errorf("stale request failed after %v; want the 30s deadline", got)
		}
		alerts := tel.handledBy(detectors.StaleReuseName)
		if len(alerts) != 1 || alerts[0].Evidence != detectors.EvidenceTimeout {
			t.Fatalf("alerts: got %+v; want one hang from the timeout fallback", alerts)
		}
		if got := tel.Collect(t).Total(vocab.MetricClosedDead); got != 0 {
			t.Errorf("%s: got %v; want 0", vocab.MetricClosedDead, got)
		}
		for _, span := range tel.Spans.Ended() {
			if n := testkit.Count(testkit.EventNames(span), vocab.EventClosedDead); n != 0 {
				t.Errorf("span has %d %s events; want none", n, vocab.EventClosedDead)
			}
		}
	})
}
