//go:build linux

package natlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// Set by scripts/natlab.sh.
const (
	envServe     = "CONNTRACE_NATLAB_SERVE"             // serve mode: the address to listen on
	envServer    = "CONNTRACE_NATLAB_SERVER"            // the server, as the client namespace sees it
	envRouter    = "CONNTRACE_NATLAB_ROUTER"            // the router's namespace, for scenario d
	envCTTimeout = "CONNTRACE_NATLAB_CONNTRACK_TIMEOUT" // seconds
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(envServe); addr != "" {
		os.Exit(serve(addr))
	}
	os.Exit(m.Run())
}

// serve is the lab's server. Keep-alive is off on accepted connections:
// Go turns it on by default, and the server's probes would keep the NAT
// entry alive, hiding the drop.
func serve(addr string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natlab server:", err)
		return 1
	}
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	// The fault matrix's HTTP/2 listener and reverse proxy, when asked for.
	closeExtra, err := serveMatrix(ctx, lc, addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natlab server:", err)
		return 1
	}
	go func() {
		<-ctx.Done()
		srv.Close()
		closeExtra()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "natlab server:", err)
		return 1
	}
	return 0
}

// hello answers every request; with ?delay=2s it answers 2 s after reading
// the request, as a slow but alive server (the fault matrix's cases 3, 4
// and 9). Its kernel acknowledges the request at once all the same.
func hello(w http.ResponseWriter, r *http.Request) {
	if serveStream(w, r) { // streams_test.go
		return
	}
	io.Copy(io.Discard, r.Body)
	if d, err := time.ParseDuration(r.URL.Query().Get("delay")); err == nil && d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	io.WriteString(w, "hello from behind the NAT\n")
}

// lab is what the script told the tests.
type lab struct {
	server    string
	router    string
	ctTimeout time.Duration
	h2, proxy string // the fault matrix's HTTP/2 listener and reverse proxy
}

func newLab(t *testing.T) lab {
	server := os.Getenv(envServer)
	if server == "" {
		t.Skip("NAT lab: not driven by scripts/natlab.sh (needs root and network namespaces); run: sudo scripts/natlab.sh run")
	}
	secs, err := strconv.Atoi(os.Getenv(envCTTimeout))
	if err != nil || secs <= 0 {
		t.Fatalf("%s=%q: want a positive number of seconds", envCTTimeout, os.Getenv(envCTTimeout))
	}
	return lab{server: server, router: os.Getenv(envRouter), ctTimeout: time.Duration(secs) * time.Second}
}

// client is conntrace over an *http.Transport, with its own metrics and
// alerts, configured with the router's real timeout.
type client struct {
	*http.Client
	base   *http.Transport
	reader *sdkmetric.ManualReader

	mu     sync.Mutex
	alerts []detectors.Alert
}

const hangTimeout = time.Second

func (l lab) newClient(t *testing.T, dialer *net.Dialer, idleConnTimeout time.Duration) *client {
	c := &client{reader: sdkmetric.NewManualReader()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(c.reader))
	c.base = &http.Transport{DialContext: dialer.DialContext, IdleConnTimeout: idleConnTimeout}
	c.Client = &http.Client{Transport: conntrace.NewTransport(c.base,
		conntrace.WithMeterProvider(mp),
		conntrace.WithoutSpans(),
		conntrace.WithNATIdleTimeout(l.ctTimeout),
		conntrace.WithHangTimeout(hangTimeout),
		conntrace.WithAlertInterval(time.Nanosecond), // every alert of a scenario counts
		conntrace.WithLogger(slog.New(slog.DiscardHandler)),
		conntrace.WithAlertHandler(func(_ context.Context, a detectors.Alert) {
			c.mu.Lock()
			c.alerts = append(c.alerts, a)
			c.mu.Unlock()
			if a.Detector == detectors.StreamStallName {
				unexpectedStreamAlerts.Add(1) // the scenarios reuse pooled connections: never a stream
			}
			t.Logf("alert %s/%s after %v: %s", a.Detector, a.Outcome, a.Waited, a.Message)
		}),
	)}
	t.Cleanup(func() {
		c.base.CloseIdleConnections()
		mp.Shutdown(context.Background())
	})
	return c
}

// do sends one request with a deadline and reads the body.
func (c *client) do(method, url string, deadline time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, nil)
	res, err := c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, err = io.ReadAll(res.Body)
	return err
}

func (c *client) handled() []detectors.Alert {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]detectors.Alert(nil), c.alerts...)
}

// handledBy returns the alerts of one detector.
func (c *client) handledBy(detector string) []detectors.Alert {
	var out []detectors.Alert
	for _, a := range c.handled() {
		if a.Detector == detector {
			out = append(out, a)
		}
	}
	return out
}

// count sums a conntrace counter over the points whose attributes include want.
func (c *client) count(t *testing.T, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	return int64(testkit.Collect(t, c.reader).Total(name, want...))
}

var (
	keepAliveOff = &net.Dialer{KeepAlive: -1}
	outcome      = vocab.AttrOutcome.String
)

// TestNATLab runs the scenarios against the kernel's NAT. Each idles past
// (or, in e, below) the conntrack timeout, then reuses the connection.
func TestNATLab(t *testing.T) {
	l := newLab(t)
	url := "http://" + l.server + "/"
	past := l.ctTimeout + 2*time.Second // an idle period the NAT entry does not survive
	deadline := 3 * hangTimeout

	t.Run("a_keepalive_off_hangs", func(t *testing.T) {
		c := l.newClient(t, keepAliveOff, 0)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatal(err)
		}
		time.Sleep(past)
		start := time.Now()
		err := c.do(http.MethodGet, url, deadline)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("reused connection: got %v; want it to hang until context.DeadlineExceeded", err)
		}
		// keepalive_gap saw it coming: the new connection had keep-alive
		// off, with a pool that keeps it idle past the conntrack timeout.
		if gap := c.handledBy(detectors.KeepAliveGapName); len(gap) != 1 || gap[0].Outcome != detectors.OutcomeKeepAliveOff {
			t.Errorf("keepalive_gap alerts: got %+v; want one keepalive_off, at the first request", gap)
		}
		alerts := c.handledBy(detectors.StaleReuseName)
		if len(alerts) != 1 || alerts[0].Outcome != detectors.OutcomeHang {
			t.Fatalf("stale_reuse alerts: got %+v; want one hang", alerts)
		}
		a := alerts[0]
		// The kernel decides (the request unacknowledged through two
		// retransmission timeouts, about 0.9 s on this LAN), before the hang
		// timeout's fallback would, and well before the deadline.
		if a.Evidence != detectors.EvidenceKernel || a.Waited > kernelVerdictWithin || a.Time.Sub(start) >= deadline {
			t.Errorf("hang alert from %q evidence %v after the write, %v after the start; want kernel evidence within %v, before the %v deadline",
				a.Evidence, a.Waited, a.Time.Sub(start), kernelVerdictWithin, deadline)
		}
		if n := c.count(t, vocab.MetricStaleReuses, outcome(detectors.OutcomeHang)); n != 1 {
			t.Errorf("%s{hang}: got %d; want 1", vocab.MetricStaleReuses, n)
		}
		t.Logf("MEASURED a: hang alert from %s evidence %v after the request was written (hang timeout %v), request deadline %v", a.Evidence, a.Waited, hangTimeout, deadline)
	})

	t.Run("b_keepalive_cures", func(t *testing.T) {
		// Probes after 1s idle, every 1s: each refreshes the conntrack entry.
		c := l.newClient(t, &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}}, 0)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatal(err)
		}
		time.Sleep(past)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatalf("reused connection with keep-alive: %v", err)
		}
		// No detector complains: keepalive_gap sees probes every 1s against
		// the 3s conntrack timeout.
		if alerts := c.handled(); len(alerts) != 0 {
			t.Errorf("alerts: got %+v; want none", alerts)
		}
		// The detector saw a connection idle past the NAT timeout, and it
		// worked: the keep-alive probes kept the flow.
		if n := c.count(t, vocab.MetricStaleReuses, outcome(detectors.OutcomeOK)); n != 1 {
			t.Errorf("%s{ok}: got %d; want 1 (reused after %v idle, kept alive)", vocab.MetricStaleReuses, n, past)
		}
	})

	t.Run("c_idle_conn_timeout_cures", func(t *testing.T) {
		c := l.newClient(t, keepAliveOff, l.ctTimeout-time.Second)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatal(err)
		}
		time.Sleep(past)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatalf("after IdleConnTimeout: %v", err)
		}
		if n := c.count(t, vocab.MetricDials); n != 2 {
			t.Errorf("%s: got %d; want 2 (the pool closed the idle connection, a new one was dialled)", vocab.MetricDials, n)
		}
		if n := c.count(t, vocab.MetricStaleReuses); n != 0 || len(c.handled()) != 0 {
			t.Errorf("stale reuses %d, alerts %+v; want none", n, c.handled())
		}
	})

	t.Run("d_reset_firewall_retried_or_failed", func(t *testing.T) {
		// This firewall answers packets of forgotten flows with a TCP reset.
		t.Cleanup(resetFirewall(t))

		c := l.newClient(t, keepAliveOff, 0)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatal(err)
		}
		time.Sleep(past)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatalf("idempotent GET: got %v; want net/http to retry it on a new connection", err)
		}
		time.Sleep(past) // the retry's connection goes stale in turn
		if err := c.do(http.MethodPost, url, deadline); err == nil {
			t.Fatalf("POST on a reset connection: got no error; want one (net/http cannot replay it)")
		}
		var got []string
		for _, a := range c.handledBy(detectors.StaleReuseName) {
			got = append(got, a.Outcome)
		}
		if strings.Join(got, ",") != "retried,failed" {
			t.Errorf("alert outcomes: got %q; want retried then failed, and no hang", got)
		}
	})

	t.Run("e_idle_below_timeout_reuses", func(t *testing.T) {
		c := l.newClient(t, keepAliveOff, 0)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatal(err)
		}
		time.Sleep(l.ctTimeout / 3)
		if err := c.do(http.MethodGet, url, deadline); err != nil {
			t.Fatal(err)
		}
		if n := c.count(t, vocab.MetricReuses); n != 1 {
			t.Errorf("%s: got %d; want 1", vocab.MetricReuses, n)
		}
		// keepalive_gap still warns about the connection (keep-alive off);
		// it did not go stale.
		if n := c.count(t, vocab.MetricStaleReuses); n != 0 || len(c.handledBy(detectors.StaleReuseName)) != 0 {
			t.Errorf("stale reuses %d, alerts %+v; want none", n, c.handledBy(detectors.StaleReuseName))
		}
	})
}

// iptables runs iptables in the router's namespace.
func iptables(t *testing.T, ns string, args ...string) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "iptables"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables %v: %v\n%s", args, err, out)
	}
}
