package detectors_test

import (
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// dialled is a timeline whose request got a response (HTTP major version
// proto) on a connection dialled for it, with socket options s.
func dialled(proto int, s detectors.SocketOptions) *detectors.Timeline {
	c := freshConn()
	c.Socket = s
	tl := timeline(c)
	tl.StatusCode, tl.ProtoMajor, tl.Response = 200, proto, at(time.Millisecond)
	return tl
}

var (
	goDefault = detectors.SocketOptions{Known: true, KeepAlive: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}
	kaOff     = detectors.SocketOptions{Known: true}
)

func TestKeepAliveGap(t *testing.T) {
	const nat = 350 * time.Second
	tests := []struct {
		name        string
		d           detectors.KeepAliveGap
		tl          func() *detectors.Timeline
		step        detectors.Step
		wantOutcome string // "" for no alert
		phrases     []string
	}{
		{name: "keep-alive off, pool holds forever", d: detectors.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detectors.Timeline { return dialled(1, kaOff) }, wantOutcome: detectors.OutcomeKeepAliveOff,
			phrases: []string{"TCP keep-alive off", "5m50s", "IdleConnTimeout: no limit or unknown", "for example 5m15s", "Idle: 2m55s, Interval: 2m55s"}},
		{name: "first probe after the NAT timeout", d: detectors.KeepAliveGap{NATIdleTimeout: 10 * time.Second, PoolIdleTimeout: 90 * time.Second},
			tl: func() *detectors.Timeline { return dialled(1, goDefault) }, wantOutcome: detectors.OutcomeKeepAliveLate,
			phrases: []string{"start only after 15s idle", "NAT idle timeout of 10s", "IdleConnTimeout: 1m30s", "Idle: 5s, Interval: 5s"}},
		{name: "first probe exactly at the NAT timeout", d: detectors.KeepAliveGap{NATIdleTimeout: 15 * time.Second},
			tl: func() *detectors.Timeline { return dialled(1, goDefault) }, wantOutcome: detectors.OutcomeKeepAliveLate},
		{name: "Dialer.KeepAlive 1s: first probe in time, the next 15s later", d: detectors.KeepAliveGap{NATIdleTimeout: 3 * time.Second},
			tl: func() *detectors.Timeline {
				return dialled(1, detectors.SocketOptions{Known: true, KeepAlive: true, Idle: time.Second, Interval: 15 * time.Second, Count: 9})
			}, wantOutcome: detectors.OutcomeKeepAliveLate,
			phrases: []string{"repeat only every 15s", "Idle: 1s, Interval: 1s"}},
		{name: "KeepAliveConfig 1s/1s against a 3s NAT", d: detectors.KeepAliveGap{NATIdleTimeout: 3 * time.Second},
			tl: func() *detectors.Timeline {
				return dialled(1, detectors.SocketOptions{Known: true, KeepAlive: true, Idle: time.Second, Interval: time.Second, Count: 9})
			}},
		{name: "Go's default probes in time", d: detectors.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detectors.Timeline { return dialled(1, goDefault) }},
		{name: "zero value: 350s NAT, default probes in time", d: detectors.KeepAliveGap{},
			tl: func() *detectors.Timeline { return dialled(1, goDefault) }},
		{name: "zero value: 350s NAT, keep-alive off", d: detectors.KeepAliveGap{},
			tl: func() *detectors.Timeline { return dialled(1, kaOff) }, wantOutcome: detectors.OutcomeKeepAliveOff},
		{name: "pool closes it before the NAT", d: detectors.KeepAliveGap{NATIdleTimeout: nat, PoolIdleTimeout: 90 * time.Second},
			tl: func() *detectors.Timeline { return dialled(1, kaOff) }},
		{name: "pool timeout equal to the NAT's", d: detectors.KeepAliveGap{NATIdleTimeout: nat, PoolIdleTimeout: nat},
			tl: func() *detectors.Timeline { return dialled(1, kaOff) }, wantOutcome: detectors.OutcomeKeepAliveOff},
		{name: "HTTP/2 pings keep it alive", d: detectors.KeepAliveGap{NATIdleTimeout: nat, HTTP2PingTimeout: 30 * time.Second},
			tl: func() *detectors.Timeline { return dialled(2, kaOff) }},
		{name: "HTTP/2 pings too late", d: detectors.KeepAliveGap{NATIdleTimeout: nat, HTTP2PingTimeout: nat},
			tl: func() *detectors.Timeline { return dialled(2, kaOff) }, wantOutcome: detectors.OutcomeKeepAliveOff,
			phrases: []string{"SendPingTimeout: 2m55s"}},
		{name: "pings do not help HTTP/1", d: detectors.KeepAliveGap{NATIdleTimeout: nat, HTTP2PingTimeout: 30 * time.Second},
			tl: func() *detectors.Timeline { return dialled(1, kaOff) }, wantOutcome: detectors.OutcomeKeepAliveOff},
		{name: "unknown options: never guess", d: detectors.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detectors.Timeline { return dialled(1, detectors.SocketOptions{}) }},
		{name: "reused connection: judged when dialled", d: detectors.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detectors.Timeline {
				tl := dialled(1, kaOff)
				tl.Conns[0].Reused = true
				return tl
			}},
		{name: "no response", d: detectors.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detectors.Timeline {
				tl := dialled(1, kaOff)
				tl.ProtoMajor = 0
				return tl
			}},
		{name: "only at StepResponse", d: detectors.KeepAliveGap{NATIdleTimeout: nat},
			tl: func() *detectors.Timeline { return dialled(1, kaOff) }, step: detectors.StepEnd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			step := detectors.StepResponse
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
			if tt.wantOutcome != "" && alerts[0].Detector != detectors.KeepAliveGapName {
				t.Errorf("detector: got %q", alerts[0].Detector)
			}
		})
	}
}

func TestSuggestKeepAlive(t *testing.T) {
	tests := []struct{ nat, want time.Duration }{
		{350 * time.Second, 175 * time.Second},
		{241 * time.Second, 120 * time.Second},
		{2 * time.Second, time.Second},
		{time.Second, time.Second},
		{200 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		if got := detectors.SuggestKeepAlive(tt.nat); got != tt.want {
			t.Errorf("SuggestKeepAlive(%v): got %v; want %v", tt.nat, got, tt.want)
		}
	}
}
