package servers

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
)

// Set by scripts/servers.sh.
const (
	envServers = "CONNTRACE_SERVERS"      // "nginx=http://127.0.0.1:18081/ haproxy=..."
	envIdle    = "CONNTRACE_SERVERS_IDLE" // the idle timeout each server was given, in seconds
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type server struct{ name, url string }

func servers(t *testing.T) ([]server, time.Duration) {
	spec := os.Getenv(envServers)
	if spec == "" {
		t.Skip("real servers: not driven by scripts/servers.sh (it installs nginx, HAProxy, lighttpd and Caddy " +
			"and starts them on 127.0.0.1); run: sudo scripts/servers.sh run")
	}
	secs, err := strconv.Atoi(os.Getenv(envIdle))
	if err != nil || secs < 2 {
		t.Fatalf("%s=%q: want whole seconds, at least 2", envIdle, os.Getenv(envIdle))
	}
	var ss []server
	for _, f := range strings.Fields(spec) {
		name, url, ok := strings.Cut(f, "=")
		if !ok || name == "" || !strings.HasPrefix(url, "http://127.0.0.1:") {
			t.Fatalf("%s: bad entry %q; want name=http://127.0.0.1:port/", envServers, f)
		}
		ss = append(ss, server{name, url})
	}
	return ss, time.Duration(secs) * time.Second
}

// TestRealServers: conntrace over an *http.Transport, with its default
// options, against each server. A connection reused just below the
// server's idle timeout is answered on the same connection; one idle just
// above it was closed by the server (a FIN, while idle or in answer to the
// reused request) and the request ends on a new connection. Neither is a
// stale reuse, and no alert (WARN or above) may say otherwise. The gaps
// are half a second clear of the server's timer.
func TestRealServers(t *testing.T) {
	ss, idle := servers(t)
	for _, s := range ss {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			from, to := timer(s.name, idle)
			gaps := []struct {
				name       string
				gap        time.Duration
				wantReused bool
			}{
				{"below", from - 500*time.Millisecond, true},
				{"above", to + 500*time.Millisecond, false},
			}
			for _, g := range gaps {
				t.Run(g.name, func(t *testing.T) {
					t.Parallel()
					reused, alerts := idleThenReuse(t, s, g.gap)
					for _, a := range alerts {
						t.Errorf("alert %s/%s (level %v) after %v idle: %s", a.Detector, a.Outcome, a.Level, g.gap, a.Message)
					}
					if reused != g.wantReused {
						t.Errorf("after %v idle (the server's timeout: %v), the request ended on a reused connection: %v; want %v",
							g.gap, idle, reused, g.wantReused)
					}
					t.Logf("%s, %v idle: answered on a reused connection: %v; %d alerts", s.name, g.gap, reused, len(alerts))
				})
			}
		})
	}
}

// timer returns the range of idle times after which the server named ends
// a connection, given an idle timeout of idle: exactly idle, but for
// lighttpd, which compares whole seconds of a clock it updates about once
// a second, so that its 4 s ends connections idle between about 3 and 5 s
// (seen: 3.84 s while idle, 4.6 s on reuse, 5.02 s while idle).
func timer(name string, idle time.Duration) (from, to time.Duration) {
	if name == "lighttpd" {
		return idle - time.Second, idle + time.Second
	}
	return idle, idle
}

// idleThenReuse makes a GET, leaves the connection idle in the pool for
// gap (timed from when net/http pooled it), makes a second GET, and
// returns whether that one was answered on a reused connection, and the
// alerts conntrace handed to its handler.
func idleThenReuse(t *testing.T, s server, gap time.Duration) (bool, []detectors.Alert) {
	var mu sync.Mutex
	var alerts []detectors.Alert
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.Proxy = nil
	defer base.CloseIdleConnections()
	client := &http.Client{Timeout: 30 * time.Second, Transport: conntrace.NewTransport(base,
		// The defaults, but for where its log (the audit of base) goes.
		conntrace.WithLogger(slog.New(slog.NewTextHandler(t.Output(), nil))),
		conntrace.WithAlertHandler(func(_ context.Context, a detectors.Alert) {
			mu.Lock()
			alerts = append(alerts, a)
			mu.Unlock()
		}))}

	var pooled time.Time
	var last httptrace.GotConnInfo
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			mu.Lock()
			last = info
			mu.Unlock()
		},
		PutIdleConn: func(err error) {
			if err == nil {
				mu.Lock()
				pooled = time.Now()
				mu.Unlock()
			}
		},
	}
	ctx := httptrace.WithClientTrace(t.Context(), trace)
	get := func() {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", s.url, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK || !strings.Contains(string(body), "hello from "+s.name) {
			t.Fatalf("GET %s: %s %q %v; want 200 and a hello from %s", s.url, res.Status, body, err, s.name)
		}
	}

	get()
	mu.Lock()
	at := pooled
	mu.Unlock()
	if at.IsZero() {
		t.Fatalf("%s did not keep the first connection open", s.name)
	}
	time.Sleep(time.Until(at.Add(gap)))
	get()
	mu.Lock()
	defer mu.Unlock()
	return last.Reused, slices.Clone(alerts)
}
