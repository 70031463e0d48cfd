package conntrace

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/natsim"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestStaleReuseHang is the story conntrace exists for, on the real
// defaults (AWS NAT 350 s, hang timeout 10 s) in fake time: a pooled
// connection idle past the NAT timeout is reused, the NAT swallows the
// request, and the alert fires 10 s after the request was written, while it
// still hangs, 20 s before its own deadline.
func TestStaleReuseHang(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		var (
			mu           sync.Mutex
			alerts       []detectors.Alert
			stillHanging bool
		)
		lab := newNATLab(t, 350*time.Second, tel.options(WithAlertHandler(func(ctx context.Context, a detectors.Alert) {
			mu.Lock()
			defer mu.Unlock()
			stillHanging = ctx.Err() == nil // the request's context
			alerts = append(alerts, a)
		}))...)

		if err := lab.get(30 * time.Second); err != nil {
			t.Fatalf("first request: %v", err)
		}
		time.Sleep(351 * time.Second)
		start := time.Now()
		err := lab.get(30 * time.Second)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("stale request: got %v; want context.DeadlineExceeded", err)
		}
		if got, want := time.Since(start), 30*time.Second; got != want {
			t.Errorf("stale request failed after %v; want %v", got, want)
		}

		mu.Lock()
		defer mu.Unlock()
		if len(alerts) != 1 {
			t.Fatalf("got %d alerts; want 1", len(alerts))
		}
		a := alerts[0]
		if a.Outcome != detectors.OutcomeHang || a.Level != slog.LevelError {
			t.Errorf("alert: got %s at %v; want hang at ERROR", a.Outcome, a.Level)
		}
		if !stillHanging {
			t.Errorf("the alert came after the request ended; want it while the request hangs")
		}
		if got, want := a.Time.Sub(start), 10*time.Second; got != want {
			t.Errorf("alert after %v; want %v (the hang timeout; the request was written at once)", got, want)
		}
		if a.Waited != 10*time.Second || a.Threshold != 350*time.Second || a.IdleTime < 351*time.Second {
			t.Errorf("alert: waited %v, threshold %v, idle %v; want 10s, 5m50s, >= 5m51s", a.Waited, a.Threshold, a.IdleTime)
		}
		if a.Host != "backend.test" || a.Port != 80 {
			t.Errorf("alert host: got %s:%d; want backend.test:80", a.Host, a.Port)
		}
		for _, want := range []string{"5m51s", "5m50s", "IdleConnTimeout", "5m15s"} {
			if !strings.Contains(a.Message+a.Advice, want) {
				t.Errorf("alert text does not mention %q:\n%s\n%s", want, a.Message, a.Advice)
			}
		}

		points := tel.Collect(t)
		stale := []attribute.KeyValue{semconv.ServerAddress("backend.test"), vocab.AttrOutcome.String(detectors.OutcomeHang)}
		if got := points.Total(vocab.MetricStaleReuses, stale...); got != 1 {
			t.Errorf("%s%v: got %v; want 1", vocab.MetricStaleReuses, stale, got)
		}
		if got := points.Total(vocab.MetricAlerts, vocab.AttrDetector.String(detectors.StaleReuseName)); got != 1 {
			t.Errorf("%s: got %v; want 1", vocab.MetricAlerts, got)
		}
		spans := tel.Spans.Ended()
		last := spans[len(spans)-1]
		ev, ok := testkit.Event(last, vocab.EventAlert)
		if v, _ := ev.Value(vocab.AttrOutcome); !ok || v.AsString() != detectors.OutcomeHang {
			t.Errorf("stale request's span: no %s event with outcome hang (events %q)", vocab.EventAlert, testkit.EventNames(last))
		}
		// The verdict, where a span list shows it: the span's attributes,
		// and a status description that leads with the diagnosis, then the
		// error; error.type keeps its class. The healthy request has none.
		summary := "stale_reuse/hang: reused after 5m51s idle (NAT timeout 5m50s), no reply in 10.0s: the path likely forgot the connection"
		if st := last.Status(); st.Code != codes.Error || st.Description != summary+"; context deadline exceeded" {
			t.Errorf("stale request's span status: got %v %q; want Error %q", st.Code, st.Description, summary+"; context deadline exceeded")
		}
		verdict := []attribute.KeyValue{vocab.AttrDetector.String(detectors.StaleReuseName), vocab.AttrOutcome.String(detectors.OutcomeHang),
			vocab.AttrLevel.String("ERROR"), vocab.AttrSummary.String(summary), semconv.ErrorTypeKey.String(vocab.ErrorTypeTimeout)}
		if attrs := attribute.NewSet(last.Attributes()...); !testkit.HasAll(attrs, verdict...) {
			t.Errorf("stale request's span attributes %v; want %v", attrs.ToSlice(), verdict)
		}
		for _, kv := range spans[0].Attributes() {
			if kv.Key == vocab.AttrDetector || kv.Key == vocab.AttrOutcome || kv.Key == vocab.AttrLevel || kv.Key == vocab.AttrSummary {
				t.Errorf("healthy request's span has %v; want no verdict", kv)
			}
		}
		if ev, _ := testkit.Event(last, vocab.EventAlert); !testkit.HasAll(ev, vocab.AttrSummary.String(summary)) {
			t.Errorf("alert event %v; want the summary", ev.ToSlice())
		}
		// The log record's message is the same first line.
		if logs := tel.logs.String(); !strings.Contains(logs, `msg="conntrace: `+summary+`"`) || !strings.Contains(logs, "outcome=hang") ||
			!strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "message=") {
			t.Errorf("log: got %q; want an ERROR record with the summary, outcome=hang and the message", logs)
		}
	})
}

// TestStaleReuseQuiet: a connection reused within the NAT timeout raises
// nothing and arms no timer.
func TestStaleReuseQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		lab := newNATLab(t, 350*time.Second, tel.options()...)
		for range 3 {
			if err := lab.get(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			time.Sleep(340 * time.Second)
		}
		points := tel.Collect(t)
		if got := points.Total(vocab.MetricReuses); got != 2 {
			t.Errorf("%s: got %v; want 2", vocab.MetricReuses, got)
		}
		if got := points.Total(vocab.MetricStaleReuses) + points.Total(vocab.MetricAlerts); got != 0 {
			t.Errorf("stale reuses + alerts: got %v; want 0", got)
		}
		if got := len(tel.handled()); got != 0 {
			t.Errorf("got %d alerts handled; want 0", got)
		}
	})
}

// TestStaleReuseTimerReused: a suspect request answered before its hang
// timeout stops its timer unfired, and the Transport hands that timer to
// the next request that needs one. The next suspect request, which hangs,
// must still be woken and reported, at its own hang timeout; the first,
// ended, must not be.
func TestStaleReuseTimerReused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		// The NAT forgets after 350 s; conntrace is told 100 s, so a reuse
		// after 200 s is suspect (a timer armed) yet answered.
		lab := newNATLab(t, 350*time.Second, tel.options(WithNATIdleTimeout(100*time.Second))...)
		if err := lab.get(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Second)
		if err := lab.get(30 * time.Second); err != nil {
			t.Fatalf("suspect, answered: %v", err)
		}
		time.Sleep(351 * time.Second)
		start := time.Now()
		if err := lab.get(30 * time.Second); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("stale request: got %v; want context.DeadlineExceeded", err)
		}
		points := tel.Collect(t)
		for outcome, want := range map[string]float64{detectors.OutcomeOK: 1, detectors.OutcomeHang: 1} {
			if got := points.Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(outcome)); got != want {
				t.Errorf("%s{%s}: %v; want %v", vocab.MetricStaleReuses, outcome, got, want)
			}
		}
		hangs := tel.handled()
		if len(hangs) != 1 || hangs[0].Outcome != detectors.OutcomeHang {
			t.Fatalf("alerts handled: %+v; want the one hang", hangs)
		}
		if waited := hangs[0].Time.Sub(start); waited != detect.DefaultHangTimeout {
			t.Errorf("hang reported %v after the request; want %v (its own timer)", waited, detect.DefaultHangTimeout)
		}
	})
}

// TestStaleReuseRateLimit: two requests hang at once on stale connections
// to one host. Both are counted and both spans say so, but only one alert is
// logged and handed over; the next one reports the one held back.
func TestStaleReuseRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		// The server answers requests in pairs, so two requests sent
		// together hold two connections at once, however the bubble
		// schedules them.
		var mu sync.Mutex
		var waiting chan struct{}
		pairs := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			if waiting == nil {
				ch := make(chan struct{})
				waiting = ch
				mu.Unlock()
				<-ch
			} else {
				close(waiting)
				waiting = nil
				mu.Unlock()
			}
			hello(w, r)
		})
		lab := newNATLabServer(t, 350*time.Second, &http.Server{Handler: pairs}, tel.options()...)
		parallel := func() {
			var wg sync.WaitGroup
			for range 2 {
				wg.Go(func() { lab.get(30 * time.Second) })
			}
			wg.Wait()
		}
		parallel() // two connections in the pool
		time.Sleep(351 * time.Second)
		parallel() // both hang
		if got := tel.Collect(t).Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeHang)); got != 2 {
			t.Errorf("%s{hang}: got %v; want 2", vocab.MetricStaleReuses, got)
		}
		if got := len(tel.handled()); got != 1 {
			t.Fatalf("handled alerts: got %d; want 1", got)
		}
		if got := strings.Count(tel.logs.String(), "outcome=hang"); got != 1 {
			t.Errorf("logged alerts: got %d; want 1", got)
		}

		// More than the alert interval later, two more stale reuses: the
		// first is delivered and reports the one held back before.
		parallel()
		time.Sleep(351 * time.Second)
		parallel()
		handled := tel.handled()
		if len(handled) != 2 || handled[1].Suppressed != 1 {
			t.Errorf("after the interval: got %d handled, last suppressed %d; want 2 and 1", len(handled), handled[len(handled)-1].Suppressed)
		}
	})
}

// TestAlertHandlerPanics: a panicking handler cannot break a request.
func TestAlertHandlerPanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		lab := newNATLab(t, 350*time.Second, tel.options(
			WithAlertHandler(func(context.Context, detectors.Alert) { panic("handler bug") }),
			WithHangTimeout(time.Second))...)
		lab.get(30 * time.Second)
		time.Sleep(351 * time.Second)
		if err := lab.get(5 * time.Second); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v; want the request's own context.DeadlineExceeded", err)
		}
		if err := lab.get(5 * time.Second); err != nil {
			t.Errorf("the next request: %v", err)
		}
		if got := tel.Collect(t).Total(vocab.MetricAlerts); got != 1 {
			t.Errorf("%s: got %v; want 1", vocab.MetricAlerts, got)
		}
	})
}

// panickyHandler is a slog.Handler with a bug.
type panickyHandler struct{ slog.Handler }

func (panickyHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (panickyHandler) Handle(context.Context, slog.Record) error { panic("slog handler bug") }

// TestLoggerPanics: a panicking slog.Handler, called from the hang timer's
// goroutine, cannot crash the process or break the request either.
func TestLoggerPanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		lab := newNATLab(t, 350*time.Second, tel.options(WithLogger(slog.New(panickyHandler{})))...)
		lab.get(30 * time.Second)
		time.Sleep(351 * time.Second)
		if err := lab.get(30 * time.Second); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v; want the request's own context.DeadlineExceeded", err)
		}
		if got := tel.Collect(t).Total(vocab.MetricStaleReuses); got != 1 {
			t.Errorf("%s: got %v; want 1", vocab.MetricStaleReuses, got)
		}
	})
}

// behindNAT puts a natsim proxy with the given idle timeout in front of srv
// and returns it with the URL to reach srv through it.
func behindNAT(t *testing.T, srv *httptest.Server, idle time.Duration) (*natsim.Proxy, string) {
	t.Helper()
	proxy, err := natsim.Listen(srv.Listener.Addr().String(), idle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	return proxy, "http://" + proxy.Addr() + "/"
}

// TestStaleReuseTCP runs the hang over real loopback sockets through the
// natsim proxy, with short timeouts, as the example does.
func TestStaleReuseTCP(t *testing.T) {
	proxy, url := behindNAT(t, newServer(t, hello), 200*time.Millisecond)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithNATIdleTimeout(200*time.Millisecond), WithHangTimeout(300*time.Millisecond))...)
	testkit.Get(t, client, url)
	// Wall clock on purpose: real sockets are the point; TestStaleReuseHang is this story in fake time.
	time.Sleep(300 * time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	start := time.Now()
	if _, err := client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v; want context.DeadlineExceeded", err)
	}
	alerts := tel.handledBy(detectors.StaleReuseName) // the 200ms NAT also draws a keepalive_gap alert
	if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeHang {
		t.Fatalf("got alerts %+v; want one hang", alerts)
	}
	if latency := alerts[0].Time.Sub(start); latency < 300*time.Millisecond || latency >= 1500*time.Millisecond {
		t.Errorf("alert %v after the request started; want the 300ms hang timeout, before the 1.5s deadline", latency)
	}
	if proxy.Dropped() != 1 {
		t.Errorf("proxy dropped %d flows; want 1", proxy.Dropped())
	}
}

// TestServerClosedIdle: a server that closes idle connections sends a FIN;
// the client pool drops the connection and the next request dials. That is
// not a stale reuse, whatever the idle time.
func TestServerClosedIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tel := newTelemetry(t)
		srv := &http.Server{Handler: http.HandlerFunc(hello), IdleTimeout: 50 * time.Millisecond}
		lab := newNATLabServer(t, 10*time.Second, srv, tel.options(WithNATIdleTimeout(100*time.Millisecond), WithHangTimeout(100*time.Millisecond))...)
		testkit.Get(t, lab.client, lab.url)
		time.Sleep(300 * time.Millisecond)
		testkit.Get(t, lab.client, lab.url)

		points := tel.Collect(t)
		if got := newConns(tel); got != 2 {
			t.Errorf("new connections: got %d; want 2 (the closed connection is not reused)", got)
		}
		if got := points.Total(vocab.MetricStaleReuses) + points.Total(vocab.MetricAlerts, vocab.AttrDetector.String(detectors.StaleReuseName)); got != 0 {
			t.Errorf("stale reuses + alerts: got %v; want 0", got)
		}
	})
}

// TestHTTP2Reuse: HTTP/2 over TLS has no PutIdleConn, but GotConn still
// reports reuse and idle time, so the idle-time telemetry (and with it the
// stale-reuse detector) works there too.
func TestHTTP2Reuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lab := newTLSLab(t, 350*time.Second)
		tel := newTelemetry(t)
		client := &http.Client{Transport: NewTransport(lab.base, tel.options()...)}
		testkit.Get(t, client, lab.url)
		time.Sleep(50 * time.Millisecond)
		testkit.Get(t, client, lab.url)

		spans := tel.Spans.Ended()
		if len(spans) != 2 {
			t.Fatalf("got %d spans; want 2", len(spans))
		}
		attrs := attribute.NewSet(spans[1].Attributes()...)
		if v, _ := attrs.Value(semconv.NetworkProtocolVersionKey); v.AsString() != "2" {
			t.Errorf("protocol: got %q; want \"2\"", v.AsString())
		}
		if testkit.Count(testkit.EventNames(spans[0]), vocab.EventTLSDone) != 1 {
			t.Errorf("first request: no %s event in %q", vocab.EventTLSDone, testkit.EventNames(spans[0]))
		}
		got, _ := testkit.Event(spans[1], vocab.EventGotConn)
		reused, _ := got.Value(vocab.AttrReused)
		wasIdle, _ := got.Value(vocab.AttrWasIdle)
		idle, _ := got.Value(vocab.AttrIdleTime)
		if !reused.AsBool() || !wasIdle.AsBool() || idle.AsFloat64() != 0.05 {
			t.Errorf("second got_conn: reused %v, was_idle %v, idle %vs; want true, true, 0.05", reused.AsBool(), wasIdle.AsBool(), idle.AsFloat64())
		}
		if got := tel.Collect(t).Total(vocab.MetricIdleTime); got != 1 {
			t.Errorf("%s: got %v observations; want 1", vocab.MetricIdleTime, got)
		}
	})
}

// resetOnReuse is a server that answers body on a connection's first
// request, and closes the connection unanswered after reading any later
// one, as a firewall that answers a forgotten flow with a reset does. It
// tells connections apart by their net.Conn: behind natsim, every one's
// RemoteAddr is "pipe".
func resetOnReuse(body string) *http.Server {
	type connKey struct{}
	var mu sync.Mutex
	served := map[net.Conn]int{} // requests per connection
	return &http.Server{
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c := r.Context().Value(connKey{}).(net.Conn)
			mu.Lock()
			served[c]++
			n := served[c]
			mu.Unlock()
			if n > 1 {
				conn, _, _ := http.NewResponseController(w).Hijack()
				conn.Close()
				return
			}
			io.WriteString(w, body)
		}),
	}
}

// TestStaleReuseRetriedAndFailed: the server drops a reused connection
// after reading the request, as a firewall that answers a forgotten flow
// with a reset does. net/http retries the GET on a new connection
// ("retried", WARN); it cannot replay the POST ("failed", ERROR).
func TestStaleReuseRetriedAndFailed(t *testing.T) {
	tests := []struct {
		method      string
		wantErr     bool
		wantOutcome string
		wantLevel   slog.Level
		wantResends int64
	}{
		{http.MethodGet, false, detectors.OutcomeRetried, slog.LevelWarn, 1},
		{http.MethodPost, true, detectors.OutcomeFailed, slog.LevelError, 0},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tel := newTelemetry(t)
				// The NAT keeps the flow (350s): the server's close reaches
				// the client, and only conntrace was told of a 50ms NAT.
				lab := newNATLabServer(t, 350*time.Second, resetOnReuse("ok"), tel.options(WithNATIdleTimeout(50*time.Millisecond))...)
				testkit.Get(t, lab.client, lab.url)
				time.Sleep(100 * time.Millisecond)

				req, _ := http.NewRequest(tt.method, lab.url, strings.NewReader(""))
				res, err := lab.client.Do(req)
				if (err != nil) != tt.wantErr {
					t.Fatalf("got error %v; want error: %v", err, tt.wantErr)
				}
				if err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
				alerts := tel.handledBy(detectors.StaleReuseName)
				if len(alerts) != 1 || alerts[0].Outcome != tt.wantOutcome || alerts[0].Level != tt.wantLevel {
					t.Fatalf("got alerts %+v; want one %s at %v", alerts, tt.wantOutcome, tt.wantLevel)
				}
				if got := tel.Collect(t).Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(tt.wantOutcome)); got != 1 {
					t.Errorf("%s{%s}: got %v; want 1", vocab.MetricStaleReuses, tt.wantOutcome, got)
				}
				spans := tel.Spans.Ended()
				attrs := attribute.NewSet(spans[len(spans)-1].Attributes()...)
				if v, _ := attrs.Value(semconv.HTTPRequestResendCountKey); v.AsInt64() != tt.wantResends {
					t.Errorf("http.request.resend_count: got %d; want %d", v.AsInt64(), tt.wantResends)
				}
			})
		})
	}
}
