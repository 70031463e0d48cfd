package conntrace

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// pausingServer answers with a stream: a first event, flushed, then a
// pause, then a last event. With headersLate the pause comes before the
// headers (a long poll).
func pausingServer(pause time.Duration, headersLate bool) *http.Server {
	return &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sleep := func() bool {
			select {
			case <-time.After(pause):
				return true
			case <-r.Context().Done():
				return false
			}
		}
		if headersLate && !sleep() {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		if !headersLate && !sleep() {
			return
		}
		io.WriteString(w, "data: last\n\n")
	})}
}

// stream reads a response to its end or its deadline, and tells when the
// first byte of the body came and when the read ended.
type streamRead struct {
	err        error
	firstBytes time.Time // when the headers and first event were in
	ended      time.Time
}

func readStream(client *http.Client, url string, deadline time.Duration) streamRead {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	var s streamRead
	res, err := client.Do(req)
	if err != nil {
		s.err, s.ended = err, time.Now()
		return s
	}
	defer res.Body.Close()
	buf := make([]byte, 64)
	for {
		n, err := res.Body.Read(buf)
		if n > 0 && s.firstBytes.IsZero() {
			s.firstBytes = time.Now()
		}
		if err != nil {
			if err != io.EOF {
				s.err = err
			}
			s.ended = time.Now()
			return s
		}
	}
}

// TestStreamStallFallback: where the kernel cannot be read (the natsim
// pipes), a stream that pauses past the NAT's idle timeout, whose last
// event the NAT swallows, is reported as silent while it still hangs, at a
// WARN level and on the timeout's evidence: in the alert metric, the span
// and the handler. The same stream pausing below the timeout, and a long
// poll answered in time, raise nothing.
func TestStreamStallFallback(t *testing.T) {
	const natIdle = 350 * time.Second
	cases := []struct {
		name        string
		pause       time.Duration
		headersLate bool
		want        bool
	}{
		{"stream paused past the timeout", natIdle + 50*time.Second, false, true},
		{"stream paused below the timeout", natIdle - 50*time.Second, false, false},
		{"long poll answered past the timeout", natIdle + 50*time.Second, true, true},
		{"long poll answered below the timeout", natIdle - 50*time.Second, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tel := newTelemetry(t)
				var (
					mu      sync.Mutex
					blocked bool // the alert came while the read still waited
				)
				var lab *natLab
				lab = newNATLabServer(t, natIdle, pausingServer(c.pause, c.headersLate), tel.options(
					WithAlertHandler(func(ctx context.Context, a detectors.Alert) {
						mu.Lock()
						defer mu.Unlock()
						tel.alerts = append(tel.alerts, a)
						blocked = ctx.Err() == nil
					}))...)
				start := time.Now()
				s := readStream(lab.client, lab.url, 2*natIdle)
				alerts := tel.handledBy(detectors.StreamStallName)
				if !c.want {
					if s.err != nil {
						t.Errorf("read: %v; want the whole stream", s.err)
					}
					if len(alerts) != 0 {
						t.Fatalf("got %d stream_stall alerts; want none: %+v", len(alerts), alerts)
					}
					return
				}
				if !errors.Is(s.err, context.DeadlineExceeded) {
					t.Errorf("read: %v; want it to hang to its deadline (the NAT swallowed the rest)", s.err)
				}
				if len(alerts) != 1 {
					t.Fatalf("got %d stream_stall alerts; want 1", len(alerts))
				}
				a := alerts[0]
				if a.Outcome != detectors.OutcomeSilent || a.Level != slog.LevelWarn || a.Evidence != detectors.EvidenceTimeout || a.Threshold != natIdle {
					t.Errorf("alert %s level %v evidence %q threshold %v; want silent WARN timeout %v", a.Outcome, a.Level, a.Evidence, a.Threshold, natIdle)
				}
				// The silence began with the first event (a stream) or the
				// request (a long poll); the alert comes at the timeout, to
				// the watcher's second.
				quietFrom := start
				if !c.headersLate {
					quietFrom = s.firstBytes
				}
				if got := a.Time.Sub(quietFrom); got < natIdle || got > natIdle+2*time.Second {
					t.Errorf("alert %v after the silence began; want within 2s past %v", got, natIdle)
				}
				mu.Lock()
				if !blocked {
					t.Error("the alert came after the wait had ended; want it while the read still waits")
				}
				mu.Unlock()
				points := tel.Collect(t)
				if got := points.Total(vocab.MetricAlerts, vocab.AttrDetector.String(detectors.StreamStallName),
					vocab.AttrOutcome.String(detectors.OutcomeSilent)); got != 1 {
					t.Errorf("%s{stream_stall, silent}: got %v; want 1", vocab.MetricAlerts, got)
				}
				spans := tel.Spans.Ended()
				if len(spans) != 1 {
					t.Fatalf("got %d spans; want 1", len(spans))
				}
				found := false
				for _, e := range spans[0].Events() {
					set := attribute.NewSet(e.Attributes...)
					if v, _ := set.Value(vocab.AttrDetector); e.Name == vocab.EventAlert && v.AsString() == detectors.StreamStallName {
						found = true
					}
				}
				if !found {
					t.Error("the span has no stream_stall alert event")
				}
				// The verdict is on the span itself, where a span list shows it.
				spanAttrs := attribute.NewSet(spans[0].Attributes()...)
				if !testkit.HasAll(spanAttrs, vocab.AttrDetector.String(detectors.StreamStallName),
					vocab.AttrOutcome.String(detectors.OutcomeSilent)) {
					t.Errorf("span attributes %v; want the stream_stall/silent verdict", spans[0].Attributes())
				}
			})
		})
	}
}

// TestStreamStallOrdinaryRequests: requests answered at once are never
// reported, and once none is in flight the watcher's timer disarms:
// nothing runs.
func TestStreamStallOrdinaryRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		lab := newNATLab(t, 350*time.Second, tel.options()...)
		for range 5 {
			if err := lab.get(time.Minute); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Second)
		}
		if got := tel.handledBy(detectors.StreamStallName); len(got) != 0 {
			t.Errorf("got %d stream_stall alerts; want none", len(got))
		}
		tr := lab.client.Transport.(*Transport)
		time.Sleep(2 * lookEvery)
		synctest.Wait()
		if tr.streams.armed.Load() {
			t.Error("the stream watcher's timer is still armed with no request in flight")
		}
	})
}
