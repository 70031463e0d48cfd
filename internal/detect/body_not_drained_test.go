package detect_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// ended is a GET answered with 200 over HTTP/1.1 on a fresh connection,
// whose body ended as given.
func ended(body detect.BodyEnd, read, contentLength int64) *detect.Timeline {
	tl := timeline(freshConn())
	tl.StatusCode, tl.ProtoMajor, tl.ContentLength = 200, 1, contentLength
	tl.Response, tl.End = at(time.Millisecond), at(2*time.Millisecond)
	tl.Body, tl.BodyRead = body, read
	return tl
}

func TestBodyNotDrained(t *testing.T) {
	tests := []struct {
		name   string
		tl     func() *detect.Timeline
		step   detect.Step
		want   bool
		phrase string // in the message, if an alert is wanted
		short  string // in the summary, if an alert is wanted
	}{
		{name: "closed unread", tl: func() *detect.Timeline { return ended(detect.BodyClosed, 0, 5000) }, want: true, phrase: "without reading any of it", short: "body closed unread;"},
		{name: "closed after part", tl: func() *detect.Timeline { return ended(detect.BodyClosed, 10, 5000) }, want: true, phrase: "after reading 10 of its 5000 bytes", short: "body closed after 10 of 5000 bytes;"},
		{name: "closed after part, length unknown", tl: func() *detect.Timeline { return ended(detect.BodyClosed, 10, -1) }, want: true, phrase: "after reading 10 bytes of it", short: "body closed after 10 bytes;"},
		{name: "read to EOF", tl: func() *detect.Timeline { return ended(detect.BodyEOF, 5000, 5000) }},
		{name: "read failed", tl: func() *detect.Timeline { return ended(detect.BodyError, 10, 5000) }},
		{name: "abandoned: never closed", tl: func() *detect.Timeline { return ended(detect.BodyAbandoned, 10, 5000) }},
		{name: "no body (HEAD, 204, 304)", tl: func() *detect.Timeline { return ended(detect.BodyNone, 0, 0) }},
		{name: "HTTP/2 keeps the connection", tl: func() *detect.Timeline {
			tl := ended(detect.BodyClosed, 0, 5000)
			tl.ProtoMajor = 2
			return tl
		}},
		{name: "Connection: close loses it anyway", tl: func() *detect.Timeline {
			tl := ended(detect.BodyClosed, 0, 5000)
			tl.ConnClose = true
			return tl
		}},
		{name: "101 hands the connection over", tl: func() *detect.Timeline {
			tl := ended(detect.BodyClosed, 0, -1)
			tl.StatusCode = 101
			return tl
		}},
		{name: "no connection seen (custom base)", tl: func() *detect.Timeline {
			tl := ended(detect.BodyClosed, 0, 5000)
			tl.Conns = nil
			return tl
		}},
		{name: "only at StepEnd", tl: func() *detect.Timeline { return ended(detect.BodyClosed, 0, 5000) }, step: detect.StepResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			step := detect.StepEnd
			if tt.step != 0 {
				step = tt.step
			}
			tl := tt.tl()
			alerts, wake := detect.BodyNotDrained{}.Observe(at(3*time.Millisecond), step, tl)
			if wake != 0 {
				t.Errorf("wake: got %v; want 0", wake)
			}
			if got := len(alerts) == 1; got != tt.want || len(alerts) > 1 {
				t.Fatalf("got %d alerts; want alert: %v", len(alerts), tt.want)
			}
			if detect.DiscardsConn(tl) != tt.want && step == detect.StepEnd {
				t.Errorf("DiscardsConn: got %v; want %v", !tt.want, tt.want)
			}
			if !tt.want {
				return
			}
			a := alerts[0]
			if a.Detector != detect.BodyNotDrainedName || a.Outcome != detect.OutcomeClosedEarly || a.Level != slog.LevelWarn {
				t.Errorf("alert: got %s/%s at %v; want body_not_drained/closed_early at WARN", a.Detector, a.Outcome, a.Level)
			}
			if a.Host != "api.example.com" || a.Port != 443 || !a.Time.Equal(at(3*time.Millisecond)) {
				t.Errorf("alert: host %s:%d at %v", a.Host, a.Port, a.Time)
			}
			for _, want := range []string{tt.phrase, "GET api.example.com:443", "status 200", "10.1.2.4:443", "instead of returning it to the idle pool"} {
				if !strings.Contains(a.Message, want) {
					t.Errorf("message lacks %q: %s", want, a.Message)
				}
			}
			if !strings.HasPrefix(a.Summary, "body_not_drained/closed_early: ") || !strings.Contains(a.Summary, tt.short) ||
				!strings.HasSuffix(a.Summary, "the connection was closed, not pooled") || len(a.Summary) > detect.SummaryMax {
				t.Errorf("summary %q; want body_not_drained/closed_early: %s the connection was closed, not pooled", a.Summary, tt.short)
			}
			if !strings.Contains(a.Advice, "io.Copy(io.Discard, res.Body)") {
				t.Errorf("advice lacks the drain: %s", a.Advice)
			}
		})
	}
}

func TestBodyEndString(t *testing.T) {
	for e, want := range map[detect.BodyEnd]string{
		detect.BodyNone: "none", detect.BodyEOF: "eof", detect.BodyClosed: "closed",
		detect.BodyError: "error", detect.BodyAbandoned: "abandoned", detect.BodyEnd(9): "body_end(9)",
	} {
		if got := e.String(); got != want {
			t.Errorf("BodyEnd(%d).String(): got %q; want %q", int(e), got, want)
		}
	}
}
