package detect_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// poolRequest is a request to host:443 as the transport shows it to the
// detector, step by step.
type poolRequest struct {
	d  *detect.PoolOverflow
	tl *detect.Timeline
}

func begin(d *detect.PoolOverflow, now time.Time, host string) *poolRequest {
	r := &poolRequest{d, &detect.Timeline{Host: host, Port: 443, Method: "GET", Start: now}}
	r.step(now, detect.StepStart)
	return r
}

func (r *poolRequest) step(now time.Time, step detect.Step) []detect.Alert {
	alerts, _ := r.d.Observe(now, step, r.tl)
	r.tl.Alerts = append(r.tl.Alerts, alerts...)
	return alerts
}

// dialed: the request was handed a new connection.
func (r *poolRequest) dialed(now time.Time) {
	r.tl.Conns = append(r.tl.Conns, detect.Conn{At: now})
	r.step(now, detect.StepGotConn)
}

// refused: the idle pool refused its connection.
func (r *poolRequest) refused(now time.Time) []detect.Alert { return r.step(now, detect.StepPoolFull) }

func (r *poolRequest) end(now time.Time) { r.step(now, detect.StepEnd) }

// churn plays n requests of one dial and one refusal each for host at now.
func churn(d *detect.PoolOverflow, now time.Time, host string, n int) (alerts []detect.Alert) {
	for range n {
		r := begin(d, now, host)
		r.dialed(now)
		alerts = append(alerts, r.refused(now)...)
		r.end(now)
	}
	return alerts
}

// refuse is a request whose connection was reused and then refused.
func refuse(d *detect.PoolOverflow, now time.Time, host string) []detect.Alert {
	r := begin(d, now, host)
	r.tl.Conns = append(r.tl.Conns, detect.Conn{At: now, Reused: true})
	r.step(now, detect.StepGotConn)
	alerts := r.refused(now)
	r.end(now)
	return alerts
}

func TestPoolOverflowChurn(t *testing.T) {
	d := &detect.PoolOverflow{}
	// A host that never overflowed is not watched: dials leave no state.
	r := begin(d, at(0), "api.example.com")
	r.dialed(at(0))
	r.end(at(0))
	if n := d.Hosts(); n != 0 {
		t.Fatalf("dials alone: watching %d hosts; want 0", n)
	}

	// The first refusal starts watching; 7 requests then run at once.
	if alerts := refuse(d, at(0), "api.example.com"); len(alerts) != 0 {
		t.Fatalf("alert on the first refusal")
	}
	var inFlight []*poolRequest
	for range 7 {
		inFlight = append(inFlight, begin(d, at(500*time.Millisecond), "api.example.com"))
	}
	for _, r := range inFlight {
		r.end(at(600 * time.Millisecond))
	}

	// Four more refusals and five dials make five of each: the alert.
	alerts := churn(d, at(time.Second), "api.example.com", 4)
	if len(alerts) != 0 {
		t.Fatalf("alert before 5 dials: %+v", alerts)
	}
	r = begin(d, at(2*time.Second), "api.example.com")
	r.dialed(at(2 * time.Second))
	r.end(at(2 * time.Second))
	alerts = refuse(d, at(3*time.Second), "api.example.com")
	if len(alerts) != 1 {
		t.Fatalf("no alert after 6 refusals and 5 dials")
	}
	a := alerts[0]
	if a.Detector != detect.PoolOverflowName || a.Outcome != detect.OutcomeChurn || a.Level != slog.LevelWarn {
		t.Errorf("alert: got %s/%s at %v", a.Detector, a.Outcome, a.Level)
	}
	for _, want := range []string{"api.example.com:443", "refused 6 connections in 3s", "MaxIdleConnsPerHost (2, net/http's default)",
		"5 new connections", "up to 7 requests to it were in flight at once", "MaxIdleConnsPerHost to at least 7"} {
		if !strings.Contains(a.Message+" "+a.Advice, want) {
			t.Errorf("alert lacks %q:\n%s\n%s", want, a.Message, a.Advice)
		}
	}
	if want := "pool_overflow/churn: the pool refused 6 idle connections in 3.0s at MaxIdleConnsPerHost 2; 5 dialled again"; a.Summary != want {
		t.Errorf("summary:\n got %q\nwant %q", a.Summary, want)
	}

	// Once per window.
	if alerts := churn(d, at(30*time.Second), "api.example.com", 10); len(alerts) != 0 {
		t.Errorf("second alert in the same window")
	}
	// A new window counts afresh: 4 rounds are not enough, the 5th alerts.
	if alerts := churn(d, at(61*time.Second), "api.example.com", 4); len(alerts) != 0 {
		t.Errorf("alert after 4 rounds of a new window")
	}
	if alerts := churn(d, at(62*time.Second), "api.example.com", 1); len(alerts) != 1 {
		t.Fatalf("got %d alerts after 5 rounds of a new window; want 1", len(alerts))
	}
}

// TestPoolOverflowNoDials: refusals without dials are a pool that was
// briefly too small, not churn.
func TestPoolOverflowNoDials(t *testing.T) {
	d := &detect.PoolOverflow{}
	for i := range 100 {
		if alerts := refuse(d, at(time.Duration(i)*time.Millisecond), "api.example.com"); len(alerts) != 0 {
			t.Fatalf("alert without dials at refusal %d", i)
		}
	}
}

// TestPoolOverflowSettings: the threshold, the window and the known pool
// size replace the defaults; the suggestion is above the pool size even
// before concurrency was measured.
func TestPoolOverflowSettings(t *testing.T) {
	d := &detect.PoolOverflow{MinOverflows: 2, Window: time.Second, MaxIdleConnsPerHost: 10}
	if alerts := churn(d, at(0), "a.test", 1); len(alerts) != 0 {
		t.Fatalf("alert after one round")
	}
	// Past the window: the first round is forgotten.
	if alerts := churn(d, at(1500*time.Millisecond), "a.test", 1); len(alerts) != 0 {
		t.Fatalf("alert though the window passed")
	}
	alerts := churn(d, at(1600*time.Millisecond), "a.test", 1)
	if len(alerts) != 1 {
		t.Fatalf("got %d alerts; want 1", len(alerts))
	}
	for _, want := range []string{"MaxIdleConnsPerHost (10)", "only 1 request to it was in flight at a time", "at least 11"} {
		if !strings.Contains(alerts[0].Message+" "+alerts[0].Advice, want) {
			t.Errorf("alert lacks %q:\n%s\n%s", want, alerts[0].Message, alerts[0].Advice)
		}
	}
}

// TestPoolOverflowBounded: the hosts it watches are bounded.
func TestPoolOverflowBounded(t *testing.T) {
	d := &detect.PoolOverflow{MaxHosts: 10}
	for i := range 100 {
		refuse(d, at(time.Duration(i)*time.Second), fmt.Sprintf("h%d.test", i))
		if n := d.Hosts(); n > 10 {
			t.Fatalf("watching %d hosts; want at most 10", n)
		}
	}
	// The newest host is watched: its requests in flight are counted, and
	// show in its alert.
	for range 3 {
		begin(d, at(200*time.Second), "h99.test") // never ended: in flight
	}
	if alerts := churn(d, at(200*time.Second), "h99.test", 5); len(alerts) != 1 || !strings.Contains(alerts[0].Message, "in flight at once") {
		t.Errorf("the newest host's alert: %+v; want one counting the requests in flight", alerts)
	}
}

// TestPoolOverflowConcurrent exercises every method from many goroutines,
// for the race detector, and checks no count is lost.
func TestPoolOverflowConcurrent(t *testing.T) {
	d := &detect.PoolOverflow{MinOverflows: 1000}
	refuse(d, at(0), "a.test")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var alerts []detect.Alert
	for range 8 {
		wg.Go(func() {
			for range 200 {
				got := churn(d, at(time.Second), "a.test", 1)
				mu.Lock()
				alerts = append(alerts, got...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(alerts) != 1 {
		t.Fatalf("got %d alerts; want 1", len(alerts))
	}
	if !strings.Contains(alerts[0].Message, "refused 1000 connections") && !strings.Contains(alerts[0].Message, "refused 1001 connections") {
		t.Errorf("alert counts: %s", alerts[0].Message)
	}
}
