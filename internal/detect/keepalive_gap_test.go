package detect_test

import (
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// dialled is a timeline whose request got a response (HTTP major version
// proto) on a connection dialled for it, with socket options s.
func dialled(proto int, s detect.SocketOptions) *detect.Timeline {
	c := freshConn()
	c.Socket = s
	tl := timeline(c)
	tl.StatusCode, tl.ProtoMajor, tl.Response = 200, proto, at(time.Millisecond)
	return tl
}

var (
	goDefault = detect.SocketOptions{Known: true, KeepAlive: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}
	kaOff     = detect.SocketOptions{Known: true}
)

func TestKeepAliveGap(t *testing.T) {
	const nat = 350 * time.Second
	tests := []struct {
		name        string
		d           detect.KeepAliveGap
		tl          func() *detect.Timeline
		step        detect.Step
		wantOutcome string // "" for no alert
		phrases     []string
		summary     string // the whole Summary, where given
	}{
		{name: "keep-alive off, pool holds forever", d: detect.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detect.Timeline { return dialled(1, kaOff) }, wantOutcome: detect.OutcomeKeepAliveOff,
			phrases: []string{"TCP keep-alive off", "5m50s", "IdleConnTimeout: no limit or unknown", "for example 5m15s", "Idle: 2m55s, Interval: 2m55s"},
			summary: "keepalive_gap/keepalive_off: a new connection has TCP keep-alive off; the pool may idle it past the 5m50s NAT timeout"},
		{name: "first probe after the NAT timeout", d: detect.KeepAliveGap{NATIdleTimeout: 10 * time.Second, PoolIdleTimeout: 90 * time.Second},
			tl: func() *detect.Timeline { return dialled(1, goDefault) }, wantOutcome: detect.OutcomeKeepAliveLate,
			phrases: []string{"start only after 15s idle", "NAT idle timeout of 10s", "IdleConnTimeout: 1m30s", "Idle: 5s, Interval: 5s"},
			summary: "keepalive_gap/keepalive_late: keep-alive probes start after 15.0s idle; the pool may idle it past the 10.0s NAT timeout"},
		{name: "first probe exactly at the NAT timeout", d: detect.KeepAliveGap{NATIdleTimeout: 15 * time.Second},
			tl: func() *detect.Timeline { return dialled(1, goDefault) }, wantOutcome: detect.OutcomeKeepAliveLate},
		{name: "Dialer.KeepAlive 1s: first probe in time, the next 15s later", d: detect.KeepAliveGap{NATIdleTimeout: 3 * time.Second},
			tl: func() *detect.Timeline {
				return dialled(1, detect.SocketOptions{Known: true, KeepAlive: true, Idle: time.Second, Interval: 15 * time.Second, Count: 9})
			}, wantOutcome: detect.OutcomeKeepAliveLate,
			phrases: []string{"repeat only every 15s", "Idle: 1s, Interval: 1s"},
			summary: "keepalive_gap/keepalive_late: keep-alive probes repeat every 15.0s; the pool may idle it past the 3.0s NAT timeout"},
		{name: "KeepAliveConfig 1s/1s against a 3s NAT", d: detect.KeepAliveGap{NATIdleTimeout: 3 * time.Second},
			tl: func() *detect.Timeline {
				return dialled(1, detect.SocketOptions{Known: true, KeepAlive: true, Idle: time.Second, Interval: time.Second, Count: 9})
			}},
		{name: "Go's default probes in time", d: detect.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detect.Timeline { return dialled(1, goDefault) }},
		{name: "zero value: 350s NAT, default probes in time", d: detect.KeepAliveGap{},
			tl: func() *detect.Timeline { return dialled(1, goDefault) }},
		{name: "zero value: 350s NAT, keep-alive off", d: detect.KeepAliveGap{},
			tl: func() *detect.Timeline { return dialled(1, kaOff) }, wantOutcome: detect.OutcomeKeepAliveOff},
		{name: "pool closes it before the NAT", d: detect.KeepAliveGap{NATIdleTimeout: nat, PoolIdleTimeout: 90 * time.Second},
			tl: func() *detect.Timeline { return dialled(1, kaOff) }},
		{name: "pool timeout equal to the NAT's", d: detect.KeepAliveGap{NATIdleTimeout: nat, PoolIdleTimeout: nat},
			tl: func() *detect.Timeline { return dialled(1, kaOff) }, wantOutcome: detect.OutcomeKeepAliveOff},
		{name: "HTTP/2 pings keep it alive", d: detect.KeepAliveGap{NATIdleTimeout: nat, HTTP2PingTimeout: 30 * time.Second},
			tl: func() *detect.Timeline { return dialled(2, kaOff) }},
		{name: "HTTP/2 pings too late", d: detect.KeepAliveGap{NATIdleTimeout: nat, HTTP2PingTimeout: nat},
			tl: func() *detect.Timeline { return dialled(2, kaOff) }, wantOutcome: detect.OutcomeKeepAliveOff,
			phrases: []string{"SendPingTimeout: 2m55s"}},
		{name: "pings do not help HTTP/1", d: detect.KeepAliveGap{NATIdleTimeout: nat, HTTP2PingTimeout: 30 * time.Second},
			tl: func() *detect.Timeline { return dialled(1, kaOff) }, wantOutcome: detect.OutcomeKeepAliveOff},
		{name: "unknown options: never guess", d: detect.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detect.Timeline { return dialled(1, detect.SocketOptions{}) }},
		{name: "reused connection: judged when dialled", d: detect.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detect.Timeline {
				tl := dialled(1, kaOff)
				tl.Conns[0].Reused = true
				return tl
			}},
		{name: "no response", d: detect.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detect.Timeline {
				tl := dialled(1, kaOff)
				tl.ProtoMajor = 0
				return tl
			}},
		{name: "only at StepResponse", d: detect.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detect.Timeline { return dialled(1, kaOff) }, step: detect.StepEnd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			step := detect.StepResponse
			if tt.step != 0 {
				step = tt.step
			}
			alerts, wake := tt.d.Observe(at(2*time.Millisecond), step, tt.tl())
			if wake != 0 {
				t.Errorf("wake: got %v; want 0", wake)
			}
			if got := outcomes(alerts); len(got) != 0 && tt.wantOutcome == "" || tt.wantOutcome != "" && (len(got) != 1 || got[0] != tt.wantOutcome) {
				t.Fatalf("got outcomes %q; want %q", got, tt.wantOutcome)
			}
			for _, want := range tt.phrases {
				if !strings.Contains(alerts[0].Message+" "+alerts[0].Advice, want) {
					t.Errorf("alert lacks %q:\n%s\n%s", want, alerts[0].Message, alerts[0].Advice)
				}
			}
			if tt.summary != "" && (alerts[0].Summary != tt.summary || len(tt.summary) > detect.SummaryMax) {
				t.Errorf("summary:\n got %q\nwant %q (at most %d bytes)", alerts[0].Summary, tt.summary, detect.SummaryMax)
			}
			if tt.wantOutcome != "" && alerts[0].Detector != detect.KeepAliveGapName {
				t.Errorf("detector: got %q", alerts[0].Detector)
			}
		})
	}
}
