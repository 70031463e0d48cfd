package detect

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

// established is a kernel reading of a quiet socket: nothing
// unacknowledged, no probe out, silent for silence.
func established(silence time.Duration) *TCPInfo {
	return &TCPInfo{State: "ESTABLISHED", RTT: time.Millisecond, RTO: 204 * time.Millisecond,
		LastDataRecv: silence, LastAckRecv: silence, LastDataSent: silence}
}

func TestStreamStallKernel(t *testing.T) {
	const T = 3 * time.Second
	t0 := time.Unix(1000, 0)
	wait := func(tcp *TCPInfo) *Wait {
		return &Wait{Host: "api", Port: 80, Method: "GET", Quiet: tcp.LastDataRecv, TCP: tcp}
	}

	t.Run("below the timeout: nothing, look again when it is due", func(t *testing.T) {
		d := &StreamStall{NATIdleTimeout: T}
		dec := d.Check(t0, wait(established(2*time.Second)))
		if dec.Act != ActWait || dec.Alert != nil {
			t.Fatalf("got %+v; want a wait and no alert", dec)
		}
		if want := T + judgeMargin - 2*time.Second; dec.Next != want {
			t.Errorf("next look after %v; want %v (when the silence reaches the timeout and the margin)", dec.Next, want)
		}
	})

	t.Run("kept alive by keep-alive: never suspect", func(t *testing.T) {
		d := &StreamStall{NATIdleTimeout: T}
		tcp := established(40 * time.Second)
		tcp.LastAckRecv = 900 * time.Millisecond // probes answered; no data for 40 s
		w := wait(tcp)
		w.Quiet = 40 * time.Second
		if dec := d.Check(t0, w); dec.Act != ActWait || dec.Alert != nil {
			t.Fatalf("got %+v; want a wait and no alert", dec)
		}
	})

	t.Run("silent past the timeout: probe, then dead", func(t *testing.T) {
		paths := new(PathTimeouts)
		d := &StreamStall{NATIdleTimeout: T, Paths: paths}
		silence := T + judgeMargin
		dec := d.Check(t0, wait(established(silence)))
		if dec.Act != ActProbe || dec.Alert != nil {
			t.Fatalf("got %+v; want a probe", dec)
		}
		probe := &Probe{At: t0, Silence: silence}
		// An RTT later the probe is out, unanswered: not yet a verdict.
		tcp := established(silence + 10*time.Millisecond)
		tcp.Probes = 1
		w := wait(tcp)
		w.Probe = probe
		if dec := d.Check(t0.Add(10*time.Millisecond), w); dec.Act != ActWait || dec.Alert != nil {
			t.Fatalf("10ms after the probe: got %+v; want a wait", dec)
		}
		// Unanswered past its wait: a second probe, once the peer's rate
		// limit on answering lets it answer; no verdict on one probe.
		tcp = established(silence + 300*time.Millisecond)
		tcp.Probes = 1
		w = wait(tcp)
		w.Probe = probe
		dec = d.Check(t0.Add(300*time.Millisecond), w)
		if dec.Act != ActWait || dec.Alert != nil || dec.Next != probeAgainAfter-300*time.Millisecond {
			t.Fatalf("300ms after the probe: got %+v; want a wait until %v after it", dec, probeAgainAfter)
		}
		tcp = established(silence + probeAgainAfter)
		tcp.Probes = 1
		w = wait(tcp)
		w.Probe = probe
		if dec = d.Check(t0.Add(probeAgainAfter), w); dec.Act != ActProbe || dec.Alert != nil || dec.Judged {
			t.Fatalf("%v after the probe: got %+v; want the second probe", probeAgainAfter, dec)
		}
		again := &Probe{At: t0.Add(probeAgainAfter), Silence: silence, Again: true}
		tcp = established(silence + probeAgainAfter + 300*time.Millisecond)
		tcp.Probes = 2
		w = wait(tcp)
		w.Probe = again
		dec = d.Check(again.At.Add(300*time.Millisecond), w)
		if dec.Act != ActStop || dec.Alert == nil {
			t.Fatalf("300ms after the second probe: got %+v; want the dead verdict", dec)
		}
		a := dec.Alert
		if a.Detector != StreamStallName || a.Outcome != OutcomeDead || a.Level != slog.LevelError || a.Evidence != EvidenceKernel {
			t.Errorf("alert %s/%s level %v evidence %q; want stream_stall/dead ERROR kernel", a.Detector, a.Outcome, a.Level, a.Evidence)
		}
		if a.Threshold != T || a.WireIdle != silence {
			t.Errorf("threshold %v wire idle %v; want %v and %v", a.Threshold, a.WireIdle, T, silence)
		}
		if !strings.Contains(a.Message, "configured (WithNATIdleTimeout)") {
			t.Errorf("message does not say which timeout: %s", a.Message)
		}
		if want := "stream_stall/dead: silent 3.5s (path timeout 3.0s), two keep-alive probes unanswered: the path forgot the connection"; a.Summary != want || len(a.Summary) > SummaryMax {
			t.Errorf("summary %q; want %q, at most %d bytes", a.Summary, want, SummaryMax)
		}
		if b := paths.Get("api", 80); b.Upper != silence {
			t.Errorf("learned %v; want the upper bound %v", b, silence)
		}
		// The next alert on the path says the timeout was learned.
		dec = (&StreamStall{NATIdleTimeout: 10 * T, Paths: paths}).Check(t0, &Wait{Host: "api", Port: 80, Quiet: time.Hour})
		if dec.Alert == nil || !strings.Contains(dec.Alert.Message, "learned from this path") || dec.Alert.Threshold != silence {
			t.Errorf("after learning: got %+v; want a silent alert at the learned %v", dec.Alert, silence)
		}
	})

	t.Run("probe answered: alive, restored, no alert", func(t *testing.T) {
		paths := new(PathTimeouts)
		d := &StreamStall{NATIdleTimeout: T, Paths: paths}
		silence := T + judgeMargin
		tcp := established(silence + 300*time.Millisecond)
		tcp.LastAckRecv = 295 * time.Millisecond // the probe's answer
		w := wait(tcp)
		w.Probe = &Probe{At: t0, Silence: silence}
		dec := d.Check(t0.Add(300*time.Millisecond), w)
		if dec.Act != ActRestore || !dec.Judged || dec.Alert != nil {
			t.Fatalf("got %+v; want restore, judged, no alert", dec)
		}
		if b := paths.Get("api", 80); b.Lower != silence {
			t.Errorf("learned %v; want the lower bound %v", b, silence)
		}
	})

	t.Run("one probe or its answer lost on a live connection: no alert", func(t *testing.T) {
		// A live connection whose first probe (or its answer) was lost: the
		// kernel counts one probe and no ACK came back, exactly as on a dead
		// path. The second probe is answered: alive, restored, no alert.
		paths := new(PathTimeouts)
		d := &StreamStall{NATIdleTimeout: T, Paths: paths, CloseDead: true}
		silence := T + judgeMargin
		probe := &Probe{At: t0, Silence: silence}
		for _, after := range []time.Duration{verdictWait(established(0)), time.Second, probeGiveUp - time.Millisecond} {
			tcp := established(silence + after)
			tcp.Probes = 1
			w := wait(tcp)
			w.Probe = probe
			if dec := d.Check(t0.Add(after), w); dec.Alert != nil || dec.Act == ActStop || dec.Act == ActClose {
				t.Fatalf("%v after one unanswered probe: got %+v; want no verdict", after, dec)
			}
		}
		again := &Probe{At: t0.Add(probeAgainAfter), Silence: silence, Again: true}
		tcp := established(silence + probeAgainAfter + 300*time.Millisecond)
		tcp.LastAckRecv = 299 * time.Millisecond // the second probe's answer
		w := wait(tcp)
		w.Probe = again
		dec := d.Check(again.At.Add(300*time.Millisecond), w)
		if dec.Act != ActRestore || !dec.Judged || dec.Alert != nil {
			t.Fatalf("second probe answered: got %+v; want restore, judged, no alert", dec)
		}
		if b := paths.Get("api", 80); b.Lower != silence || b.Upper != 0 {
			t.Errorf("learned %v; want only the lower bound %v", b, silence)
		}
	})

	t.Run("dead with the cure: close", func(t *testing.T) {
		d := &StreamStall{NATIdleTimeout: T, CloseDead: true}
		tcp := established(T + time.Second)
		tcp.Probes = 2
		w := wait(tcp)
		w.Probe = &Probe{At: t0, Silence: T + judgeMargin, Again: true}
		dec := d.Check(t0.Add(500*time.Millisecond), w)
		if dec.Act != ActClose || dec.Alert == nil || !strings.Contains(dec.Alert.Message, "WithCloseDeadConnections") {
			t.Fatalf("got %+v; want close with the alert saying so", dec)
		}
	})

	t.Run("the cure keeps a silent stream alive below the timeout", func(t *testing.T) {
		d := &StreamStall{NATIdleTimeout: T, KeepAlive: true}
		if dec := d.Check(t0, wait(established(time.Second))); dec.Act != ActWait || dec.Next != streamEvery {
			t.Fatalf("at 1s of silence: got %+v; want a wait", dec)
		}
		dec := d.Check(t0, wait(established(T/2)))
		if dec.Act != ActKeepAlive || dec.Every != time.Second {
			t.Fatalf("at half the timeout: got %+v; want keep-alive every 1s", dec)
		}
		// Answered since: alive, kept (not restored).
		tcp := established(T/2 + 300*time.Millisecond)
		tcp.LastAckRecv = 290 * time.Millisecond
		w := wait(tcp)
		w.Probe, w.KeptAlive, w.KeepAliveEvery = &Probe{At: t0, Silence: T / 2}, true, time.Second
		if dec := d.Check(t0.Add(300*time.Millisecond), w); dec.Act != ActWait || !dec.Judged || dec.Alert != nil {
			t.Fatalf("answered: got %+v; want a judged wait, no alert", dec)
		}
		// Later, one probe unanswered past its wait: a lost segment, or
		// the path gone; the kernel's next probe, an interval later, says.
		tcp = established(time.Second + 300*time.Millisecond)
		tcp.LastDataRecv = time.Minute
		tcp.Probes = 1
		w = wait(tcp)
		w.KeptAlive, w.KeepAliveEvery = true, time.Second
		if dec := d.Check(t0, w); dec.Act != ActWait || dec.Alert != nil {
			t.Fatalf("one probe unanswered: got %+v; want a wait", dec)
		}
		// Two unanswered, the second past its wait: the path forgot it.
		tcp = established(2*time.Second + 300*time.Millisecond)
		tcp.LastDataRecv = time.Minute
		tcp.Probes = 2
		w = wait(tcp)
		w.KeptAlive, w.KeepAliveEvery = true, time.Second
		if dec := d.Check(t0, w); dec.Act != ActStop || dec.Alert == nil || dec.Alert.Outcome != OutcomeDead {
			t.Fatalf("two unanswered: got %+v; want the dead verdict", dec)
		}
	})

	t.Run("unacknowledged bytes are stale_reuse's", func(t *testing.T) {
		d := &StreamStall{NATIdleTimeout: T}
		tcp := established(time.Minute)
		tcp.Unacked = 1
		if dec := d.Check(t0, wait(tcp)); dec.Act != ActWait || dec.Alert != nil {
			t.Fatalf("got %+v; want a wait", dec)
		}
	})

	t.Run("not established: stop", func(t *testing.T) {
		d := &StreamStall{NATIdleTimeout: T}
		tcp := established(time.Minute)
		tcp.State = "CLOSE"
		if dec := d.Check(t0, wait(tcp)); dec.Act != ActStop || dec.Alert != nil {
			t.Fatalf("got %+v; want stop", dec)
		}
	})

	t.Run("HTTP/2 with pings below the timeout: not watched", func(t *testing.T) {
		d := &StreamStall{NATIdleTimeout: T, HTTP2PingTimeout: time.Second}
		w := wait(established(time.Minute))
		w.HTTP2 = true
		if dec := d.Check(t0, w); dec.Act != ActStop || dec.Alert != nil {
			t.Fatalf("got %+v; want stop", dec)
		}
		d.HTTP2PingTimeout = 2 * T // too late to keep the path
		if dec := d.Check(t0, w); dec.Act != ActProbe {
			t.Fatalf("pings above the timeout: got %+v; want a probe", dec)
		}
	})
}

func TestStreamStallFallback(t *testing.T) {
	const T = 350 * time.Second
	d := &StreamStall{}
	t0 := time.Unix(1000, 0)
	if dec := d.Check(t0, &Wait{Host: "api", Port: 443, Quiet: T - time.Second}); dec.Alert != nil || dec.Next != streamEvery {
		t.Fatalf("below the timeout: got %+v; want nothing", dec)
	}
	dec := d.Check(t0, &Wait{Host: "api", Port: 443, Method: "GET", Quiet: T, Headers: true})
	a := dec.Alert
	if a == nil || dec.Act != ActStop {
		t.Fatalf("at the timeout: got %+v; want a silent alert and stop", dec)
	}
	if a.Outcome != OutcomeSilent || a.Level != slog.LevelWarn || a.Evidence != EvidenceTimeout || a.Threshold != T {
		t.Errorf("got %s level %v evidence %q threshold %v; want silent WARN timeout %v", a.Outcome, a.Level, a.Evidence, a.Threshold, T)
	}
	if !strings.Contains(a.Message, "its response (a long poll") {
		t.Errorf("message does not say what it waited for: %s", a.Message)
	}
}

// TestStreamStallLeavesStaleHangs: a request stale_reuse has called a hang
// is not judged again, whatever its silence: one hang, one alert.
func TestStreamStallLeavesStaleHangs(t *testing.T) {
	d := &StreamStall{NATIdleTimeout: 2 * time.Second}
	w := &Wait{Host: "api", Port: 80, Method: "GET", Headers: true, Quiet: time.Hour, Stale: true}
	if dec := d.Check(time.Unix(1000, 0), w); dec.Act != ActStop || dec.Alert != nil {
		t.Errorf("got %+v; want a stop and no alert", dec)
	}
	w.Stale = false
	if dec := d.Check(time.Unix(1000, 0), w); dec.Alert == nil || dec.Alert.Outcome != OutcomeSilent {
		t.Errorf("without the hang: got %+v; want the silent alert", dec)
	}
}
