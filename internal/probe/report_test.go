package probe

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// labReport is a report like the NAT lab's: conntrack forgets flows idle 3 s.
func labReport() *Report {
	ms := time.Millisecond
	hang := &detectors.Alert{Detector: detectors.StaleReuseName, Outcome: detectors.OutcomeHang, Message: "GET ... hang", Advice: "Set ..."}
	ok := func(round int, idle time.Duration) Rung {
		return Rung{Round: round, Idle: idle, State: Done, Result: ReusedOK, How: HowReused, Detail: "answered on the same connection",
			IdleTime: idle + ms, Waited: 600 * time.Microsecond}
	}
	drop := func(round int, idle time.Duration) Rung {
		return Rung{Round: round, Idle: idle, State: Done, Result: SilentDrop, How: HowNoResponse, Detail: "no answer and no reset within 1s",
			IdleTime: idle + ms, Waited: time.Second, Alert: hang}
	}
	skip := func(round int, idle time.Duration) Rung {
		return Rung{Round: round, Idle: idle, State: Done, Result: Skipped, Detail: "not needed: a shorter idle period already changed"}
	}
	rep := &Report{
		URL: "http://203.0.113.2:8080/", Target: "200 OK, HTTP/1.1, from 203.0.113.2:8080",
		Ladder: []time.Duration{s, 2 * s, 4 * s, 8 * s}, Max: 8 * s, Resolution: 500 * ms, Timeout: s, Split: 4,
		Started: time.Date(2026, 11, 21, 14, 0, 0, 0, time.UTC), Elapsed: 9204 * ms,
		Rungs: []Rung{ok(0, s), ok(0, 2*s), drop(0, 4*s), skip(0, 8*s),
			ok(1, 2400*ms), ok(1, 2800*ms), drop(1, 3200*ms), skip(1, 3600*ms)},
	}
	rep.Bracket = findBracket(rep.Rungs)
	rep.LongestOK = longestOK(rep.Rungs)
	rep.Advice = advise(rep.Bracket)
	return rep
}

func TestWriteText(t *testing.T) {
	var b strings.Builder
	if err := labReport().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"conntrace probe http://203.0.113.2:8080/\n",
		"  target:   200 OK, HTTP/1.1, from 203.0.113.2:8080\n",
		"  ladder:   1s 2s 4s 8s (max 8s); resolution 500ms; timeout 1s; 4 rungs per refining round\n",
		"ROUND     IDLE  RESULT       IDLE SEEN  ANSWER AFTER  DETAIL\n",
		"ladder    4s    silent drop  4s         1s            no answer and no reset within 1s\n",
		"refine 1  2.8s  reused ok    2.8s       600µs         answered on the same connection\n",
		"refine 1  3.6s  skipped                               not needed: a shorter idle period already changed\n",
		"Idle timeout: between 2.8s and 3.2s (reused ok after 2.8s idle; silent drop after 3.2s).\n",
		"Kind: silent drop. A NAT or stateful firewall",
		"  transport.IdleConnTimeout = 2500 * time.Millisecond //",
		"  dialer.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: 2 * time.Second} //",
		"  conntrace.WithNATIdleTimeout(2800 * time.Millisecond) //",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "INTERRUPTED") || strings.Contains(out, "not refined") {
		t.Errorf("a finished report says it was interrupted or not refined:\n%s", out)
	}
}

func TestMarshalJSON(t *testing.T) {
	raw, err := json.Marshal(labReport())
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		URL     string    `json:"url"`
		Ladder  []float64 `json:"ladder_s"`
		Elapsed float64   `json:"elapsed_s"`
		Rungs   []struct {
			Round  int     `json:"round"`
			Idle   float64 `json:"idle_s"`
			Result string  `json:"result"`
			How    string  `json:"how"`
			Alert  *struct {
				Detector, Outcome string
			} `json:"alert"`
		} `json:"rungs"`
		Bracket *struct {
			Low  float64 `json:"low_s"`
			High float64 `json:"high_s"`
			Kind string  `json:"kind"`
		} `json:"bracket"`
		Advice *struct {
			IdleConnTimeout   float64 `json:"idle_conn_timeout_s"`
			KeepAliveIdle     float64 `json:"keep_alive_idle_s"`
			KeepAliveInterval float64 `json:"keep_alive_interval_s"`
			NATIdleTimeout    float64 `json:"nat_idle_timeout_s"`
		} `json:"advice"`
		Interrupted bool `json:"interrupted"`
	}
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if got.URL != "http://203.0.113.2:8080/" || len(got.Ladder) != 4 || got.Ladder[3] != 8 || got.Elapsed != 9.204 {
		t.Errorf("url %q ladder %v elapsed %v", got.URL, got.Ladder, got.Elapsed)
	}
	if len(got.Rungs) != 8 {
		t.Fatalf("%d rungs; want 8", len(got.Rungs))
	}
	r := got.Rungs[6]
	if r.Round != 1 || r.Idle != 3.2 || r.Result != "silent-drop" || r.How != HowNoResponse || r.Alert == nil || r.Alert.Outcome != "hang" {
		t.Errorf("rung 6: %+v; want round 1, 3.2 s, silent-drop, no-response, alert hang", r)
	}
	if b := got.Bracket; b == nil || b.Low != 2.8 || b.High != 3.2 || b.Kind != "silent-drop" {
		t.Errorf("bracket %+v; want 2.8 .. 3.2 silent-drop", b)
	}
	if a := got.Advice; a == nil || a.IdleConnTimeout != 2.5 || a.KeepAliveIdle != 2 || a.KeepAliveInterval != 2 || a.NATIdleTimeout != 2.8 {
		t.Errorf("advice %+v", a)
	}
	if got.Interrupted {
		t.Errorf("interrupted: true; want false")
	}
}
