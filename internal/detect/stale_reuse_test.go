package detect_test

import (
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// staleConn is a pooled connection that sat idle for idle, handed out at
// base.
func staleConn(idle time.Duration) detect.Conn {
	return detect.Conn{At: at(0), Reused: true, WasIdle: true, IdleTime: idle, RemoteAddr: tcpAddr("10.1.2.3:443")}
}

// freshConn is a connection dialled for the request, handed out at base.
func freshConn() detect.Conn {
	return detect.Conn{At: at(0), RemoteAddr: tcpAddr("10.1.2.4:443")}
}

// timeline is a GET to api.example.com:443 sent at base on the last of
// conns, with no response yet.
func timeline(conns ...detect.Conn) *detect.Timeline {
	return &detect.Timeline{
		Host:   "api.example.com",
		Port:   443,
		Method: "GET",
		Start:  at(-time.Second),
		Conns:  conns,
	}
}

// answered sets the time of the response: d after base.
func answered(tl *detect.Timeline, d time.Duration) *detect.Timeline {
	tl.Response = at(d)
	return tl
}

func TestSuspect(t *testing.T) {
	const natIdle = 350 * time.Second
	tests := []struct {
		name    string
		conn    detect.Conn
		natIdle time.Duration
		want    bool
	}{
		{name: "reused idle longer than NAT", conn: detect.Conn{Reused: true, WasIdle: true, IdleTime: 400 * time.Second}, natIdle: natIdle, want: true},
		{name: "idle exactly NAT timeout", conn: detect.Conn{Reused: true, WasIdle: true, IdleTime: natIdle}, natIdle: natIdle, want: true},
		{name: "idle just below NAT timeout", conn: detect.Conn{Reused: true, WasIdle: true, IdleTime: natIdle - time.Nanosecond}, natIdle: natIdle, want: false},
		{name: "not reused", conn: detect.Conn{Reused: false, WasIdle: true, IdleTime: 400 * time.Second}, natIdle: natIdle, want: false},
		{name: "not idle", conn: detect.Conn{Reused: true, WasIdle: false, IdleTime: 400 * time.Second}, natIdle: natIdle, want: false},
		{name: "idle too short", conn: detect.Conn{Reused: true, WasIdle: true, IdleTime: time.Second}, natIdle: natIdle, want: false},
		{name: "zero conn", conn: detect.Conn{}, natIdle: natIdle, want: false},
		{name: "threshold is the argument", conn: detect.Conn{Reused: true, WasIdle: true, IdleTime: time.Minute}, natIdle: time.Minute, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := detect.Suspect(&tt.conn, tt.natIdle); got != tt.want {
				t.Errorf("Suspect(%+v, %v): got %v; want %v", tt.conn, tt.natIdle, got, tt.want)
			}
		})
	}
}

// TestStaleReuseSettings checks the zero value's defaults (350s NAT idle
// timeout, 10s hang timeout) and that custom values replace them.
func TestStaleReuseSettings(t *testing.T) {
	tests := []struct {
		name          string
		d             *detect.StaleReuse
		idle          time.Duration
		step          detect.Step
		now           time.Duration // since the request was written
		wantWake      time.Duration
		wantOutcomes  []string
		wantThreshold time.Duration // of the alert, if one
	}{
		{name: "zero value: idle at default NAT timeout is suspect", d: &detect.StaleReuse{}, idle: 350 * time.Second, step: detect.StepGotConn, wantWake: 10 * time.Second},
		{name: "zero value: idle below default NAT timeout is not", d: &detect.StaleReuse{}, idle: 349 * time.Second, step: detect.StepGotConn, wantWake: 0},
		{name: "zero value: no hang before 10s", d: &detect.StaleReuse{}, idle: 400 * time.Second, step: detect.StepTimer, now: 9 * time.Second, wantWake: time.Second},
		{name: "zero value: hang at 10s", d: &detect.StaleReuse{}, idle: 400 * time.Second, step: detect.StepTimer, now: 10 * time.Second, wantOutcomes: []string{detect.OutcomeHang}, wantThreshold: 350 * time.Second},
		{name: "custom NAT timeout lower: suspect", d: &detect.StaleReuse{NATIdleTimeout: time.Minute}, idle: 90 * time.Second, step: detect.StepGotConn, wantWake: 10 * time.Second},
		{name: "custom NAT timeout lower: alert threshold", d: &detect.StaleReuse{NATIdleTimeout: time.Minute}, idle: 90 * time.Second, step: detect.StepTimer, now: 10 * time.Second, wantOutcomes: []string{detect.OutcomeHang}, wantThreshold: time.Minute},
		{name: "custom NAT timeout higher: not suspect", d: &detect.StaleReuse{NATIdleTimeout: 20 * time.Minute}, idle: 400 * time.Second, step: detect.StepTimer, now: time.Minute, wantWake: 0},
		{name: "custom hang timeout: wake", d: &detect.StaleReuse{HangTimeout: 3 * time.Second}, idle: 400 * time.Second, step: detect.StepGotConn, wantWake: 3 * time.Second},
		{name: "custom hang timeout: remaining", d: &detect.StaleReuse{HangTimeout: 3 * time.Second}, idle: 400 * time.Second, step: detect.StepTimer, now: 2 * time.Second, wantWake: time.Second},
		{name: "custom hang timeout: hang", d: &detect.StaleReuse{HangTimeout: 3 * time.Second}, idle: 400 * time.Second, step: detect.StepTimer, now: 3 * time.Second, wantOutcomes: []string{detect.OutcomeHang}, wantThreshold: 350 * time.Second},
		{name: "custom hang timeout longer than default", d: &detect.StaleReuse{HangTimeout: 30 * time.Second}, idle: 400 * time.Second, step: detect.StepTimer, now: 10 * time.Second, wantWake: 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alerts, wake := tt.d.Observe(at(tt.now), tt.step, timeline(staleConn(tt.idle)))
			if wake != tt.wantWake {
				t.Errorf("wake: got %v; want %v", wake, tt.wantWake)
			}
			if got := outcomes(alerts); !reflect.DeepEqual(got, tt.wantOutcomes) {
				t.Fatalf("alerts: got %v; want %v", got, tt.wantOutcomes)
			}
			if len(alerts) == 1 && alerts[0].Threshold != tt.wantThreshold {
				t.Errorf("Threshold: got %v; want %v", alerts[0].Threshold, tt.wantThreshold)
			}
		})
	}
}

// TestStaleReuseObserve covers when StaleReuse alerts and when it asks to be
// woken, step by step.
func TestStaleReuseObserve(t *testing.T) {
	stale := staleConn(400 * time.Second)
	tests := []struct {
		name         string
		step         detect.Step
		now          time.Duration // since the request was sent
		tl           *detect.Timeline
		wantWake     time.Duration
		wantOutcomes []string
	}{
		// StepGotConn: a timer only for a suspect request, never an alert.
		{name: "got conn: stale current conn", step: detect.StepGotConn, tl: timeline(stale), wantWake: 10 * time.Second},
		{name: "got conn: seen late", step: detect.StepGotConn, now: 2 * time.Second, tl: timeline(stale), wantWake: 8 * time.Second},
		{name: "got conn: fresh conn", step: detect.StepGotConn, tl: timeline(freshConn())},
		{name: "got conn: reused conn not idle", step: detect.StepGotConn, tl: timeline(detect.Conn{Reused: true})},
		{name: "got conn: reused conn idle briefly", step: detect.StepGotConn, tl: timeline(staleConn(time.Second))},
		{name: "got conn: retry after stale conn", step: detect.StepGotConn, now: time.Second, tl: timeline(stale, freshConn())},
		{name: "got conn: response already in", step: detect.StepGotConn, tl: answered(timeline(stale), 0)},
		{name: "got conn: no conns", step: detect.StepGotConn, tl: timeline()},

		// StepTimer.
		{name: "timer: before hang timeout", step: detect.StepTimer, now: 500 * time.Millisecond, tl: timeline(stale), wantWake: 9500 * time.Millisecond},
		{name: "timer: just before hang timeout", step: detect.StepTimer, now: 10*time.Second - time.Nanosecond, tl: timeline(stale), wantWake: time.Nanosecond},
		{name: "timer: at hang timeout", step: detect.StepTimer, now: 10 * time.Second, tl: timeline(stale), wantOutcomes: []string{detect.OutcomeHang}},
		{name: "timer: after hang timeout", step: detect.StepTimer, now: 25 * time.Second, tl: timeline(stale), wantOutcomes: []string{detect.OutcomeHang}},
		{name: "timer: response arrived", step: detect.StepTimer, now: 25 * time.Second, tl: answered(timeline(stale), 12*time.Second)},
		{name: "timer: response arrived early", step: detect.StepTimer, now: 5 * time.Second, tl: answered(timeline(stale), time.Second)},
		{name: "timer: fresh conn", step: detect.StepTimer, now: time.Hour, tl: timeline(freshConn())},
		{name: "timer: stale conn already replaced", step: detect.StepTimer, now: time.Hour, tl: timeline(stale, freshConn())},
		{name: "timer: another detector's alert does not silence", step: detect.StepTimer, now: 10 * time.Second, tl: func() *detect.Timeline {
			tl := timeline(stale)
			tl.Alerts = []detect.Alert{{Detector: "other", Outcome: detect.OutcomeHang}}
			return tl
		}(), wantOutcomes: []string{detect.OutcomeHang}},

		// Unknown steps are ignored.
		{name: "unknown step", step: detect.Step(9), now: time.Hour, tl: timeline(stale)},
	}
	d := &detect.StaleReuse{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alerts, wake := d.Observe(at(tt.now), tt.step, tt.tl)
			if wake != tt.wantWake {
				t.Errorf("wake: got %v; want %v", wake, tt.wantWake)
			}
			if got := outcomes(alerts); !reflect.DeepEqual(got, tt.wantOutcomes) {
				t.Errorf("alerts: got %v; want %v", got, tt.wantOutcomes)
			}
			if len(alerts) > 0 && wake != 0 {
				t.Errorf("wake with alert: got %v; want %v", wake, 0)
			}
		})
	}
}

func TestStaleReuseHangAlert(t *testing.T) {
	tests := []struct {
		name           string
		d              *detect.StaleReuse
		tl             *detect.Timeline
		now            time.Duration // since the request was written
		wantIdle       time.Duration
		wantThreshold  time.Duration
		wantMessage    []string // substrings
		wantSuggestion string   // the IdleConnTimeout suggested in Advice
	}{
		{
			name:           "defaults",
			d:              &detect.StaleReuse{},
			tl:             timeline(staleConn(400 * time.Second)),
			now:            12 * time.Second,
			wantIdle:       400 * time.Second,
			wantThreshold:  350 * time.Second,
			wantMessage:    []string{"6m40s", "5m50s", "12s", "GET", "api.example.com:443", "10.1.2.3:443"},
			wantSuggestion: "5m15s",
		},
		{
			name:           "azure NAT timeout",
			d:              &detect.StaleReuse{NATIdleTimeout: 4 * time.Minute},
			tl:             timeline(staleConn(5 * time.Minute)),
			now:            10 * time.Second,
			wantIdle:       5 * time.Minute,
			wantThreshold:  4 * time.Minute,
			wantMessage:    []string{"5m0s", "4m0s", "10s"},
			wantSuggestion: "3m36s",
		},
		{
			name: "stale conn after a fresh one",
			d:    &detect.StaleReuse{HangTimeout: 2 * time.Second},
			tl: func() *detect.Timeline {
				tl := timeline(freshConn(), staleConn(360*time.Second+400*time.Millisecond))
				tl.Conns[1].RemoteAddr = nil
				return tl
			}(),
			now:            2500 * time.Millisecond,
			wantIdle:       360*time.Second + 400*time.Millisecond,
			wantThreshold:  350 * time.Second,
			wantMessage:    []string{"6m0s", "5m50s", "2.5s", "unknown address"},
			wantSuggestion: "5m15s",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := at(tt.now)
			alerts, wake := tt.d.Observe(now, detect.StepTimer, tt.tl)
			if wake != 0 {
				t.Errorf("wake: got %v; want %v", wake, 0)
			}
			if len(alerts) != 1 {
				t.Fatalf("alerts: got %v; want %v", len(alerts), 1)
			}
			a := alerts[0]
			checks := []struct {
				field     string
				got, want any
			}{
				{"Detector", a.Detector, detect.StaleReuseName},
				{"Outcome", a.Outcome, detect.OutcomeHang},
				{"Level", a.Level, slog.LevelError},
				{"Time", a.Time, now},
				{"Host", a.Host, "api.example.com"},
				{"Port", a.Port, 443},
				{"Waited", a.Waited, tt.now},
				{"IdleTime", a.IdleTime, tt.wantIdle},
				{"Threshold", a.Threshold, tt.wantThreshold},
				{"Suppressed", a.Suppressed, 0},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s: got %v; want %v", c.field, c.got, c.want)
				}
			}
			for _, s := range tt.wantMessage {
				if !strings.Contains(a.Message, s) {
					t.Errorf("Message contains %q: got %v; want %v (Message: %s)", s, false, true, a.Message)
				}
			}
			for _, s := range []string{"IdleConnTimeout", tt.wantSuggestion} {
				if !strings.Contains(a.Advice, s) {
					t.Errorf("Advice contains %q: got %v; want %v (Advice: %s)", s, false, true, a.Advice)
				}
			}
		})
	}
}

// TestStaleReuseNoDoubleCounting checks that once the hang alert is on the
// timeline, the rest of the request raises nothing more.
func TestStaleReuseNoDoubleCounting(t *testing.T) {
	tests := []struct {
		name string
		step detect.Step
		now  time.Duration
		edit func(tl *detect.Timeline)
	}{
		{name: "later timer", step: detect.StepTimer, now: 30 * time.Second},
		{name: "end with error", step: detect.StepResponse, now: time.Minute, edit: func(tl *detect.Timeline) {
			tl.End = at(time.Minute)
			tl.Err = errors.New("context deadline exceeded")
		}},
		{name: "end after late response", step: detect.StepResponse, now: time.Minute, edit: func(tl *detect.Timeline) {
			tl.Response = at(50 * time.Second)
			tl.End = at(time.Minute)
		}},
		{name: "end after retry", step: detect.StepResponse, now: time.Minute, edit: func(tl *detect.Timeline) {
			tl.Conns = append(tl.Conns, freshConn())
			tl.Response = at(50 * time.Second)
			tl.End = at(time.Minute)
		}},
	}
	d := &detect.StaleReuse{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := timeline(staleConn(400 * time.Second))
			first, _ := d.Observe(at(10*time.Second), detect.StepTimer, tl)
			if got := outcomes(first); !reflect.DeepEqual(got, []string{detect.OutcomeHang}) {
				t.Fatalf("first alerts: got %v; want %v", got, []string{detect.OutcomeHang})
			}
			tl.Alerts = append(tl.Alerts, first...)
			if tt.edit != nil {
				tt.edit(tl)
			}
			alerts, wake := d.Observe(at(tt.now), tt.step, tl)
			if alerts != nil || wake != 0 {
				t.Errorf("after hang: got (%v, %v); want (%v, %v)", outcomes(alerts), wake, []string(nil), time.Duration(0))
			}
		})
	}
}

func TestStaleReuseEnd(t *testing.T) {
	stale := staleConn(400 * time.Second)
	resetErr := errors.New("read tcp 10.0.0.5:51234->10.1.2.3:443: read: connection reset by peer")
	tests := []struct {
		name          string
		conns         []detect.Conn
		err           error
		wantOutcomes  []string
		wantLevel     slog.Level
		wantMessage   []string // substrings
		wantAdvice    []string // substrings
		wantNotAdvice []string // substrings Advice must not have
		wantIdleTime  time.Duration
		wantThreshold time.Duration
	}{
		{
			name:         "stale conn then retry",
			conns:        []detect.Conn{stale, freshConn()},
			wantOutcomes: []string{detect.OutcomeRetried},
			wantLevel:    slog.LevelWarn,
			wantMessage:  []string{"6m40s", "5m50s", "retried"},
			wantAdvice:   []string{"IdleConnTimeout", "5m15s"},
			wantIdleTime: 400 * time.Second, wantThreshold: 350 * time.Second,
		},
		{
			name:         "stale current conn failed",
			conns:        []detect.Conn{stale},
			err:          resetErr,
			wantOutcomes: []string{detect.OutcomeFailed},
			wantLevel:    slog.LevelError,
			wantMessage:  []string{"6m40s", "5m50s", resetErr.Error()},
			wantAdvice:   []string{"IdleConnTimeout", "5m15s", "KeepAliveConfig{Enable: true, Idle: 2m55s, Interval: 2m55s}"},
			wantIdleTime: 400 * time.Second, wantThreshold: 350 * time.Second,
		},
		{
			name:          "stale conn worked",
			conns:         []detect.Conn{stale},
			wantOutcomes:  []string{detect.OutcomeOK},
			wantLevel:     slog.LevelInfo,
			wantMessage:   []string{"6m40s", "5m50s"},
			wantNotAdvice: []string{"IdleConnTimeout"},
			wantIdleTime:  400 * time.Second, wantThreshold: 350 * time.Second,
		},
		{name: "fresh conn failed", conns: []detect.Conn{freshConn()}, err: resetErr},
		{name: "fresh conn worked", conns: []detect.Conn{freshConn()}},
		{name: "conn idle below NAT timeout failed", conns: []detect.Conn{staleConn(349 * time.Second)}, err: resetErr},
		{name: "retry between fresh conns", conns: []detect.Conn{freshConn(), freshConn()}},
		{name: "no conn at all", conns: nil, err: errors.New("dial tcp: no such host")},
	}
	d := &detect.StaleReuse{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := timeline(tt.conns...)
			tl.Err = tt.err
			end := at(time.Second)
			tl.Response, tl.End = end, end
			alerts, wake := d.Observe(end, detect.StepResponse, tl)
			if wake != 0 {
				t.Errorf("wake: got %v; want %v", wake, 0)
			}
			if late, _ := d.Observe(end, detect.StepEnd, tl); len(late) != 0 {
				t.Errorf("StepEnd raised %v; the verdict belongs to StepResponse", outcomes(late))
			}
			if got := outcomes(alerts); !reflect.DeepEqual(got, tt.wantOutcomes) {
				t.Fatalf("alerts: got %v; want %v", got, tt.wantOutcomes)
			}
			if len(alerts) == 0 {
				return
			}
			a := alerts[0]
			if a.Level != tt.wantLevel {
				t.Errorf("Level: got %v; want %v", a.Level, tt.wantLevel)
			}
			if a.Detector != detect.StaleReuseName {
				t.Errorf("Detector: got %v; want %v", a.Detector, detect.StaleReuseName)
			}
			if !a.Time.Equal(end) {
				t.Errorf("Time: got %v; want %v", a.Time, end)
			}
			if a.Host != "api.example.com" || a.Port != 443 {
				t.Errorf("Host, Port: got %v, %v; want %v, %v", a.Host, a.Port, "api.example.com", 443)
			}
			if a.IdleTime != tt.wantIdleTime {
				t.Errorf("IdleTime: got %v; want %v", a.IdleTime, tt.wantIdleTime)
			}
			if a.Threshold != tt.wantThreshold {
				t.Errorf("Threshold: got %v; want %v", a.Threshold, tt.wantThreshold)
			}
			if a.Waited != 0 {
				t.Errorf("Waited: got %v; want %v", a.Waited, 0)
			}
			if a.Message == "" || a.Advice == "" {
				t.Errorf("Message and Advice set: got %v; want %v", a.Message != "" && a.Advice != "", true)
			}
			for _, s := range tt.wantMessage {
				if !strings.Contains(a.Message, s) {
					t.Errorf("Message contains %q: got %v; want %v (Message: %s)", s, false, true, a.Message)
				}
			}
			for _, s := range tt.wantAdvice {
				if !strings.Contains(a.Advice, s) {
					t.Errorf("Advice contains %q: got %v; want %v (Advice: %s)", s, false, true, a.Advice)
				}
			}
			for _, s := range tt.wantNotAdvice {
				if strings.Contains(a.Advice, s) {
					t.Errorf("Advice contains %q: got %v; want %v (Advice: %s)", s, true, false, a.Advice)
				}
			}
		})
	}
}

// TestStaleReuseRetryOntoStaleConn covers a request that the transport
// retried after a stale connection failed, and that got another pooled
// connection idle just as long (the pool often holds several connections of
// the same age). The request now waits, or fails, on a stale connection, so
// it must be reported like one that never retried: a hang while it hangs,
// "failed" when it fails without a response.
func TestStaleReuseRetryOntoStaleConn(t *testing.T) {
	stale1 := staleConn(400 * time.Second)
	stale2 := staleConn(401 * time.Second)
	stale2.RemoteAddr = tcpAddr("10.1.2.5:443")
	tests := []struct {
		name         string
		step         detect.Step
		now          time.Duration // since the second conn was handed out
		err          error
		wantWake     time.Duration
		wantOutcomes []string
		wantLevel    slog.Level
	}{
		{name: "handed a second stale conn", step: detect.StepGotConn, wantWake: detect.DefaultHangTimeout},
		{name: "second stale conn hangs", step: detect.StepTimer, now: 10 * time.Second, wantOutcomes: []string{detect.OutcomeHang}, wantLevel: slog.LevelError},
		{name: "second stale conn fails", step: detect.StepResponse, now: time.Second, err: errors.New("read: connection reset by peer"), wantOutcomes: []string{detect.OutcomeFailed}, wantLevel: slog.LevelError},
	}
	d := &detect.StaleReuse{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := timeline(stale1, stale2)
			if tt.step == detect.StepResponse {
				tl.End = at(tt.now)
				tl.Err = tt.err
			}
			alerts, wake := d.Observe(at(tt.now), tt.step, tl)
			if wake != tt.wantWake {
				t.Errorf("wake: got %v; want %v", wake, tt.wantWake)
			}
			if got := outcomes(alerts); !reflect.DeepEqual(got, tt.wantOutcomes) {
				t.Fatalf("alerts: got %v; want %v", got, tt.wantOutcomes)
			}
			if len(alerts) == 1 && alerts[0].Level != tt.wantLevel {
				t.Errorf("Level: got %v; want %v", alerts[0].Level, tt.wantLevel)
			}
		})
	}
}

// TestStaleReuseConcurrentUse checks that one StaleReuse serves concurrent
// requests (run with -race).
func TestStaleReuseConcurrentUse(t *testing.T) {
	tests := []struct {
		name       string
		goroutines int
	}{
		{name: "8 requests", goroutines: 8},
		{name: "64 requests", goroutines: 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &detect.StaleReuse{}
			var wg sync.WaitGroup
			got := make([][]string, tt.goroutines)
			for i := range tt.goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tl := timeline(staleConn(400 * time.Second))
					alerts, _ := d.Observe(at(10*time.Second), detect.StepTimer, tl)
					got[i] = outcomes(alerts)
				}()
			}
			wg.Wait()
			for i, g := range got {
				if !reflect.DeepEqual(g, []string{detect.OutcomeHang}) {
					t.Errorf("request %d alerts: got %v; want %v", i, g, []string{detect.OutcomeHang})
				}
			}
		})
	}
}

// TestStaleReuseKeepAliveAdvice: the keep-alive advice sets both Idle and
// Interval below the NAT timeout (half of it), in whole seconds (Go rounds
// up to whole seconds, and Linux probes again only an Interval later), and
// is left out when no whole second is below the timeout.
func TestStaleReuseKeepAliveAdvice(t *testing.T) {
	tests := []struct {
		natIdle time.Duration
		want    string // "" means no keep-alive advice
	}{
		{350 * time.Second, "Idle: 2m55s, Interval: 2m55s"},
		{3 * time.Second, "Idle: 1s, Interval: 1s"},
		{2 * time.Second, "Idle: 1s, Interval: 1s"},
		{time.Second, ""},
	}
	for _, tt := range tests {
		d := &detect.StaleReuse{NATIdleTimeout: tt.natIdle}
		tl := timeline(staleConn(tt.natIdle + time.Second))
		tl.Response, tl.Err = at(time.Millisecond), errors.New("connection reset by peer")
		alerts, _ := d.Observe(at(time.Millisecond), detect.StepResponse, tl)
		if len(alerts) != 1 {
			t.Fatalf("NAT %s: got %d alerts; want 1", tt.natIdle, len(alerts))
		}
		advice := alerts[0].Advice
		if tt.want == "" {
			if strings.Contains(advice, "KeepAliveConfig") {
				t.Errorf("NAT %s: advice suggests keep-alive; want none below one second: %s", tt.natIdle, advice)
			}
			continue
		}
		if !strings.Contains(advice, tt.want) {
			t.Errorf("NAT %s: advice lacks %q: %s", tt.natIdle, tt.want, advice)
		}
	}
}

// TestStaleReuseSummary: each verdict reads on one line, in plain units,
// within SummaryMax, led by stale_reuse/outcome: what a span list shows of
// the request before anyone opens its events.
func TestStaleReuseSummary(t *testing.T) {
	const sec = time.Second
	resetErr := errors.New("read: connection reset by peer")
	tests := []struct {
		name string
		d    *detect.StaleReuse
		tl   func() *detect.Timeline
		step detect.Step
		now  time.Duration
		want string
	}{
		{
			name: "hang, kernel", d: &detect.StaleReuse{}, step: detect.StepTimer, now: 916 * time.Millisecond,
			tl: func() *detect.Timeline {
				tl := timeline(kernelConn(6012 * time.Millisecond))
				tl.TCP = later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond)
				return tl
			},
			want: "stale_reuse/hang: reused after 6.0s idle, no ACK through 2 RTOs: the path forgot the connection",
		},
		{
			name: "hang, kernel, closed", d: &detect.StaleReuse{CloseDead: true}, step: detect.StepTimer, now: 916 * time.Millisecond,
			tl: func() *detect.Timeline {
				tl := timeline(kernelConn(6012 * time.Millisecond))
				tl.TCP = later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond)
				return tl
			},
			want: "stale_reuse/hang: reused after 6.0s idle, no ACK through 2 RTOs: the path forgot the connection; closed it",
		},
		{
			name: "hang, fallback", d: &detect.StaleReuse{}, step: detect.StepTimer, now: 12 * sec,
			tl:   func() *detect.Timeline { return timeline(staleConn(400 * sec)) },
			want: "stale_reuse/hang: reused after 6m40s idle (NAT timeout 5m50s), no reply in 12.0s: the path likely forgot the connection",
		},
		{
			name: "beyond the first hop", d: &detect.StaleReuse{}, step: detect.StepTimer, now: 10*sec + time.Millisecond,
			tl: func() *detect.Timeline {
				tl := timeline(kernelConn(5 * sec))
				tl.TCP = later(10*sec, "ESTABLISHED", 0, 0, 204, 10*sec)
				return tl
			},
			want: "stale_reuse/beyond_first_hop: the peer ACKed the request, no reply in 10.0s: the delay is past the first hop",
		},
		{
			name: "failed", d: &detect.StaleReuse{}, step: detect.StepResponse, now: sec,
			tl: func() *detect.Timeline {
				tl := answered(timeline(staleConn(400*sec)), sec)
				tl.Err = resetErr
				return tl
			},
			want: "stale_reuse/failed: reused after 6m40s idle (NAT timeout 5m50s), failed before any response",
		},
		{
			name: "retried", d: &detect.StaleReuse{}, step: detect.StepResponse, now: sec,
			tl:   func() *detect.Timeline { return answered(timeline(staleConn(400*sec), freshConn()), sec) },
			want: "stale_reuse/retried: a connection reused after 6m40s idle (NAT timeout 5m50s) failed; the request was resent on another",
		},
		{
			name: "ok", d: &detect.StaleReuse{}, step: detect.StepResponse, now: sec,
			tl:   func() *detect.Timeline { return answered(timeline(staleConn(400*sec)), sec) },
			want: "stale_reuse/ok: reused after 6m40s idle (NAT timeout 5m50s) and answered: the path kept the connection",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alerts, _ := tt.d.Observe(at(tt.now), tt.step, tt.tl())
			if len(alerts) != 1 {
				t.Fatalf("%d alerts; want 1", len(alerts))
			}
			if got := alerts[0].Summary; got != tt.want {
				t.Errorf("Summary:\n got %q\nwant %q", got, tt.want)
			}
			if n := len(alerts[0].Summary); n > detect.SummaryMax {
				t.Errorf("Summary of %d bytes; want at most %d", n, detect.SummaryMax)
			}
		})
	}
}
