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

// churn plays n rounds of one dial and one refusal for host at now.
func churn(d *detect.PoolOverflow, now time.Time, host string, n int) (alerts []detect.Alert) {
	for range n {
		d.Dialed(now, host, 443)
		if a, ok := d.Overflowed(now, host, 443); ok {
			alerts = append(alerts, a)
		}
	}
	return alerts
}

func TestPoolOverflowChurn(t *testing.T) {
	d := &detect.PoolOverflow{}
	// A host that never overflowed is not watched: no flight, no state.
	if f := d.Begin("api.example.com", 443); f != nil {
		t.Fatalf("Begin before any overflow: got a flight; want nil")
	}
	d.Dialed(at(0), "api.example.com", 443)
	if d.Hosts() != 0 {
		t.Fatalf("dials alone: watching %d hosts; want 0", d.Hosts())
	}

	// The first refusal starts watching; 7 requests then run at once.
	if _, ok := d.Overflowed(at(0), "api.example.com", 443); ok {
		t.Fatalf("alert on the first refusal")
	}
	var flights []*detect.Flight
	for range 7 {
		flights = append(flights, d.Begin("api.example.com", 443))
	}
	for _, f := range flights {
		f.End()
	}
	var nilFlight *detect.Flight
	nilFlight.End() // safe

	// Four more refusals and five dials make five of each: the alert.
	alerts := churn(d, at(time.Second), "api.example.com", 4)
	if len(alerts) != 0 {
		t.Fatalf("alert before 5 dials: %+v", alerts)
	}
	d.Dialed(at(2*time.Second), "api.example.com", 443)
	a, ok := d.Overflowed(at(3*time.Second), "api.example.com", 443)
	if !ok {
		t.Fatalf("no alert after 6 refusals and 5 dials")
	}
	if a.Detector != detect.PoolOverflowName || a.Outcome != detect.OutcomeChurn || a.Level != slog.LevelWarn {
		t.Errorf("alert: got %s/%s at %v", a.Detector, a.Outcome, a.Level)
	}
	for _, want := range []string{"api.example.com:443", "refused 6 connections in 3s", "MaxIdleConnsPerHost (2, net/http's default)",
		"5 new connections", "up to 7 requests to it were in flight at once", "MaxIdleConnsPerHost to at least 7"} {
		if !strings.Contains(a.Message+" "+a.Advice, want) {
			t.Errorf("alert lacks %q:\n%s\n%s", want, a.Message, a.Advice)
		}
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
		if _, ok := d.Overflowed(at(time.Duration(i)*time.Millisecond), "api.example.com", 443); ok {
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
	for _, want := range []string{"MaxIdleConnsPerHost (10)", "not measured yet", "at least 11"} {
		if !strings.Contains(alerts[0].Message+" "+alerts[0].Advice, want) {
			t.Errorf("alert lacks %q:\n%s\n%s", want, alerts[0].Message, alerts[0].Advice)
		}
	}
}

// TestPoolOverflowBounded: the hosts it watches are bounded.
func TestPoolOverflowBounded(t *testing.T) {
	d := &detect.PoolOverflow{MaxHosts: 10}
	for i := range 100 {
		d.Overflowed(at(time.Duration(i)*time.Second), fmt.Sprintf("h%d.test", i), 443)
		if n := d.Hosts(); n > 10 {
			t.Fatalf("watching %d hosts; want at most 10", n)
		}
	}
	if f := d.Begin("h99.test", 443); f == nil {
		t.Errorf("the newest host is not watched")
	} else {
		f.End()
	}
}

// TestPoolOverflowConcurrent exercises every method from many goroutines,
// for the race detector, and checks no count is lost.
func TestPoolOverflowConcurrent(t *testing.T) {
	d := &detect.PoolOverflow{MinOverflows: 1000}
	d.Overflowed(at(0), "a.test", 443)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var alerts []detect.Alert
	for range 8 {
		wg.Go(func() {
			for range 200 {
				f := d.Begin("a.test", 443)
				d.Dialed(at(time.Second), "a.test", 443)
				if a, ok := d.Overflowed(at(time.Second), "a.test", 443); ok {
					mu.Lock()
					alerts = append(alerts, a)
					mu.Unlock()
				}
				f.End()
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
