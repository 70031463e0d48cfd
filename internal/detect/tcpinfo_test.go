package detect_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// reading is one TCP_INFO reading as recorded (testdata/tcpinfo).
type reading struct {
	T            string `json:"t"`
	State        int    `json:"state"`
	Unacked      int    `json:"unacked"`
	Retransmits  int    `json:"retransmits"`
	TotalRetrans int    `json:"total_retrans"`
	SegsOut      int    `json:"segs_out"`
	DSACKDups    int    `json:"dsack_dups"`
	RTO          int64  `json:"rto_us"`
	RTT          int64  `json:"rtt_us"`
	BytesAcked   uint64 `json:"bytes_acked"`
	LastDataSent int64  `json:"last_data_sent_ms"`
	LastDataRecv int64  `json:"last_data_recv_ms"`
	LastAckRecv  int64  `json:"last_ack_recv_ms"`
}

var tcpStateNames = map[int]string{1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT"}

// series is a recording, as the transport would have read it: readings at
// offsets from the GotConn reading; nil where the read failed.
type series []struct {
	at   time.Duration
	info *detect.TCPInfo
}

func loadSeries(t *testing.T, name string) series {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "tcpinfo", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rs []reading
	if err := json.Unmarshal(b, &rs); err != nil {
		t.Fatal(err)
	}
	s := make(series, len(rs))
	for i, r := range rs {
		d, err := time.ParseDuration(r.T)
		if err != nil {
			t.Fatal(err)
		}
		s[i].at = d
		if r.State == 255 { // the read failed: net/http closed the connection
			continue
		}
		s[i].info = &detect.TCPInfo{
			At: at(d), State: tcpStateNames[r.State],
			Unacked: r.Unacked, Retransmits: r.Retransmits, TotalRetrans: r.TotalRetrans,
			SegsOut: r.SegsOut, DSACKDups: r.DSACKDups,
			RTO: time.Duration(r.RTO) * time.Microsecond, RTT: time.Duration(r.RTT) * time.Microsecond,
			BytesAcked:   r.BytesAcked,
			LastDataSent: time.Duration(r.LastDataSent) * time.Millisecond,
			LastDataRecv: time.Duration(r.LastDataRecv) * time.Millisecond,
			LastAckRecv:  time.Duration(r.LastAckRecv) * time.Millisecond,
		}
	}
	return s
}

// at returns the reading in effect d after GotConn: the last one taken at or
// before d.
func (s series) at(d time.Duration) *detect.TCPInfo {
	var info *detect.TCPInfo
	for _, r := range s {
		if r.at > d {
			break
		}
		info = r.info
	}
	return info
}

// replay plays a recording to d as the transport would: GotConn with the
// first reading, then StepTimer at each wake the detector asks for, with
// the reading of that moment, until an alert or the end of the recording,
// or until past it (the last reading holding) if that is later. It returns
// the alerts, when they came, and how many timer steps the detector saw.
func replay(d *detect.StaleReuse, s series, poolIdle, until time.Duration) (alerts []detect.Alert, after time.Duration, steps int) {
	conn := detect.Conn{At: at(0), Reused: true, WasIdle: true, IdleTime: poolIdle, TCP: s[0].info, RemoteAddr: tcpAddr("203.0.113.2:8080")}
	tl := &detect.Timeline{Host: "203.0.113.2", Port: 8080, Method: "GET", Start: at(-time.Millisecond), Conns: []detect.Conn{conn}}
	_, wake := d.Observe(at(0), detect.StepGotConn, tl)
	now := time.Duration(0)
	end := max(s[len(s)-1].at, until)
	for wake > 0 && now+wake <= end {
		now += wake
		steps++
		tl.TCP = s.at(now)
		alerts, wake = d.Observe(at(now), detect.StepTimer, tl)
		if len(alerts) > 0 {
			return alerts, now, steps
		}
	}
	return nil, now, steps
}

// TestStaleReuseKernelRecorded replays TCP_INFO series recorded in the NAT
// lab through the detector: the kernel's evidence decides, whatever the
// configured NAT idle timeout (350 s here, far above every idle time).
func TestStaleReuseKernelRecorded(t *testing.T) {
	tests := []struct {
		name        string
		poolIdle    time.Duration
		hang        time.Duration
		lossyHost   bool          // another connection to the host showed loss just before
		until       time.Duration // replay past the recording's end, to this
		wantOutcome string        // "" for no alert within the replay
		within      time.Duration
	}{
		{name: "dead", poolIdle: 5 * time.Second, hang: 5 * time.Second, wantOutcome: detect.OutcomeHang, within: 1100 * time.Millisecond},
		{name: "slow-alive-keepalive", poolIdle: 5 * time.Second, hang: time.Second, wantOutcome: detect.OutcomeBeyondFirstHop, within: 1100 * time.Millisecond},
		// Reset 26 ms after GotConn: every later reading fails. Replayed past
		// the first kernel check, and several more: a failed read is no
		// evidence of a dead path (net/http sees the reset itself).
		{name: "reset", poolIdle: 5 * time.Second, hang: 5 * time.Second, until: 3 * time.Second},
		{name: "lossy-live-1rto-acked", poolIdle: 1500 * time.Millisecond, hang: 5 * time.Second},
		{name: "lossy-history-2rto-acked", poolIdle: 1500 * time.Millisecond, hang: 5 * time.Second},
		// Alone, a live request unanswered through two RTOs on a connection
		// that never lost a packet before looks dead: the limit of the
		// evidence (about 1 in 190 requests on a path losing 15 % each way).
		{name: "lossy-live-2rto", poolIdle: 1500 * time.Millisecond, hang: 5 * time.Second, wantOutcome: detect.OutcomeHang, within: 1100 * time.Millisecond},
		// Once another connection to the host has shown loss, two RTOs are
		// not enough.
		{name: "lossy-live-2rto", poolIdle: 1500 * time.Millisecond, hang: 5 * time.Second, lossyHost: true},
	}
	for _, tt := range tests {
		name := tt.name
		if tt.lossyHost {
			name += "/lossy_host"
		}
		t.Run(name, func(t *testing.T) {
			d := &detect.StaleReuse{HangTimeout: tt.hang, Paths: new(detect.PathTimeouts)}
			if tt.lossyHost {
				// GotConn of another connection to the host, whose path lost
				// a segment before (recorded).
				other := loadSeries(t, "lossy-history-2rto-acked")
				c := detect.Conn{At: at(0), Reused: true, WasIdle: true, IdleTime: 1500 * time.Millisecond, TCP: other[0].info}
				d.Observe(at(-time.Millisecond), detect.StepGotConn, &detect.Timeline{Host: "203.0.113.2", Port: 8080, Conns: []detect.Conn{c}})
			}
			alerts, after, steps := replay(d, loadSeries(t, tt.name), tt.poolIdle, tt.until)
			if steps == 0 {
				t.Fatalf("the detector was never woken within the replay (%v): it decided nothing", after)
			}
			if tt.wantOutcome == "" {
				if len(alerts) != 0 {
					t.Fatalf("alerts: got %s %s after %v; want none", alerts[0].Outcome, alerts[0].Evidence, after)
				}
				return
			}
			if len(alerts) != 1 || alerts[0].Outcome != tt.wantOutcome || alerts[0].Evidence != detect.EvidenceKernel {
				t.Fatalf("alerts: got %+v; want one %s from kernel evidence", alerts, tt.wantOutcome)
			}
			if after > tt.within {
				t.Errorf("verdict %v after GotConn; want within %v", after, tt.within)
			}
			a := alerts[0]
			if a.Outcome == detect.OutcomeHang {
				for _, want := range []string{"on the wire", "retransmission timeouts", "RTO 816ms", "unacknowledged segments 1"} {
					if !strings.Contains(a.Message, want) {
						t.Errorf("message lacks %q: %s", want, a.Message)
					}
				}
				if a.Threshold != 0 || a.WireIdle < time.Second {
					t.Errorf("threshold %v, wire idle %v; want 0 (no configured timeout decided) and the wire idle", a.Threshold, a.WireIdle)
				}
			}
			t.Logf("%s after %v: %s", a.Outcome, after, a.Message)
		})
	}
}

// kernelConn is a connection reused after idle, with a GotConn reading:
// nothing in flight, 98 bytes acknowledged so far, RTO 204 ms.
func kernelConn(idle time.Duration) detect.Conn {
	c := staleConn(idle)
	c.At = at(0)
	c.TCP = &detect.TCPInfo{At: at(0), State: "ESTABLISHED", SegsOut: 5, RTO: 204 * time.Millisecond,
		RTT: 100 * time.Microsecond, BytesAcked: 98, LastDataSent: idle, LastDataRecv: idle, LastAckRecv: idle}
	return c
}

// later is a reading taken d after GotConn: the request (one segment) sent,
// with rtos retransmission timeouts in a row, acked bytes acknowledged, the
// last send lastSent ago.
func later(d time.Duration, state string, unacked, rtos int, acked uint64, lastSent time.Duration) *detect.TCPInfo {
	return &detect.TCPInfo{At: at(d), State: state, Unacked: unacked, Retransmits: rtos, SegsOut: 6 + rtos,
		RTO: 204 * time.Millisecond << rtos, RTT: 100 * time.Microsecond, BytesAcked: acked, LastDataSent: lastSent}
}

// TestStaleReuseKernelVerdict checks the rules of the kernel verdict, one
// StepTimer at a time.
func TestStaleReuseKernelVerdict(t *testing.T) {
	const sec = time.Second
	tests := []struct {
		name     string
		idle     time.Duration // pool and wire idle
		nat      time.Duration // configured; zero: 350 s
		alive    time.Duration // the path was seen alive after this wire idle; zero: never
		now      time.Duration // since GotConn
		reading  *detect.TCPInfo
		want     string // outcome, or ""
		evidence string
		wantWake time.Duration // when want is ""
	}{
		{name: "two RTOs, nothing acked: dead, whatever the configured timeout", idle: 5 * sec, now: 916 * time.Millisecond,
			reading: later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond), want: detect.OutcomeHang, evidence: detect.EvidenceKernel},
		{name: "two RTOs, the answer to the last one still due: wait", idle: 5 * sec, now: 850 * time.Millisecond,
			reading: later(850*time.Millisecond, "ESTABLISHED", 1, 2, 98, 20*time.Millisecond), wantWake: 102 * time.Millisecond},
		{name: "one RTO: wait half an RTO", idle: 5 * sec, now: 500 * time.Millisecond,
			reading: later(500*time.Millisecond, "ESTABLISHED", 1, 1, 98, 90*time.Millisecond), wantWake: 102 * time.Millisecond},
		{name: "bytes acknowledged: never a stale hang; wait for the hang timeout", idle: 5 * sec, now: 916 * time.Millisecond,
			reading: later(916*time.Millisecond, "ESTABLISHED", 0, 0, 204, 900*time.Millisecond), wantWake: 10*sec - 916*time.Millisecond},
		{name: "acknowledged, no answer past the hang timeout: beyond the first hop", idle: 5 * sec, now: 10*sec + time.Millisecond,
			reading: later(10*sec, "ESTABLISHED", 0, 0, 204, 10*sec), want: detect.OutcomeBeyondFirstHop, evidence: detect.EvidenceKernel},
		{name: "the queue emptied by a reset, nothing acked: not acked", idle: 5 * sec, now: 916 * time.Millisecond,
			reading: later(916*time.Millisecond, "ESTABLISHED", 0, 0, 98, 900*time.Millisecond), wantWake: 102 * time.Millisecond},
		{name: "closed: the round trip's error decides", idle: 5 * sec, now: 916 * time.Millisecond,
			reading: later(916*time.Millisecond, "CLOSE", 1, 2, 98, 85*time.Millisecond), wantWake: 102 * time.Millisecond},
		{name: "the read failed: wait", idle: 5 * sec, now: 916 * time.Millisecond, wantWake: 102 * time.Millisecond},
		{name: "alive after a longer idle before: two RTOs are not enough", idle: 5 * sec, alive: 6 * sec, now: 916 * time.Millisecond,
			reading: later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond), wantWake: 102 * time.Millisecond},
		{name: "alive after a longer idle before: four are", idle: 5 * sec, alive: 6 * sec, now: 3400 * time.Millisecond,
			reading: later(3400*time.Millisecond, "ESTABLISHED", 1, 4, 98, 100*time.Millisecond), want: detect.OutcomeHang, evidence: detect.EvidenceKernel},
		{name: "alive only after a shorter idle: two RTOs are enough", idle: 5 * sec, alive: 2 * sec, now: 916 * time.Millisecond,
			reading: later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond), want: detect.OutcomeHang, evidence: detect.EvidenceKernel},
		{name: "undecided past the hang timeout, suspect by the fallback rule: no guess where the kernel can be read", idle: 5 * sec, nat: 3 * sec, now: 10*sec + time.Millisecond,
			reading: later(10*sec, "ESTABLISHED", 1, 1, 98, 3*sec), wantWake: 102 * time.Millisecond},
		{name: "undecided, not suspect by the fallback rule: keep asking", idle: 5 * sec, now: 10*sec + time.Millisecond,
			reading: later(10*sec, "ESTABLISHED", 0, 0, 98, 10*sec), wantWake: 102 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &detect.StaleReuse{NATIdleTimeout: tt.nat, Paths: new(detect.PathTimeouts)}
			if tt.alive > 0 {
				d.Paths.Alive("api.example.com", 443, tt.alive)
			}
			tl := timeline(kernelConn(tt.idle))
			tl.TCP = tt.reading
			alerts, wake := d.Observe(at(tt.now), detect.StepTimer, tl)
			if tt.want == "" {
				if len(alerts) != 0 || wake != tt.wantWake {
					t.Fatalf("got %+v, wake %v; want no alert, wake %v", alerts, wake, tt.wantWake)
				}
				return
			}
			if len(alerts) != 1 || alerts[0].Outcome != tt.want || alerts[0].Evidence != tt.evidence || wake != 0 {
				t.Fatalf("got %+v, wake %v; want one %s (%s)", alerts, wake, tt.want, tt.evidence)
			}
		})
	}
}

// TestStaleReuseKernelFirstCheck: the kernel is first asked past the second
// retransmission timeout, scaled by the connection's RTO, and never for a
// connection without a reading.
func TestStaleReuseKernelFirstCheck(t *testing.T) {
	d := &detect.StaleReuse{}
	c := kernelConn(5 * time.Second)
	if _, wake := d.Observe(at(0), detect.StepGotConn, timeline(c)); wake != 4*204*time.Millisecond+100*time.Millisecond {
		t.Errorf("LAN (RTO 204ms): first check after %v; want 916ms", wake)
	}
	c.TCP.RTO = 600 * time.Millisecond
	if _, wake := d.Observe(at(0), detect.StepGotConn, timeline(c)); wake != 2500*time.Millisecond {
		t.Errorf("WAN (RTO 600ms): first check after %v; want 2.5s", wake)
	}
	c.TCP = nil
	if _, wake := d.Observe(at(0), detect.StepGotConn, timeline(c)); wake != 0 {
		t.Errorf("no reading: wake %v; want none (a healthy request costs no timer)", wake)
	}
}

// TestStaleReuseLearnsPaths: verdicts teach the path's idle timeout, and
// the advice quotes it.
func TestStaleReuseLearnsPaths(t *testing.T) {
	paths := new(detect.PathTimeouts)
	d := &detect.StaleReuse{Paths: paths}
	// Alive after 3.9 s on the wire: answered.
	tl := answered(timeline(kernelConn(3900*time.Millisecond)), 5*time.Millisecond)
	d.Observe(at(6*time.Millisecond), detect.StepResponse, tl)
	if b := paths.Get("api.example.com", 443); b != (detect.Bracket{Lower: 3900 * time.Millisecond}) {
		t.Fatalf("after an answer: %+v; want lower 3.9s", b)
	}
	// Dead after 6 s: the kernel's verdict.
	tl = timeline(kernelConn(6 * time.Second))
	tl.TCP = later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond)
	alerts, _ := d.Observe(at(916*time.Millisecond), detect.StepTimer, tl)
	if b := paths.Get("api.example.com", 443); b != (detect.Bracket{Lower: 3900 * time.Millisecond, Upper: 6 * time.Second}) {
		t.Fatalf("after a dead verdict: %+v; want (3.9s, 6s]", b)
	}
	if len(alerts) != 1 {
		t.Fatalf("alerts: %+v", alerts)
	}
	for _, want := range []string{"This path forgot a connection idle 6s on the wire and kept one idle 3.9s",
		"IdleConnTimeout below 3.9s (for example 3.51s)", "Idle: 1s, Interval: 1s"} {
		if !strings.Contains(alerts[0].Advice, want) {
			t.Errorf("advice lacks %q: %s", want, alerts[0].Advice)
		}
	}
	// A connection without a reading teaches nothing.
	tl = answered(timeline(staleConn(400*time.Second)), 5*time.Millisecond)
	d.Observe(at(6*time.Millisecond), detect.StepResponse, tl)
	if b := paths.Get("api.example.com", 443); b.Lower != 3900*time.Millisecond {
		t.Errorf("a reuse with no kernel reading changed the bracket: %+v", b)
	}
}

func TestPathTimeouts(t *testing.T) {
	const sec = time.Second
	var p detect.PathTimeouts
	p.Alive("a", 80, 2*sec)
	p.Alive("a", 80, 1*sec) // a shorter survival says nothing new
	p.Dead("a", 80, 5*sec)
	p.Dead("a", 80, 4*sec) // a shorter death narrows it
	if b := p.Get("a", 80); b != (detect.Bracket{Lower: 2 * sec, Upper: 4 * sec}) || b.String() != "between 2s and 4s" {
		t.Fatalf("got %+v (%s); want (2s, 4s]", b, b)
	}
	p.Alive("a", 80, 4500*time.Millisecond) // alive past the upper bound: the path changed
	if b := p.Get("a", 80); b != (detect.Bracket{Lower: 4500 * time.Millisecond}) || b.String() != "above 4.5s" {
		t.Fatalf("after a contradiction: %+v; want (4.5s, unknown)", b)
	}
	p.Dead("a", 80, 3*sec) // dead below the lower bound: the newest wins again
	if b := p.Get("a", 80); b != (detect.Bracket{Upper: 3 * sec}) || b.String() != "3s or less" {
		t.Fatalf("after a contradiction: %+v; want (unknown, 3s]", b)
	}
	if b := p.Get("b", 80); b != (detect.Bracket{}) || b.String() != "unknown" {
		t.Errorf("unknown host: %+v", b)
	}
	var nilPaths *detect.PathTimeouts
	nilPaths.Alive("a", 80, sec) // must not panic
	if b := nilPaths.Get("a", 80); b != (detect.Bracket{}) {
		t.Errorf("nil: %+v", b)
	}
	// Bounded: beyond MaxHosts, the hosts learned of first are forgotten
	// first; learning more of a host kept does not move it.
	small := detect.PathTimeouts{MaxHosts: 3}
	for i := range 10 {
		small.Alive("h", i, sec)
	}
	small.Dead("h", 7, 5*sec)
	var kept []int
	small.Each(func(_ string, port int, _ detect.Bracket) { kept = append(kept, port) })
	slices.Sort(kept)
	if !slices.Equal(kept, []int{7, 8, 9}) {
		t.Errorf("hosts kept: ports %v; want the last three learned, [7 8 9]", kept)
	}
	small.Alive("h", 10, sec)
	if b := small.Get("h", 7); b != (detect.Bracket{}) {
		t.Errorf("the oldest of a full table, %+v, kept when another came; want it forgotten", b)
	}
	// A server new to a full table takes a forgotten one's place, and
	// what it learns is its own: nothing of the forgotten one's bounds.
	one := detect.PathTimeouts{MaxHosts: 1}
	one.Dead("old", 1, 9*sec)
	one.Alive("new", 1, 2*sec)
	if b, old := one.Get("new", 1), one.Get("old", 1); b != (detect.Bracket{Lower: 2 * sec}) || old != (detect.Bracket{}) {
		t.Errorf("a server new to a full table of one: %+v, the old one %+v; want (2s, unknown) and the old forgotten", b, old)
	}
	// A client calling more servers than the table holds (stale_reuse's
	// verdict on each reuse after a second of idle) allocates nothing.
	port := 100
	if a := testing.AllocsPerRun(100, func() { port++; small.Alive("many", port, sec) }); a != 0 {
		t.Errorf("a verdict on a server new to a full table: %v allocations; want 0", a)
	}
}
