package probe

import (
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"
)

// runWithProgress probes a 15 s NAT with rungs of 10 s and 20 s, in fake
// time, showing progress on a Progress made by newProgress.
func runWithProgress(t *testing.T, p *Progress) {
	cfg := Config{
		URL:         "http://backend.test/",
		Ladder:      []time.Duration{10 * time.Second, 20 * time.Second},
		Max:         20 * time.Second,
		DialContext: behindNAT(t, 15*time.Second, &http.Server{Handler: hello}),
		Progress:    p.Update,
	}
	p.Start()
	rep, err := Run(t.Context(), cfg)
	p.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if b := rep.Bracket; b == nil || b.Low != 10*time.Second || b.High != 20*time.Second {
		t.Fatalf("bracket %+v; want (10s, 20s]", b)
	}
}

func TestProgressPlain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var out strings.Builder
		p := NewProgress(&out, false, 0)
		p.PlainEvery = 12 * time.Second
		runWithProgress(t, p)
		// The 10 s rung answers at 10 s; the 20 s rung is sent at 20 s and
		// declared a silent drop at 30 s; summaries at 12 s and 24 s.
		want := `probe: checking the target: http://backend.test/
probe: ladder: 2 connections idle 10s 20s; all verdicts within 30s
probe: ladder 10s: reused ok: answered on the same connection
probe: ladder: 1 of 2 rungs done, waiting on 20s, at most 18s left
probe: ladder: 1 of 2 rungs done, waiting on 20s, at most 6s left
probe: ladder 20s: silent drop: no answer and no reset within 10s on the reused connection (conntrace stale_reuse/hang)
`
		if got := out.String(); got != want {
			t.Errorf("got:\n%s\nwant:\n%s", got, want)
		}
	})
}

func TestProgressLive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var out strings.Builder
		const width = 60
		p := NewProgress(&out, true, width)
		runWithProgress(t, p)
		got := out.String()
		const redraw3 = "\x1b[3A\r\x1b[J" // up over a 3-line block, clear to the end
		for _, want := range []string{
			"  20s      idle, request in 8s\n", // the tick at 12 s
			"  20s      request sent, waiting 4s\n",
			"  10s      reused ok\n",
			redraw3,
		} {
			if !strings.Contains(got, want) {
				t.Errorf("live output lacks %q", want)
			}
		}
		if !strings.HasSuffix(got, redraw3) {
			t.Errorf("Stop did not erase the block: output ends %q", got[max(len(got)-40, 0):])
		}
		for _, line := range strings.Split(got, "\n") {
			line = strings.TrimPrefix(line, "\r\x1b[J")
			if i := strings.LastIndex(line, "\x1b[J"); i >= 0 {
				line = line[i+len("\x1b[J"):]
			}
			if n := utf8.RuneCountInString(line); n >= width {
				t.Errorf("line of %d runes would wrap a %d-column terminal: %q", n, width, line)
			}
		}
	})
}
