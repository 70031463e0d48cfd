package detect_test

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// base is the fixed time every test offsets from; no test reads the clock.
var base = time.Date(2024, time.March, 1, 12, 0, 0, 0, time.UTC)

// at returns base plus d.
func at(d time.Duration) time.Time { return base.Add(d) }

// detectorFunc adapts a function to detect.Detector.
type detectorFunc func(now time.Time, step detect.Step, t *detect.Timeline) ([]detect.Alert, time.Duration)

func (detectorFunc) Name() string { return "func" }

func (detectorFunc) Steps() detect.StepSet {
	return detect.StepsOf(detect.StepGotConn, detect.StepTimer, detect.StepResponse, detect.StepEnd)
}

func (f detectorFunc) Observe(now time.Time, step detect.Step, t *detect.Timeline) ([]detect.Alert, time.Duration) {
	return f(now, step, t)
}

// fixed returns a detector that always answers with the given alert outcomes
// (none if empty) and wake.
func fixed(wake time.Duration, outcomes ...string) detectorFunc {
	return func(time.Time, detect.Step, *detect.Timeline) ([]detect.Alert, time.Duration) {
		var alerts []detect.Alert
		for _, o := range outcomes {
			alerts = append(alerts, detect.Alert{Detector: "func", Outcome: o})
		}
		return alerts, wake
	}
}

func outcomes(alerts []detect.Alert) []string {
	var out []string
	for _, a := range alerts {
		out = append(out, a.Outcome)
	}
	return out
}

func TestStepString(t *testing.T) {
	tests := []struct {
		step detect.Step
		want string
	}{
		{detect.StepStart, "start"},
		{detect.StepGotConn, "got_conn"},
		{detect.StepPoolFull, "pool_full"},
		{detect.StepTimer, "timer"},
		{detect.StepResponse, "response"},
		{detect.StepEnd, "end"},
		{detect.Step(6), "step(6)"},
		{detect.Step(-1), "step(-1)"},
		{detect.Step(100), "step(100)"},
	}
	for _, tt := range tests {
		if got := tt.step.String(); got != tt.want {
			t.Errorf("Step(%d).String(): got %q; want %q", int(tt.step), got, tt.want)
		}
	}
}

func TestTimelineConn(t *testing.T) {
	first := detect.Conn{At: at(0), RemoteAddr: tcpAddr("10.0.0.1:443")}
	second := detect.Conn{At: at(time.Second), RemoteAddr: tcpAddr("10.0.0.2:443"), Reused: true}
	tests := []struct {
		name   string
		conns  []detect.Conn
		want   detect.Conn
		wantOK bool
	}{
		{name: "none", conns: nil, want: detect.Conn{}, wantOK: false},
		{name: "empty slice", conns: []detect.Conn{}, want: detect.Conn{}, wantOK: false},
		{name: "one", conns: []detect.Conn{first}, want: first, wantOK: true},
		{name: "last of several is current", conns: []detect.Conn{first, second}, want: second, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := &detect.Timeline{Conns: tt.conns}
			got := tl.Conn()
			if ok := got != nil; ok != tt.wantOK {
				t.Errorf("found: got %v; want %v", ok, tt.wantOK)
			}
			if got != nil && *got != tt.want {
				t.Errorf("conn: got %+v; want %+v", *got, tt.want)
			}
			if got != nil && got != &tl.Conns[len(tl.Conns)-1] {
				t.Error("conn: a copy; want the timeline's own, the last")
			}
		})
	}
}

func TestTimelineRaised(t *testing.T) {
	tests := []struct {
		name     string
		alerts   []detect.Alert
		detector string
		want     bool
	}{
		{name: "no alerts", alerts: nil, detector: detect.StaleReuseName, want: false},
		{name: "other detector only", alerts: []detect.Alert{{Detector: "other"}}, detector: detect.StaleReuseName, want: false},
		{name: "same detector", alerts: []detect.Alert{{Detector: detect.StaleReuseName}}, detector: detect.StaleReuseName, want: true},
		{name: "same detector after another", alerts: []detect.Alert{{Detector: "other"}, {Detector: detect.StaleReuseName}}, detector: detect.StaleReuseName, want: true},
		{name: "match is exact", alerts: []detect.Alert{{Detector: "stale_reuse_v2"}}, detector: detect.StaleReuseName, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := &detect.Timeline{Alerts: tt.alerts}
			if got := tl.Raised(tt.detector); got != tt.want {
				t.Errorf("Raised(%q): got %v; want %v", tt.detector, got, tt.want)
			}
		})
	}
}

func TestMultiObserve(t *testing.T) {
	tests := []struct {
		name         string
		multi        detect.Multi
		wantOutcomes []string
		wantWake     time.Duration
	}{
		{name: "empty", multi: detect.Multi{}, wantOutcomes: nil, wantWake: 0},
		{name: "nil", multi: nil, wantOutcomes: nil, wantWake: 0},
		{name: "all quiet", multi: detect.Multi{fixed(0), fixed(0)}, wantOutcomes: nil, wantWake: 0},
		{
			name:         "alerts concatenated in detector order",
			multi:        detect.Multi{fixed(0, "a1", "a2"), fixed(0), fixed(0, "b1")},
			wantOutcomes: []string{"a1", "a2", "b1"},
			wantWake:     0,
		},
		{name: "smallest positive wake", multi: detect.Multi{fixed(5 * time.Second), fixed(2 * time.Second), fixed(9 * time.Second)}, wantWake: 2 * time.Second},
		{name: "smallest wake first", multi: detect.Multi{fixed(time.Second), fixed(3 * time.Second)}, wantWake: time.Second},
		{name: "zero wake before positive ignored", multi: detect.Multi{fixed(0), fixed(4 * time.Second)}, wantWake: 4 * time.Second},
		{name: "zero wake after positive ignored", multi: detect.Multi{fixed(4 * time.Second), fixed(0)}, wantWake: 4 * time.Second},
		{name: "negative wake ignored", multi: detect.Multi{fixed(-time.Second), fixed(7 * time.Second)}, wantWake: 7 * time.Second},
		{
			name:         "alerts and wake together",
			multi:        detect.Multi{fixed(3*time.Second, "x"), fixed(0, "y")},
			wantOutcomes: []string{"x", "y"},
			wantWake:     3 * time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alerts, wake := tt.multi.Observe(at(0), detect.StepGotConn, &detect.Timeline{})
			if got := outcomes(alerts); !reflect.DeepEqual(got, tt.wantOutcomes) {
				t.Errorf("alerts: got %v; want %v", got, tt.wantOutcomes)
			}
			if wake != tt.wantWake {
				t.Errorf("wake: got %v; want %v", wake, tt.wantWake)
			}
		})
	}
}

// TestMultiSummary: an alert reaches the transport with a one-line
// summary, its detector's own, or the generic one made from its message
// for a detector that writes none, kept to SummaryMax.
func TestMultiSummary(t *testing.T) {
	long := strings.Repeat("é", 200)
	tests := []struct {
		name  string
		alert detect.Alert
		want  string
	}{
		{
			name:  "the detector's own",
			alert: detect.Alert{Detector: "d", Outcome: "o", Summary: "d/o: said by d", Message: "GET a: long, story"},
			want:  "d/o: said by d",
		},
		{
			name:  "first clause of the message",
			alert: detect.Alert{Detector: "stream_stall", Outcome: "silent", Message: "GET host:8080: no byte for 30s; probes unanswered, so the stream hangs"},
			want:  "stream_stall/silent: GET host:8080: no byte for 30s",
		},
		{
			name:  "cut at a comma before a period",
			alert: detect.Alert{Detector: "d", Outcome: "o", Message: "first, then. more"},
			want:  "d/o: first",
		},
		{
			name:  "cut to SummaryMax on a rune boundary",
			alert: detect.Alert{Detector: "d", Outcome: "o", Message: long},
			want:  "d/o: " + strings.Repeat("é", (detect.SummaryMax-len("...")-len("d/o: "))/2) + "...",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := detectorFunc(func(time.Time, detect.Step, *detect.Timeline) ([]detect.Alert, time.Duration) {
				return []detect.Alert{tt.alert}, 0
			})
			alerts, _ := detect.Multi{d}.Observe(at(0), detect.StepEnd, &detect.Timeline{})
			if len(alerts) != 1 || alerts[0].Summary != tt.want {
				t.Fatalf("summary %q; want %q", alerts[0].Summary, tt.want)
			}
			if len(alerts[0].Summary) > detect.SummaryMax {
				t.Errorf("summary of %d bytes; want at most %d", len(alerts[0].Summary), detect.SummaryMax)
			}
		})
	}
}

func TestMultiPassesArguments(t *testing.T) {
	tl := &detect.Timeline{Host: "example.com", Err: errors.New("boom")}
	tests := []struct {
		name string
		now  time.Time
		step detect.Step
	}{
		{name: "got conn", now: at(0), step: detect.StepGotConn},
		{name: "timer", now: at(3 * time.Second), step: detect.StepTimer},
		{name: "end", now: at(time.Minute), step: detect.StepEnd},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			check := detectorFunc(func(now time.Time, step detect.Step, got *detect.Timeline) ([]detect.Alert, time.Duration) {
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
			detect.Multi{check, check, check}.Observe(tt.now, tt.step, tl)
			if calls != 3 {
				t.Errorf("calls: got %v; want %v", calls, 3)
			}
		})
	}
}

// TestMultiSteps: Multi watches the union of its detectors' steps, and
// shows a step only to the detectors that watch it.
func TestForStep(t *testing.T) {
	stale, body, gap := &detect.StaleReuse{}, detect.BodyNotDrained{}, &detect.KeepAliveGap{}
	all := []detect.Detector{stale, body, gap}
	for step, want := range map[detect.Step]detect.Multi{
		detect.StepStart:    nil,
		detect.StepGotConn:  {stale},
		detect.StepResponse: {stale, gap},
		detect.StepEnd:      {body},
	} {
		if got := detect.ForStep(all, step); !reflect.DeepEqual(got, want) {
			t.Errorf("ForStep(%s): got %v; want %v", step, got, want)
		}
	}
	onlyEnd := endOnly{calls: new(int)}
	detect.ForStep([]detect.Detector{onlyEnd}, detect.StepGotConn).Observe(at(0), detect.StepGotConn, &detect.Timeline{})
	detect.ForStep([]detect.Detector{onlyEnd}, detect.StepEnd).Observe(at(0), detect.StepEnd, &detect.Timeline{})
	if *onlyEnd.calls != 1 {
		t.Errorf("a detector of StepEnd was called %d times for a got_conn and an end; want once", *onlyEnd.calls)
	}
	for _, tt := range []struct {
		set  detect.StepSet
		step detect.Step
		want bool
	}{
		{detect.StepsOf(), detect.StepGotConn, false},
		{detect.StepsOf(detect.StepTimer), detect.StepTimer, true},
		{detect.StepsOf(detect.StepTimer), detect.StepEnd, false},
		{detect.StepsOf(detect.StepGotConn, detect.StepEnd), detect.StepEnd, true},
	} {
		if got := tt.set.Has(tt.step); got != tt.want {
			t.Errorf("%08b.Has(%s): got %v; want %v", tt.set, tt.step, got, tt.want)
		}
	}
}

type endOnly struct{ calls *int }

func (endOnly) Name() string          { return "end_only" }
func (endOnly) Steps() detect.StepSet { return detect.StepsOf(detect.StepEnd) }
func (e endOnly) Observe(time.Time, detect.Step, *detect.Timeline) ([]detect.Alert, time.Duration) {
	*e.calls++
	return nil, 0
}

func TestDetectorNames(t *testing.T) {
	tests := []struct {
		d    detect.Detector
		want string
	}{
		{d: &detect.StaleReuse{}, want: detect.StaleReuseName},
		{d: &detect.StaleReuse{}, want: "stale_reuse"},
	}
	for _, tt := range tests {
		if got := tt.d.Name(); got != tt.want {
			t.Errorf("%T.Name(): got %v; want %v", tt.d, got, tt.want)
		}
	}
}

// tcpAddr parses "ip:port" for the tests' connections.
func tcpAddr(s string) net.Addr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))
}
