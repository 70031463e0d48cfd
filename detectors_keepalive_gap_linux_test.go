package conntrace

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

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

	testkit.Get(t, client, url)
	alerts := tel.handledBy(detectors.KeepAliveGapName)
	if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeKeepAliveOff {
		t.Fatalf("after the first request: got alerts %+v; want one keepalive_gap/keepalive_off", tel.handled())
	}
	t.Logf("alert: %s\nadvice: %s", alerts[0].Message, alerts[0].Advice)
	span := tel.Spans.Ended()[0]
	got, _ := testkit.Event(span, vocab.EventGotConn)
	if v, _ := got.Value(vocab.AttrSocketKeepAlive); v.AsString() != "off" {
		t.Errorf("got_conn %s: got %q; want \"off\"", vocab.AttrSocketKeepAlive, v.AsString())
	}
	if !testkit.HasAll(got, vocab.AttrSocketUserTimeout.Float64(0)) {
		t.Errorf("got_conn lacks %s = 0 (the kernel's default)", vocab.AttrSocketUserTimeout)
	}

	// Wall clock on purpose: the warning read SO_KEEPALIVE off a real socket, and the hang is on that socket.
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
			testkit.Get(t, client, srv.URL)
			testkit.Get(t, client, srv.URL)
			if got := tel.handled(); len(got) != 0 {
				t.Errorf("got alerts %+v; want none", got)
			}
			got, _ := testkit.Event(tel.Spans.Ended()[0], vocab.EventGotConn)
			on, _ := got.Value(vocab.AttrSocketKeepAlive)
			idle, _ := got.Value(vocab.AttrSocketKeepAliveIdle)
			if wantOn := tt.wantIdle > 0; on.AsString() != map[bool]string{true: "on", false: "off"}[wantOn] || idle.AsFloat64() != tt.wantIdle {
				t.Errorf("got_conn: keepalive %q, idle %v; want on=%v, idle %v", on.AsString(), idle.AsFloat64(), wantOn, tt.wantIdle)
			}
			if _, ok := testkit.Event(tel.Spans.Ended()[1], vocab.EventGotConn); !ok {
				t.Fatal("no got_conn on the second request")
			}
			reused, _ := testkit.Event(tel.Spans.Ended()[1], vocab.EventGotConn)
			if _, ok := reused.Value(vocab.AttrSocketKeepAlive); ok {
				t.Errorf("a reused connection's got_conn carries socket options; they are read once, when dialled")
			}
		})
	}
}
