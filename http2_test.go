package conntrace

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"golang.org/x/net/http2"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/natsim"
)

// h2BehindNAT starts an HTTP/2 (TLS) server behind a natsim proxy with the
// given idle timeout. It returns the proxy, the URL to reach the server
// through it, and a fresh transport that trusts the server's certificate
// and speaks HTTP/2.
func h2BehindNAT(t *testing.T, idle time.Duration) (*natsim.Proxy, string, *http.Transport) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(hello))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	proxy, err := natsim.Listen(srv.Listener.Addr().String(), idle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	base := srv.Client().Transport.(*http.Transport).Clone()
	t.Cleanup(base.CloseIdleConnections)
	return proxy, "https://" + proxy.Addr() + "/", base
}

// getH2 sends a GET with a deadline, reads the body, and checks the
// response came over HTTP/2.
func getH2(t *testing.T, client *http.Client, url string, deadline time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.ProtoMajor != 2 {
		t.Fatalf("response over %s; want HTTP/2", res.Proto)
	}
	_, err = io.ReadAll(res.Body)
	return err
}

// TestHTTP2StaleReuse: an HTTP/2 connection is shared, not pooled, so
// PutIdleConn never fires; GotConn still reports it reused after sitting
// idle (no open stream) past the NAT timeout. The request written on it
// hangs, and stale_reuse raises the same hang alert as for HTTP/1.1.
func TestHTTP2StaleReuse(t *testing.T) {
	proxy, url, base := h2BehindNAT(t, 200*time.Millisecond)
	tel := newTelemetry(t)
	client := &http.Client{Transport: NewTransport(base, tel.options(WithNATIdleTimeout(200*time.Millisecond), WithHangTimeout(300*time.Millisecond))...)}
	if err := getH2(t, client, url, time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := getH2(t, client, url, 1500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request on the forgotten connection: got %v; want context.DeadlineExceeded", err)
	}
	alerts := tel.handledBy(detectors.StaleReuseName)
	if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeHang {
		t.Fatalf("got alerts %+v; want one stale_reuse hang", tel.handled())
	}
	if at := alerts[0].Time.Sub(start); at < 300*time.Millisecond || at >= 1500*time.Millisecond {
		t.Errorf("alert %v after the request started; want after the 300ms hang timeout, before the 1.5s deadline", at)
	}
	if alerts[0].IdleTime < 300*time.Millisecond {
		t.Errorf("idle time %v; want at least the 300ms pause", alerts[0].IdleTime)
	}
	if got := total(tel.collect(t), MetricPutIdle); got != 0 {
		t.Errorf("%s: got %v; want 0 (HTTP/2 has no PutIdleConn)", MetricPutIdle, got)
	}
	if proxy.Dropped() != 1 {
		t.Errorf("the NAT dropped %d flows; want 1", proxy.Dropped())
	}
}

// TestHTTP2PingsKeepAlive: with HTTP2Config.SendPingTimeout below the NAT
// timeout, the health check pings the idle connection, the pings keep the
// NAT's entry alive, and the request after the same pause succeeds. The
// idle time net/http reports counts from the last stream, not the last
// ping, so stale_reuse says "ok" at Info level; nothing at WARN or above is
// raised, not even keepalive_gap, which knows pings keep HTTP/2 alive.
func TestHTTP2PingsKeepAlive(t *testing.T) {
	proxy, url, base := h2BehindNAT(t, 200*time.Millisecond)
	base.HTTP2 = &http.HTTP2Config{SendPingTimeout: 50 * time.Millisecond}
	tel := newTelemetry(t)
	client := &http.Client{Transport: NewTransport(base, tel.options(WithNATIdleTimeout(200*time.Millisecond), WithHangTimeout(300*time.Millisecond))...)}
	if err := getH2(t, client, url, time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := getH2(t, client, url, time.Second); err != nil {
		t.Fatalf("request after the pause: %v", err)
	}
	if got := tel.handled(); len(got) != 0 {
		t.Errorf("got alerts %+v; want none", got)
	}
	points := tel.collect(t)
	if got := total(points, MetricStaleReuses, AttrOutcome.String(detectors.OutcomeOK)); got != 1 {
		t.Errorf("%s{ok}: got %v; want 1", MetricStaleReuses, got)
	}
	ev, _ := event(tel.spans.Ended()[1], EventAlert)
	if msg, _ := ev.Value(AttrMessage); !strings.Contains(msg.AsString(), "HTTP/2 health-check pings") {
		t.Errorf("the ok verdict does not name the pings as a reason: %q", msg.AsString())
	}
	if got := total(points, MetricDials); got != 1 {
		t.Errorf("%s: got %v; want 1: the pinged connection was reused", MetricDials, got)
	}
	if proxy.Dropped() != 0 {
		t.Errorf("the NAT dropped %d flows; want 0", proxy.Dropped())
	}
}

// TestHTTP2LostPing: with pings due only after the NAT timeout
// (golang.org/x/net/http2's ReadIdleTimeout), the ping goes into the
// forgotten flow, no answer comes, and the health check closes the
// connection after PingTimeout. CountHTTP2Errors counts it as
// conn_close_lost_ping and still calls the CountError it chained; the next
// request dials a new connection instead of hanging on the dead one.
func TestHTTP2LostPing(t *testing.T) {
	proxy, url, base := h2BehindNAT(t, 200*time.Millisecond)
	tel := newTelemetry(t)
	ct := NewTransport(base, tel.options(WithNATIdleTimeout(200*time.Millisecond), WithHangTimeout(300*time.Millisecond))...)
	t2, err := http2.ConfigureTransports(base)
	if err != nil {
		t.Fatal(err)
	}
	t2.ReadIdleTimeout, t2.PingTimeout = 300*time.Millisecond, 200*time.Millisecond
	var chained atomic.Int32
	var lost atomic.Bool
	t2.CountError = ct.CountHTTP2Errors(func(errType string) {
		chained.Add(1)
		if errType == "conn_close_lost_ping" {
			lost.Store(true)
		}
	})
	client := &http.Client{Transport: ct}
	if err := getH2(t, client, url, time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lost ping", lost.Load)
	if err := getH2(t, client, url, time.Second); err != nil {
		t.Fatalf("request after the lost ping: %v", err)
	}
	points := tel.collect(t)
	if got := total(points, MetricHTTP2Errors, semconv.ErrorTypeKey.String("conn_close_lost_ping")); got != 1 {
		t.Errorf("%s{conn_close_lost_ping}: got %v; want 1", MetricHTTP2Errors, got)
	}
	if got := total(points, MetricHTTP2Errors); got != float64(chained.Load()) {
		t.Errorf("%s: counted %v; the chained CountError saw %d", MetricHTTP2Errors, got, chained.Load())
	}
	if got := total(points, MetricDials); got != 2 {
		t.Errorf("%s: got %v; want 2: the dead connection was closed, not reused", MetricDials, got)
	}
	if got := len(tel.handledBy(detectors.StaleReuseName)); got != 0 {
		t.Errorf("got %d stale_reuse alerts; want 0", got)
	}
	if proxy.Dropped() != 1 {
		t.Errorf("the NAT dropped %d flows; want 1", proxy.Dropped())
	}
}

// TestHTTP2ConfigCountErrorNotCalled pins what CountHTTP2Errors' doc says
// about Go 1.26: net/http's own HTTP/2 client honours
// HTTP2Config.SendPingTimeout and PingTimeout (the lost ping closes the
// connection, so the next request dials) but never calls
// HTTP2Config.CountError. If Go starts calling it, this test fails, and
// the doc must change.
func TestHTTP2ConfigCountErrorNotCalled(t *testing.T) {
	_, url, base := h2BehindNAT(t, 200*time.Millisecond)
	var called atomic.Int32
	base.HTTP2 = &http.HTTP2Config{SendPingTimeout: 300 * time.Millisecond, PingTimeout: 200 * time.Millisecond,
		CountError: func(string) { called.Add(1) }}
	tel := newTelemetry(t)
	client := &http.Client{Transport: NewTransport(base, tel.options(WithNATIdleTimeout(time.Hour), WithLogger(slog.New(slog.DiscardHandler)))...)}
	if err := getH2(t, client, url, time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(800 * time.Millisecond) // ping at 300ms, lost at 500ms
	if err := getH2(t, client, url, time.Second); err != nil {
		t.Fatalf("request after the lost ping: %v", err)
	}
	if got := total(tel.collect(t), MetricDials); got != 2 {
		t.Errorf("%s: got %v; want 2: the health check closed the dead connection", MetricDials, got)
	}
	if n := called.Load(); n != 0 {
		t.Errorf("HTTP2Config.CountError was called %d times: net/http now reports client errors there; update CountHTTP2Errors' doc", n)
	}
}
