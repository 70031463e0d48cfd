//go:build linux

package natlab

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/probe"
	"github.com/conntrace/conntrace/vocab"
)

// probeConfig scales the probe to the lab's conntrack timeout T: a ladder
// of T/3, 2T/3, 4T/3 and 8T/3, refined to T/6. For T = 3 s the first
// change is in (2s, 4s], and the refining round's rungs (2.4s 2.8s 3.2s
// 3.6s) stay 200 ms clear of T, far more than the kernel's jitter. The
// timeout is only the fallback: the kernel tells a silent drop in about a
// second.
func (l lab) probeConfig() probe.Config {
	t := l.ctTimeout
	return probe.Config{
		URL:        "http://" + l.server + "/",
		Ladder:     []time.Duration{t / 3, 2 * t / 3, 4 * t / 3, 8 * t / 3},
		Max:        8 * t / 3,
		Resolution: t / 6,
		Timeout:    probeTimeout,
	}
}

// probeTimeout is the probe's --timeout in the lab: the fallback, far
// above the kernel's verdict.
const probeTimeout = 5 * time.Second

// TestNATLabProbe runs the probe behind `conntrace probe` against the
// kernel's conntrack: the bracket it reports must hold the router's
// established-flow timeout, with the right kind.
func TestNATLabProbe(t *testing.T) {
	l := newLab(t)

	check := func(t *testing.T, wantKind probe.Result, wantHow string) *probe.Report {
		t.Helper()
		start := time.Now()
		rep, err := probe.Run(t.Context(), l.probeConfig())
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		var text strings.Builder
		rep.WriteText(&text)
		t.Logf("probe report, %v:\n%s", time.Since(start).Round(time.Millisecond), text.String())
		b := rep.Bracket
		if b == nil {
			t.Fatalf("no bracket; want one holding the conntrack timeout %v", l.ctTimeout)
		}
		if !(b.Low < l.ctTimeout && l.ctTimeout <= b.High) {
			t.Errorf("bracket (%v, %v] does not hold the conntrack timeout %v", b.Low, b.High, l.ctTimeout)
		}
		if res := l.probeConfig().Resolution; b.Width() > res {
			t.Errorf("bracket (%v, %v] is wider than the resolution %v", b.Low, b.High, res)
		}
		if b.Kind != wantKind || b.How != wantHow {
			t.Errorf("kind %s/%s; want %s/%s", b.Kind, b.How, wantKind, wantHow)
		}
		if a := rep.Advice; a == nil || a.IdleConnTimeout >= l.ctTimeout || a.KeepAliveIdle >= l.ctTimeout ||
			a.KeepAliveIdle == 0 || a.KeepAliveInterval > a.KeepAliveIdle {
			t.Errorf("advice %+v; want IdleConnTimeout, KeepAliveIdle and KeepAliveInterval below %v", a, l.ctTimeout)
		}
		return rep
	}

	var advice *probe.Advice
	t.Run("silent_drop", func(t *testing.T) {
		rep := check(t, probe.SilentDrop, probe.HowNoResponse)
		advice = rep.Advice
		for _, g := range rep.Rungs {
			if g.Result != probe.SilentDrop {
				continue
			}
			if g.Alert == nil || g.Alert.Outcome != detectors.OutcomeHang {
				t.Errorf("rung %v: silent drop without conntrace's hang alert (%+v)", g.Idle, g.Alert)
				continue
			}
			// Decided by the kernel in about a second, not at the timeout.
			if g.Alert.Evidence != detectors.EvidenceKernel || g.Waited > kernelVerdictWithin {
				t.Errorf("rung %v: silent drop from %q evidence after %v; want kernel evidence within %v (timeout %v)",
					g.Idle, g.Alert.Evidence, g.Waited, kernelVerdictWithin, probeTimeout)
			}
		}
		t.Logf("MEASURED probe: conntrack timeout %v, bracket (%v, %v], %s, %d rungs in %v",
			l.ctTimeout, rep.Bracket.Low, rep.Bracket.High, rep.Bracket.Kind, len(rep.Rungs), rep.Elapsed.Round(time.Millisecond))
	})

	// The settings the probe printed must cure the hang they are for, each
	// on its own, against the same conntrack.
	t.Run("advice_cures", func(t *testing.T) {
		if advice == nil || advice.KeepAliveIdle == 0 {
			t.Fatalf("silent_drop gave no keep-alive advice (%+v)", advice)
		}
		url := "http://" + l.server + "/"
		past := l.ctTimeout + 2*time.Second
		deadline := 3 * hangTimeout

		ka := l.newClient(t, &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{
			Enable: true, Idle: advice.KeepAliveIdle, Interval: advice.KeepAliveInterval}}, 0)
		idle := l.newClient(t, keepAliveOff, advice.IdleConnTimeout)
		for _, c := range []*client{ka, idle} {
			if err := c.do(http.MethodGet, url, deadline); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(past)
		if err := ka.do(http.MethodGet, url, deadline); err != nil {
			t.Errorf("KeepAliveConfig{Idle: %v, Interval: %v}, reused after %v idle: %v", advice.KeepAliveIdle, advice.KeepAliveInterval, past, err)
		}
		if n := ka.count(t, vocab.MetricReuses); n != 1 {
			t.Errorf("keep-alive client: %s = %d; want 1 (the connection outlived the conntrack timeout)", vocab.MetricReuses, n)
		}
		if err := idle.do(http.MethodGet, url, deadline); err != nil {
			t.Errorf("IdleConnTimeout %v, after %v idle: %v", advice.IdleConnTimeout, past, err)
		}
		if n := idle.count(t, vocab.MetricDials); n != 2 {
			t.Errorf("IdleConnTimeout client: %s = %d; want 2 (the pool retired the connection first)", vocab.MetricDials, n)
		}
		if a := append(ka.handled(), idle.handled()...); len(a) != 0 {
			t.Errorf("alerts %+v; want none", a)
		}
	})

	t.Run("reset_firewall_closed_by_peer", func(t *testing.T) {
		// The firewall answers packets of forgotten flows with a reset: the
		// probe must call that closed by peer, not a silent drop.
		t.Cleanup(resetFirewall(t))
		rep := check(t, probe.ClosedByPeer, probe.HowClosedOnReuse)
		if rep.Bracket.End != probe.EndReset {
			t.Errorf("end %q; want %q: the firewall resets, the server's timer is not involved", rep.Bracket.End, probe.EndReset)
		}
		t.Logf("MEASURED probe with a resetting firewall: bracket (%v, %v], %s/%s/%s, in %v",
			rep.Bracket.Low, rep.Bracket.High, rep.Bracket.Kind, rep.Bracket.How, rep.Bracket.End, rep.Elapsed.Round(time.Millisecond))
	})
}
