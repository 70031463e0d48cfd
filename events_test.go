package conntrace

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// checkMoments: a request's span carries its write and its first response
// byte as numbers, seconds from its start, in the order they happen and
// within the span; on an ordinary request, with no alert (pool_overflow
// may raise one under load), not as events.
func checkMoments(t *testing.T, s sdktrace.ReadOnlySpan) {
	t.Helper()
	attrs := attribute.NewSet(s.Attributes()...)
	wrote, okW := attrs.Value(vocab.AttrWroteAt)
	first, okF := attrs.Value(vocab.AttrFirstByteAt)
	if !okW || !okF {
		t.Errorf("span %s lacks %s or %s: %v", s.Name(), vocab.AttrWroteAt, vocab.AttrFirstByteAt, s.Attributes())
		return
	}
	w, f, d := wrote.AsFloat64(), first.AsFloat64(), s.EndTime().Sub(s.StartTime()).Seconds()
	if w <= 0 || f < w || f > d {
		t.Errorf("span %s: wrote at %vs, first byte at %vs, of %vs; want 0 < wrote <= first byte <= the span's duration", s.Name(), w, f, d)
	}
	names := testkit.EventNames(s)
	if testkit.Count(names, vocab.EventAlert) == 0 && testkit.Count(names, vocab.EventWroteRequest)+testkit.Count(names, vocab.EventFirstByte) != 0 {
		t.Errorf("span %s of an ordinary request has write or first byte events: %q", s.Name(), names)
	}
}

// TestSuspectedMomentsAreEvents: on a request a detector suspects, the
// write and the first response byte are events too, at their moments, on
// the timeline with the alert. A 1 ns NAT timeout makes stale_reuse suspect
// every reuse, and ask to be woken, before the write: the events come as
// the moments do. It makes keepalive_gap raise an alert on the first
// request's new connection too, once the response is in: the moments so
// far become events then, before the alert.
func TestSuspectedMomentsAreEvents(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(5 * time.Millisecond) // the first byte comes measurably after the write
		io.WriteString(w, strings.Repeat("x", 100))
	})
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithNATIdleTimeout(time.Nanosecond))...)
	testkit.Get(t, client, srv.URL)
	testkit.Get(t, client, srv.URL)

	spans := tel.Spans.Ended()
	if len(spans) != 2 {
		t.Fatalf("got %d spans; want 2", len(spans))
	}
	for i, s := range spans {
		at := func(name string) time.Time {
			for _, e := range s.Events() {
				if e.Name == name {
					return e.Time
				}
			}
			t.Fatalf("span %d, suspected: no %s event in %q", i, name, testkit.EventNames(s))
			return time.Time{}
		}
		got, wrote, first, alert := at(vocab.EventGotConn), at(vocab.EventWroteRequest), at(vocab.EventFirstByte), at(vocab.EventAlert)
		if !got.Before(wrote) || !wrote.Before(first) || first.Sub(wrote) < 5*time.Millisecond || alert.Before(first) {
			t.Errorf("span %d: events at got_conn %v, wrote_request %v, first_response_byte %v, alert %v: want this order, the first byte 5 ms or more after the write",
				i, got, wrote, first, alert)
		}
		names := testkit.EventNames(s)
		if testkit.Count(names, vocab.EventWroteRequest) != 1 || testkit.Count(names, vocab.EventFirstByte) != 1 {
			t.Errorf("span %d: events %q; want one of each moment", i, names)
		}
		// The numbers are still there, for queries over every request, and
		// say the same moments.
		attrs := attribute.NewSet(s.Attributes()...)
		for key, moment := range map[attribute.Key]time.Time{vocab.AttrWroteAt: wrote, vocab.AttrFirstByteAt: first} {
			v, ok := attrs.Value(key)
			if want := moment.Sub(s.StartTime()).Seconds(); !ok || v.AsFloat64() < want-1e-6 || v.AsFloat64() > want+1e-6 {
				t.Errorf("span %d: %s = %v; want %v, the event's moment", i, key, v.AsFloat64(), want)
			}
		}
	}
}

// TestGotConnWait: got_conn carries the wait for the connection, which for
// a new connection includes its dial, and no host:port where it is the
// server's own.
func TestGotConnWait(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	testkit.Get(t, client, srv.URL)

	s := tel.Spans.Ended()[0]
	got, _ := testkit.Event(s, vocab.EventGotConn)
	wait, ok := got.Value(vocab.AttrWaitTime)
	if !ok {
		t.Fatalf("got_conn has no %s: %v", vocab.AttrWaitTime, got.ToSlice())
	}
	var dialed time.Duration
	for _, e := range s.Events() {
		if e.Name == vocab.EventConnectDone {
			set := attribute.NewSet(e.Attributes...)
			d, _ := set.Value(vocab.AttrDuration)
			dialed = time.Duration(d.AsFloat64() * float64(time.Second))
		}
	}
	if w := time.Duration(wait.AsFloat64() * float64(time.Second)); dialed == 0 || w < dialed {
		t.Errorf("wait %v for a connection dialled in %v; want at least the dial", w, dialed)
	}
	if v, ok := got.Value(vocab.AttrHostPort); ok {
		t.Errorf("got_conn has %s=%s without a proxy", vocab.AttrHostPort, v.Emit())
	}
}

// TestVerdict: the alert a request's span shows is its most severe of
// level WARN or above, the first raised among equals; INFO alone is none.
func TestVerdict(t *testing.T) {
	info := detectors.Alert{Outcome: "ok", Level: slog.LevelInfo}
	warn := detectors.Alert{Outcome: "retried", Level: slog.LevelWarn}
	warn2 := detectors.Alert{Outcome: "closed_early", Level: slog.LevelWarn}
	hang := detectors.Alert{Outcome: "hang", Level: slog.LevelError}
	tests := []struct {
		name   string
		alerts []detectors.Alert
		want   int
	}{
		{"none", nil, -1},
		{"INFO only", []detectors.Alert{info}, -1},
		{"a warning after INFO", []detectors.Alert{info, warn}, 1},
		{"the first of equals", []detectors.Alert{warn, warn2}, 0},
		{"an error after a warning", []detectors.Alert{warn, hang}, 1},
		{"an error before a warning", []detectors.Alert{hang, warn}, 0},
	}
	for _, tt := range tests {
		if got := verdict(tt.alerts); got != tt.want {
			t.Errorf("%s: verdict %d; want %d", tt.name, got, tt.want)
		}
	}
}
