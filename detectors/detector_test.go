package detectors_test

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// base is the fixed time every test offsets from; no test reads the clock.
var base = time.Date(2024, time.March, 1, 12, 0, 0, 0, time.UTC)

// at returns base plus d.
func at(d time.Duration) time.Time { return base.Add(d) }

// detectorFunc adapts a function to detectors.Detector.
type detectorFunc func(now time.Time, step detectors.Step, t *detectors.Timeline) ([]detectors.Alert, time.Duration)

func (detectorFunc) Name() string { return "func" }

func (detectorFunc) Steps() detectors.StepSet {
	return detectors.StepsOf(detectors.StepGotConn, detectors.StepTimer, detectors.StepResponse, detectors.StepEnd)
}

func (f detectorFunc) Observe(now time.Time, step detectors.Step, t *detectors.Timeline) ([]detectors.Alert, time.Duration) {
	return f(now, step, t)
}

// fixed returns a detector that always answers with the given alert outcomes
// (none if empty) and wake.
func fixed(wake time.Duration, outcomes ...string) detectorFunc {
	return func(time.Time, detectors.Step, *detectors.Timeline) ([]detectors.Alert, time.Duration) {
		var alerts []detectors.Alert
		for _, o := range outcomes {
			alerts = append(alerts, detectors.Alert{Detector: "func", Outcome: o})
		}
		return alerts, wake
	}
}

func outcomes(alerts []detectors.Alert) []string {
	var out []string
	for _, a := range alerts {
		out = append(out, a.Outcome)
	}
	return out
}

func TestStepString(t *testing.T) {
	tests := []struct {
		step detectors.Step
		want string
	}{
		{detectors.StepGotConn, "got_conn"},
		{detectors.StepTimer, "timer"},
		{detectors.StepResponse, "response"},
		{detectors.StepEnd, "end"},
		{detectors.Step(4), "step(4)"},
		{detectors.Step(-1), "step(-1)"},
		{detectors.Step(100), "step(100)"},
	}
	for _, tt := range tests {
		if got := tt.step.String(); got != tt.want {
			t.Errorf("Step(%d).String(): got %q; want %q", int(tt.step), got, tt.want)
		}
	}
}

func TestTimelineConn(t *testing.T) {
	first := detectors.Conn{At: at(0), RemoteAddr: tcpAddr("10.0.0.1:443")}
	second := detectors.Conn{At: at(time.Second), RemoteAddr: tcpAddr("10.0.0.2:443"), Reused: true}
	tests := []struct {
		name   string
		conns  []detectors.Conn
		want   detectors.Conn
		wantOK bool
	}{
		{name: "none", conns: nil, want: detectors.Conn{}, wantOK: false},
		{name: "empty slice", conns: []detectors.Conn{}, want: detectors.Conn{}, wantOK: false},
		{name: "one", conns: []detectors.Conn{first}, want: first, wantOK: true},
		{name: "last of several is current", conns: []detectors.Conn{first, second}, want: second, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := &detectors.Timeline{Conns: tt.conns}
			got, ok := tl.Conn()
			if ok != tt.wantOK {
				t.Errorf("ok: got %v; want %v", ok, tt.wantOK)
			}
			if got != tt.want {
				t.Errorf("conn: got %+v; want %+v", got, tt.want)
			}
		})
	}
}

func TestTimelineRaised(t *testing.T) {
	tests := []struct {
		name     string
		alerts   []detectors.Alert
		detector string
		want     bool
	}{
		{name: "no alerts", alerts: nil, detector: detectors.StaleReuseName, want: false},
		{name: "other detector only", alerts: []detectors.Alert{{Detector: "other"}}, detector: detectors.StaleReuseName, want: false},
		{name: "same detector", alerts: []detectors.Alert{{Detector: detectors.StaleReuseName}}, detector: detectors.StaleReuseName, want: true},
		{name: "same detector after another", alerts: []detectors.Alert{{Detector: "other"}, {Detector: detectors.StaleReuseName}}, detector: detectors.StaleReuseName, want: true},
		{name: "match is exact", alerts: []detectors.Alert{{Detector: "stale_reuse_v2"}}, detector: detectors.StaleReuseName, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := &detectors.Timeline{Alerts: tt.alerts}
			if got := tl.Raised(tt.detector); got != tt.want {
				t.Errorf("Raised(%q): got %v; want %v", tt.detector, got, tt.want)
			}
		})
	}
}

func TestMultiObserve(t *testing.T) {
	tests := []struct {
		name         string
		multi        detectors.Multi
		wantOutcomes []string
		wantWake     time.Duration
	}{
		{name: "empty", multi: detectors.Multi{}, wantOutcomes: nil, wantWake: 0},
		{name: "nil", multi: nil, wantOutcomes: nil, wantWake: 0},
		{name: "all quiet", multi: detectors.Multi{fixed(0), fixed(0)}, wantOutcomes: nil, wantWake: 0},
		{
			name:         "alerts concatenated in detector order",
			multi:        detectors.Multi{fixed(0, "a1", "a2"), fixed(0), fixed(0, "b1")},
			wantOutcomes: []string{"a1", "a2", "b1"},
			wantWake:     0,
		},
		{name: "smallest positive wake", multi: detectors.Multi{fixed(5 * time.Second), fixed(2 * time.Second), fixed(9 * time.Second)}, wantWake: 2 * time.Second},
		{name: "smallest wake first", multi: detectors.Multi{fixed(time.Second), fixed(3 * time.Second)}, wantWake: time.Second},
		{name: "zero wake before positive ignored", multi: detectors.Multi{fixed(0), fixed(4 * time.Second)}, wantWake: 4 * time.Second},
		{name: "zero wake after positive ignored", multi: detectors.Multi{fixed(4 * time.Second), fixed(0)}, wantWake: 4 * time.Second},
		{name: "negative wake ignored", multi: detectors.Multi{fixed(-time.Second), fixed(7 * time.Second)}, wantWake: 7 * time.Second},
		{
			name:         "alerts and wake together",
			multi:        detectors.Multi{fixed(3*time.Second, "x"), fixed(0, "y")},
			wantOutcomes: []string{"x", "y"},
			wantWake:     3 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alerts, wake := tt.multi.Observe(at(0), detectors.StepGotConn, &detectors.Timeline{})
			if got := outcomes(alerts); !reflect.DeepEqual(got, tt.wantOutcomes) {
				t.Errorf("alerts: got %v; want %v", got, tt.wantOutcomes)
			}
			if wake != tt.wantWake {
				t.Errorf("wake: got %v; want %v", wake, tt.wantWake)
			}
		})
	}
}

func TestMultiPassesArguments(t *testing.T) {
	tl := &detectors.Timeline{Host: "example.com", Err: errors.New("boom")}
	tests := []struct {
		name string
		now  time.Time
		step detectors.Step
	}{
		{name: "got conn", now: at(0), step: detectors.StepGotConn},
		{name: "timer", now: at(3 * time.Second), step: detectors.StepTimer},
		{name: "end", now: at(time.Minute), step: detectors.StepEnd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			check := detectorFunc(func(now time.Time, step detectors.Step, got *detectors.Timeline) ([]detectors.Alert, time.Duration) {
				calls++
				if !now.Equal(tt.now) {
					t.Errorf("now: got %v; want %v", now, tt.now)
				}
				if step != tt.step {
					t.Errorf("step: got %v; want %v", step, tt.step)
				}
				if got != tl {
					t.Errorf("timeline: got %p; want %p", got, tl)
				}
				return nil, 0
			})
			detectors.Multi{check, check, check}.Observe(tt.now, tt.step, tl)
			if calls != 3 {
				t.Errorf("calls: got %v; want %v", calls, 3)
			}
		})
	}
}

// TestMultiSteps: Multi watches the union of its detectors' steps, and
// shows a step only to the detectors that watch it.
func TestMultiSteps(t *testing.T) {
	m := detectors.Multi{&detectors.StaleReuse{}, detectors.BodyNotDrained{}, &detectors.KeepAliveGap{}}
	want := detectors.StepsOf(detectors.StepGotConn, detectors.StepTimer, detectors.StepResponse, detectors.StepEnd)
	if got := m.Steps(); got != want {
		t.Errorf("Steps: got %08b; want %08b", got, want)
	}
	onlyEnd := endOnly{calls: new(int)}
	detectors.Multi{onlyEnd}.Observe(at(0), detectors.StepGotConn, &detectors.Timeline{})
	detectors.Multi{onlyEnd}.Observe(at(0), detectors.StepEnd, &detectors.Timeline{})
	if *onlyEnd.calls != 1 {
		t.Errorf("a detector of StepEnd was called %d times for a got_conn and an end; want once", *onlyEnd.calls)
	}
	for _, tt := range []struct {
		set  detectors.StepSet
		step detectors.Step
		want bool
	}{
		{detectors.StepsOf(), detectors.StepGotConn, false},
		{detectors.StepsOf(detectors.StepTimer), detectors.StepTimer, true},
		{detectors.StepsOf(detectors.StepTimer), detectors.StepEnd, false},
		{detectors.StepsOf(detectors.StepGotConn, detectors.StepEnd), detectors.StepEnd, true},
	} {
		if got := tt.set.Has(tt.step); got != tt.want {
			t.Errorf("%08b.Has(%s): got %v; want %v", tt.set, tt.step, got, tt.want)
		}
	}
}

type endOnly struct{ calls *int }

func (endOnly) Name() string             { return "end_only" }
func (endOnly) Steps() detectors.StepSet { return detectors.StepsOf(detectors.StepEnd) }
func (e endOnly) Observe(time.Time, detectors.Step, *detectors.Timeline) ([]detectors.Alert, time.Duration) {
	*e.calls++
	return nil, 0
}

func TestDetectorNames(t *testing.T) {
	tests := []struct {
		d    detectors.Detector
		want string
	}{
		{d: detectors.Multi{}, want: "multi"},
		{d: &detectors.StaleReuse{}, want: detectors.StaleReuseName},
		{d: &detectors.StaleReuse{}, want: "stale_reuse"},
	}
	for _, tt := range tests {
		if got := tt.d.Name(); got != tt.want {
			t.Errorf("%T.Name(): got %v; want %v", tt.d, got, tt.want)
		}
	}
}

func TestRound(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want time.Duration
	}{
		// From a minute up: whole seconds.
		{in: time.Minute, want: time.Minute},
		{in: 61*time.Second + 499*time.Millisecond, want: 61 * time.Second},
		{in: 61*time.Second + 500*time.Millisecond, want: 62 * time.Second},
		{in: 350*time.Second + 123456789, want: 350 * time.Second},
		// From a second up: milliseconds.
		{in: time.Second, want: time.Second},
		{in: 1234567890 * time.Nanosecond, want: 1235 * time.Millisecond},
		{in: 59*time.Second + 999400*time.Microsecond, want: 59*time.Second + 999*time.Millisecond},
		// Below a second: microseconds.
		{in: 999999999 * time.Nanosecond, want: time.Second},
		{in: 1234567 * time.Nanosecond, want: 1235 * time.Microsecond},
		{in: 400 * time.Nanosecond, want: 0},
		{in: 0, want: 0},
	}
	for _, tt := range tests {
		if got := detectors.Round(tt.in); got != tt.want {
			t.Errorf("Round(%v): got %v; want %v", tt.in, got, tt.want)
		}
	}
}

// tcpAddr parses "ip:port" for the tests' connections.
func tcpAddr(s string) net.Addr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))
}
