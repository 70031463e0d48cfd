package conntrace

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"golang.org/x/net/http2"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

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
// hangs, and stale_reuse raises the same hang alert as for HTTP/1.1, at
// the hang timeout.
func TestHTTP2StaleReuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lab := newTLSLab(t, 200*time.Millisecond)
		tel := newTelemetry(t)
		client := &http.Client{Transport: NewTransport(lab.base, tel.options(WithNATIdleTimeout(200*time.Millisecond), WithHangTimeout(300*time.Millisecond))...)}
		if err := getH2(t, client, lab.url, time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		if err := getH2(t, client, lab.url, 1500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("request on the forgotten connection: got %v; want context.DeadlineExceeded", err)
		}
		if got, want := time.Since(start), 1500*time.Millisecond; got != want {
			t.Errorf("request on the forgotten connection failed after %v; want its %v deadline", got, want)
		}
		alerts := tel.handledBy(detectors.StaleReuseName)
		if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeHang {
			t.Fatalf("got alerts %+v; want one stale_reuse hang", tel.handled())
		}
		if at := alerts[0].Time.Sub(start); at != 300*time.Millisecond {
			t.Errorf("alert %v after the request started; want 300ms, the hang timeout (the request was written at once)", at)
		}
		if alerts[0].IdleTime < 300*time.Millisecond {
			t.Errorf("idle time %v; want at least the 300ms pause", alerts[0].IdleTime)
		}
		if got := tel.Collect(t).Total(vocab.MetricPutIdle); got != 0 {
			t.Errorf("%s: got %v; want 0 (HTTP/2 has no PutIdleConn)", vocab.MetricPutIdle, got)
		}
		if lab.net.Dropped() != 1 {
			t.Errorf("the NAT dropped %d flows; want 1", lab.net.Dropped())
		}
	})
}

// newH2CLab is a natLab whose server speaks HTTP/2 without TLS (h2c), as
// does its base transport: the NAT, ping and idle timeouts can be the real
// ones.
func newH2CLab(t *testing.T, natIdle time.Duration) *natLab {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return startNATLab(t, natIdle, &http.Server{Handler: http.HandlerFunc(hello), Protocols: &p})
}

// errTypes records the error types a CountError hook is called with; the
// hook runs on the HTTP/2 connection's goroutines.
type errTypes struct {
	mu    sync.Mutex
	types []string
}

func (e *errTypes) count(errType string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.types = append(e.types, errType)
}

func (e *errTypes) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.types)
}

// TestHTTP2PingsKeepAlive: with HTTP2Config.SendPingTimeout below the NAT
// timeout (the 2m55s the advice suggests for AWS's 350s), the health check
// pings the idle connection, the pings keep the NAT's entry alive, and the
// request after 400s idle succeeds on the same connection. The idle time
// net/http reports counts from the last stream, not the last ping, so
// stale_reuse says "ok" at Info level, naming the pings; nothing at WARN or
// above is raised.
func TestHTTP2PingsKeepAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lab := newH2CLab(t, 350*time.Second)
		lab.base.HTTP2 = &http.HTTP2Config{SendPingTimeout: advice.KeepAliveEvery(350 * time.Second)}
		tel := newTelemetry(t)
		client := &http.Client{Transport: NewTransport(lab.base, tel.options()...)}
		if err := getH2(t, client, lab.url, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(400 * time.Second)
		if err := getH2(t, client, lab.url, 30*time.Second); err != nil {
			t.Fatalf("request after 400s idle: %v", err)
		}
		if got := tel.handled(); len(got) != 0 {
			t.Errorf("got alerts %+v; want none", got)
		}
		points := tel.Collect(t)
		if got := points.Total(vocab.MetricStaleReuses, vocab.AttrOutcome.String(detectors.OutcomeOK)); got != 1 {
			t.Errorf("%s{ok}: got %v; want 1", vocab.MetricStaleReuses, got)
		}
		ev, _ := testkit.Event(tel.Spans.Ended()[1], vocab.EventAlert)
		if msg, _ := ev.Value(vocab.AttrMessage); !strings.Contains(msg.AsString(), "HTTP/2 health-check pings") {
			t.Errorf("the ok verdict does not name the pings as a reason: %q", msg.AsString())
		}
		if got := newConns(tel); got != 1 {
			t.Errorf("new connections: got %d; want 1: the pinged connection was reused", got)
		}
		if lab.net.Dropped() != 0 {
			t.Errorf("the NAT dropped %d flows; want 0", lab.net.Dropped())
		}
	})
}

// TestHTTP2LostPing: with pings due only after the NAT timeout
// (golang.org/x/net/http2's ReadIdleTimeout 400s against a 350s NAT), the
// ping goes into the forgotten flow, no answer comes, and the health check
// closes the connection after PingTimeout. CountHTTP2Errors counts it as
// conn_close_lost_ping and still calls the CountError it chained; the next
// request dials a new connection instead of hanging on the dead one.
func TestHTTP2LostPing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lab := newH2CLab(t, 350*time.Second)
		tel := newTelemetry(t)
		ct := NewTransport(lab.base, tel.options()...)
		t2, err := http2.ConfigureTransports(lab.base)
		if err != nil {
			t.Fatal(err)
		}
		t2.ReadIdleTimeout, t2.PingTimeout = 400*time.Second, 15*time.Second
		var chained errTypes
		t2.CountError = ct.CountHTTP2Errors(chained.count)
		client := &http.Client{Transport: ct}
		if err := getH2(t, client, lab.url, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(420 * time.Second) // ping at 400s, lost at 415s
		if !slices.Contains(chained.get(), "conn_close_lost_ping") {
			t.Fatalf("the chained CountError saw %q; want conn_close_lost_ping", chained.get())
		}
		if err := getH2(t, client, lab.url, 30*time.Second); err != nil {
			t.Fatalf("request after the lost ping: %v", err)
		}
		points := tel.Collect(t)
		if got := points.Total(vocab.MetricHTTP2Errors, semconv.ErrorTypeKey.String("conn_close_lost_ping")); got != 1 {
			t.Errorf("%s{conn_close_lost_ping}: got %v; want 1", vocab.MetricHTTP2Errors, got)
		}
		if got := points.Total(vocab.MetricHTTP2Errors); got != float64(len(chained.get())) {
			t.Errorf("%s: counted %v; the chained CountError saw %q", vocab.MetricHTTP2Errors, got, chained.get())
		}
		if got := newConns(tel); got != 2 {
			t.Errorf("new connections: got %d; want 2: the dead connection was closed, not reused", got)
		}
		if got := points.Total(vocab.MetricStaleReuses); got != 0 {
			t.Errorf("%s: got %v; want 0", vocab.MetricStaleReuses, got)
		}
		if lab.net.Dropped() != 1 {
			t.Errorf("the NAT dropped %d flows; want 1", lab.net.Dropped())
		}
	})
}

// TestHTTP2ConfigCountErrorNotCalled pins what CountHTTP2Errors' doc says
// about Go 1.26: net/http's own HTTP/2 client honours
// HTTP2Config.SendPingTimeout and PingTimeout (the lost ping closes the
// connection, so the next request dials) but never calls
// HTTP2Config.CountError. If Go starts calling it, this test fails, and
// the doc must change.
func TestHTTP2ConfigCountErrorNotCalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lab := newH2CLab(t, 350*time.Second)
		var called errTypes
		lab.base.HTTP2 = &http.HTTP2Config{SendPingTimeout: 400 * time.Second, PingTimeout: 15 * time.Second,
			CountError: called.count}
		tel := newTelemetry(t)
		client := &http.Client{Transport: NewTransport(lab.base, tel.options()...)}
		if err := getH2(t, client, lab.url, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(420 * time.Second) // ping at 400s, lost at 415s
		if err := getH2(t, client, lab.url, 30*time.Second); err != nil {
			t.Fatalf("request after the lost ping: %v", err)
		}
		if got := newConns(tel); got != 2 {
			t.Errorf("new connections: got %d; want 2: the health check closed the dead connection", got)
		}
		if got := called.get(); len(got) != 0 {
			t.Errorf("HTTP2Config.CountError was called with %q: net/http now reports client errors there; update CountHTTP2Errors' doc", got)
		}
	})
}
