package probe

import (
	"cmp"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/natsim"
	"github.com/conntrace/conntrace/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// hello answers every request with a short body.
var hello = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, "hello\n")
})

// behindNAT serves srv on an in-memory natsim.Network whose NAT forgets
// flows idle longer than natIdle, and returns its DialContext. It must run
// inside a synctest bubble; everything stops before the bubble ends.
func behindNAT(t *testing.T, natIdle time.Duration, srv *http.Server) func(context.Context, string, string) (net.Conn, error) {
	n := natsim.NewNetwork(natIdle)
	t.Cleanup(func() { n.Close() }) // registered first: runs after Serve's cleanup has closed srv
	testkit.Serve(t, srv, n.Listener())
	return n.DialContext
}

// TestRunFindsNATTimeout runs the whole probe, ladder and refining rounds,
// against a NAT with a known idle timeout, in fake time: the bracket must
// hold the timeout and be no wider than the resolution, and its kind must
// be a silent drop. natsim forgets a flow idle longer than its timeout, so
// the timeout T must satisfy Low <= T < High.
func TestRunFindsNATTimeout(t *testing.T) {
	tests := []struct {
		name       string
		natIdle    time.Duration
		ladder     []time.Duration // nil: the default
		max        time.Duration
		resolution time.Duration
	}{
		{"default ladder, 95s NAT", 95 * time.Second, nil, 0, 0},
		{"default ladder, AWS NAT 350s", 350 * time.Second, nil, 0, 0},
		{"default ladder, GCP NAT 20m minus 1s", 20*time.Minute - time.Second, nil, 0, 0},
		{"own ladder, 7s NAT, 250ms resolution", 7 * time.Second, []time.Duration{time.Second, 4 * time.Second, 16 * time.Second}, 16 * time.Second, 250 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := Config{
					URL:         "http://backend.test/health",
					Ladder:      tt.ladder,
					Max:         tt.max,
					Resolution:  tt.resolution,
					DialContext: behindNAT(t, tt.natIdle, &http.Server{Handler: hello}),
				}
				start := time.Now()
				rep, err := Run(t.Context(), cfg)
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				took := time.Since(start)
				res := cmp.Or(tt.resolution, DefaultResolution)
				b := rep.Bracket
				if b == nil {
					t.Fatalf("no bracket; rungs:\n%s", rungTable(rep))
				}
				if !(b.Low <= tt.natIdle && tt.natIdle < b.High) {
					t.Errorf("bracket (%v, %v] does not hold the NAT timeout %v; rungs:\n%s", b.Low, b.High, tt.natIdle, rungTable(rep))
				}
				if b.Width() > res {
					t.Errorf("bracket (%v, %v] is wider than the resolution %v", b.Low, b.High, res)
				}
				if b.Kind != SilentDrop || b.How != HowNoResponse {
					t.Errorf("kind %s/%s; want %s/%s", b.Kind, b.How, SilentDrop, HowNoResponse)
				}
				// The verdict comes from conntrace's own detector: the
				// rung at High was ended by a stale_reuse hang alert.
				high := rungAt(rep, b.High)
				if high.Alert == nil || high.Alert.Detector != detectors.StaleReuseName || high.Alert.Outcome != detectors.OutcomeHang {
					t.Errorf("rung at %v: alert %+v; want stale_reuse/hang", b.High, high.Alert)
				}
				if high.Waited != DefaultTimeout {
					t.Errorf("rung at %v waited %v for its answer; want the timeout %v", b.High, high.Waited, DefaultTimeout)
				}
				a := rep.Advice
				if a == nil || a.IdleConnTimeout >= b.Low || a.KeepAliveIdle >= b.Low || a.KeepAliveIdle == 0 || a.NATIdleTimeout != b.Low {
					t.Errorf("advice %+v; want IdleConnTimeout and KeepAliveIdle below %v, NATIdleTimeout %v", a, b.Low, b.Low)
				}
				// Ladder rungs longer than the first change stop once it
				// is known: the probe never waits out the whole ladder
				// when it needs not.
				var firstChange time.Duration
				for _, g := range rep.Rungs {
					if g.Round == 0 && g.Result.Changed() && firstChange == 0 {
						firstChange = g.Idle
					}
				}
				for _, g := range rep.Rungs {
					if g.Round == 0 && g.Idle > firstChange && g.Result != Skipped {
						t.Errorf("ladder rung %v: %s; want it skipped (a shorter rung already changed)", g.Idle, g.Result)
					}
				}
				if rep.Elapsed != took {
					t.Errorf("Elapsed %v; want %v", rep.Elapsed, took)
				}
				t.Logf("NAT %v: bracket (%v, %v] in %d rungs, %v of fake time", tt.natIdle, b.Low, b.High, len(rep.Rungs), took)
			})
		})
	}
}

// TestRunServerClosesIdle: a server whose own idle timeout closes
// connections (a FIN the client sees) is "closed by peer", never a silent
// drop, and keep-alive is not advised as a cure.
func TestRunServerClosesIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const serverIdle = 45 * time.Second
		cfg := Config{
			URL: "http://backend.test/",
			// A NAT that never forgets: only the server ends connections.
			DialContext: behindNAT(t, 24*time.Hour, &http.Server{Handler: hello, IdleTimeout: serverIdle}),
		}
		rep, err := Run(t.Context(), cfg)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		b := rep.Bracket
		if b == nil {
			t.Fatalf("no bracket; rungs:\n%s", rungTable(rep))
		}
		if b.Kind != ClosedByPeer || b.How != HowClosedIdle || b.End != EndFIN {
			t.Errorf("kind %s/%s/%q; want %s/%s/%q", b.Kind, b.How, b.End, ClosedByPeer, HowClosedIdle, EndFIN)
		}
		if !(b.Low < serverIdle && serverIdle < b.High) || b.Width() > DefaultResolution {
			t.Errorf("bracket (%v, %v]; want it to hold %v within %v", b.Low, b.High, serverIdle, DefaultResolution)
		}
		for _, g := range rep.Rungs {
			if g.Result == SilentDrop {
				t.Errorf("rung %v: silent drop; a server closing idle connections must never look like one", g.Idle)
			}
		}
		if a := rep.Advice; a == nil || a.IdleConnTimeout >= b.Low || a.KeepAliveIdle != 0 || a.NATIdleTimeout != 0 {
			t.Errorf("advice %+v; want only an IdleConnTimeout below %v", a, b.Low)
		}
		var text strings.Builder
		rep.WriteText(&text)
		if !strings.Contains(text.String(), "TCP keep-alive does not help here") {
			t.Errorf("report does not say keep-alive cannot help:\n%s", text.String())
		}
	})
}

// TestRunNoTimeout: a path that keeps every connection reports no bracket,
// and says how long it looked.
func TestRunNoTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{URL: "http://backend.test/", Max: 5 * time.Minute,
			DialContext: behindNAT(t, time.Hour, &http.Server{Handler: hello})}
		rep, err := Run(t.Context(), cfg)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if rep.Bracket != nil || rep.Advice != nil {
			t.Errorf("bracket %+v, advice %+v; want none", rep.Bracket, rep.Advice)
		}
		if rep.LongestOK != 5*time.Minute || rep.Measured() != 5 {
			t.Errorf("longest ok %v after %d measurements; want 5m after 5 (30s 1m 2m 4m 5m)", rep.LongestOK, rep.Measured())
		}
		var text strings.Builder
		rep.WriteText(&text)
		if want := "No idle timeout up to 5m"; !strings.Contains(text.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, text.String())
		}
	})
}

// TestRunInterrupted: cancelling the context (Ctrl-C) stops the rungs in
// flight and returns what was learned so far.
func TestRunInterrupted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cfg := Config{URL: "http://backend.test/",
			DialContext: behindNAT(t, 95*time.Second, &http.Server{Handler: hello})}
		// At 3 min the 120 s rung has hung (at 130 s) and the first
		// refining round is under way.
		time.AfterFunc(3*time.Minute, cancel)
		start := time.Now()
		rep, err := Run(ctx, cfg)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if took := time.Since(start); took != 3*time.Minute {
			t.Errorf("Run returned %v after the start; want at once on cancel, at 3m", took)
		}
		if !rep.Interrupted {
			t.Errorf("Interrupted = false; want true")
		}
		b := rep.Bracket
		if b == nil || b.Low != time.Minute || b.High != 2*time.Minute {
			t.Fatalf("bracket %+v; want (1m, 2m], learned before the interrupt; rungs:\n%s", b, rungTable(rep))
		}
		var interrupted int
		for _, g := range rep.Rungs {
			if g.Result == Interrupted {
				interrupted++
			}
		}
		if interrupted != DefaultSplit {
			t.Errorf("%d rungs interrupted; want the %d of the refining round", interrupted, DefaultSplit)
		}
		var text strings.Builder
		rep.WriteText(&text)
		for _, want := range []string{"INTERRUPTED", "not refined to the resolution", "between 1m and 2m"} {
			if !strings.Contains(text.String(), want) {
				t.Errorf("report lacks %q:\n%s", want, text.String())
			}
		}
	})
}

func rungAt(rep *Report, idle time.Duration) Rung {
	for _, g := range rep.Rungs {
		if g.Idle == idle && g.Result.Changed() {
			return g
		}
	}
	return Rung{}
}

func rungTable(rep *Report) string {
	var b strings.Builder
	for _, g := range rep.Rungs {
		b.WriteString("  " + roundName(g.Round) + " " + Human(g.Idle) + " " + string(g.Result) + ": " + g.Detail + "\n")
	}
	return b.String()
}
