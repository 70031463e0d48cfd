package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/conntrace/conntrace/internal/testkit"
)

// TestMain: run must stop everything it started (server, NAT, transports,
// the Prometheus endpoint).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// noOTelEnv clears the variables the exporters read, so that a test sees
// the example's defaults whatever the environment of the test run holds,
// then sets the pairs in set.
func noOTelEnv(t *testing.T, set ...string) {
	t.Helper()
	testkit.ClearOTelEnv(t, set...)
}

var fast = options{natIdle: 300 * time.Millisecond, hang: 200 * time.Millisecond}

// TestRun runs the whole story with short timeouts and checks that a reader
// sees each act: reuse, the hang alert with its advice, and the cure.
func TestRun(t *testing.T) {
	noOTelEnv(t)
	var out strings.Builder
	if err := run(context.Background(), &out, fast); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	acts := strings.SplitN(text, "\n3. ", 2)
	if len(acts) != 2 {
		t.Fatalf("no third act in:\n%s", text)
	}
	for _, want := range []string{
		"reused, idle",
		"ALERT stale_reuse/hang (ERROR), raised 2", // 200ms and a little: the hang timeout
		"while it still waits",
		"Advice: Set http.Transport.IdleConnTimeout below 300ms (for example 270ms)",
		"error: context deadline exceeded",
		"conntrace.stale_reuses           {conntrace.outcome=hang}",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	// Only a hang is raised while a request waits; other alerts (the
	// keep-alive gap of act 1's new connection) must not say so, and every
	// alert is labelled with its own detector.
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "ALERT ") && !strings.Contains(line, "/hang ") && strings.Contains(line, "still waits") {
			t.Errorf("a non-hang alert claims the request still waits: %q", line)
		}
		if strings.Contains(line, "alert: stale_reuse/keepalive") {
			t.Errorf("a keepalive_gap alert labelled as stale_reuse: %q", line)
		}
	}
	if got := strings.Count(acts[1], "200 OK"); got != 2 || strings.Contains(acts[1], "ALERT") {
		t.Errorf("the cure: got %d successful requests and alert %v; want 2 and none:\n%s", got, strings.Contains(acts[1], "ALERT"), acts[1])
	}
	// With no OTEL_* variable nothing is exported, and nothing says so.
	if strings.Contains(text, "Telemetry:") || strings.Contains(text, `"SpanContext"`) {
		t.Errorf("without OTEL_* variables or -spans the example exported something:\n%s", text)
	}
}

// TestRunSpans: -spans prints every span as JSON, the hang's alert event
// among them.
func TestRunSpans(t *testing.T) {
	noOTelEnv(t)
	var out strings.Builder
	o := fast
	o.spans = true
	if err := run(context.Background(), &out, o); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if got := strings.Count(text, `"SpanContext"`); got != 5 {
		t.Errorf("got %d spans printed; want 5, one per request:\n%s", got, text)
	}
	if !strings.Contains(text, `"Name": "conntrace.alert"`) {
		t.Errorf("the printed spans lack the conntrace.alert event:\n%s", text)
	}
}

// TestRunSampledOut: with a sampler that keeps no request (ratio 0, as 1 %
// would 99 times in 100), the hang's alert still has a trace: the alert span
// is the only span printed, the hanging request's line shows it, and the
// ALERT gives its trace ID.
func TestRunSampledOut(t *testing.T) {
	noOTelEnv(t, "OTEL_TRACES_SAMPLER", "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG", "0")
	var out strings.Builder
	o := fast
	o.spans = true
	if err := run(context.Background(), &out, o); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if got := strings.Count(text, `"StartTime"`); got != 1 || !strings.Contains(text, `"conntrace.alert_span"`) {
		t.Errorf("got %d spans printed; want 1, the alert span:\n%s", got, text)
	}
	trace := regexp.MustCompile(`(?m)^     Trace: ([0-9a-f]{32})$`).FindStringSubmatch(text)
	if trace == nil || !strings.Contains(text, `"TraceID": "`+trace[1]+`"`) {
		t.Errorf("the ALERT does not give the alert span's trace ID:\n%s", text)
	}
	hung := regexp.MustCompile(`(?m)^   GET /hello -> error: .*\(not sampled; alert span: reused, idle [^,]+, alert: stale_reuse/hang\)$`)
	if !hung.MatchString(text) {
		t.Errorf("the hanging request's line does not show its alert span:\n%s", text)
	}
	if got := len(regexp.MustCompile(`(?m)^   GET /hello -> 200 OK +\S+ +$`).FindAllString(text, -1)); got != 4 {
		t.Errorf("%d healthy requests printed without a span; want 4:\n%s", got, text)
	}
}

// TestRunServesPrometheusWhileLingering: with OTEL_METRICS_EXPORTER=prometheus
// and -linger, the final counts stay on /metrics, under the names the shipped
// alert rules use, until the linger ends or is cancelled.
func TestRunServesPrometheusWhileLingering(t *testing.T) {
	noOTelEnv(t, "OTEL_METRICS_EXPORTER", "prometheus",
		"OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT", "0")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := newWatcher(`Serving http://(\S+)/metrics for 1m0s more \(-linger\)`)
	o := fast
	o.linger = time.Minute
	done := make(chan error, 1)
	go func() { done <- run(ctx, out, o) }()

	var addr string
	select {
	case addr = <-out.match:
	case err := <-done:
		t.Fatalf("run returned %v before lingering:\n%s", err, out)
	case <-time.After(30 * time.Second):
		t.Fatalf("no linger line after 30s:\n%s", out)
	}
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^conntrace_stale_reuses_total\{conntrace_outcome="hang",otel_scope_name="github.com/conntrace/conntrace",.*server_address="backend.internal",server_port="8080"\} 1$`),
		regexp.MustCompile(`(?m)^conntrace_connection_put_idle_total\{conntrace_outcome="pooled",.*\} 4$`),
		regexp.MustCompile(`(?m)^conntrace_connection_reuses_total\{conntrace_connection_was_idle="true",.*\} 2$`),
		regexp.MustCompile(`(?m)^target_info\{.*service_name="conntrace-example".*\} 1$`),
	} {
		if !want.Match(body) {
			t.Errorf("/metrics has no line matching %s:\n%s", want, body)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("a cancelled linger returned %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of the cancel")
	}
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Errorf("%s still serves after run returned", addr)
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		o    options
		want string
	}{
		{name: "nat-idle", o: options{natIdle: -time.Second, hang: time.Second}, want: "-nat-idle (-1s)"},
		{name: "linger", o: options{natIdle: time.Second, hang: time.Second, linger: -time.Second}, want: "-linger (-1s) must not be negative"},
		{name: "exporter", env: []string{"OTEL_TRACES_EXPORTER", "jaeger"}, o: fast,
			want: "OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'; valid: otlp, console, none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noOTelEnv(t, tt.env...)
			if err := run(context.Background(), &strings.Builder{}, tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// watcher is an io.Writer that keeps what run prints and sends the first
// submatch of re, once, when a line matches it.
type watcher struct {
	re    *regexp.Regexp
	match chan string

	mu   sync.Mutex
	b    strings.Builder
	sent bool
}

func newWatcher(re string) *watcher {
	return &watcher{re: regexp.MustCompile(re), match: make(chan string, 1)}
}

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if m := w.re.FindStringSubmatch(w.b.String()); m != nil && !w.sent {
		w.sent = true
		w.match <- m[1]
	}
	return len(p), nil
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
