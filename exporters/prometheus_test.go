package exporters_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/exporters"
	"github.com/conntrace/conntrace/vocab"
)

// The Accept headers of a scrape: OpenMetrics alone, and the header
// Prometheus 2.42 sends (its scrape loop, without native histograms),
// which prefers OpenMetrics; with --enable-feature=exemplar-storage it
// stores the exemplars.
var openMetricsAccepts = map[string]string{
	"openmetrics": "application/openmetrics-text",
	"prometheus":  "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}

// newPrometheus is New with the Prometheus exporter on a free loopback
// port, every trace sampled, and the traces going nowhere.
func newPrometheus(t *testing.T) *exporters.Providers {
	t.Helper()
	cleanEnv(t, "OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "prometheus",
		"OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT", "0")
	p, err := exporters.New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	return p
}

// scrape GETs /metrics with the Accept header accept, and returns the
// Content-Type and the exposition.
func scrape(t *testing.T, p *exporters.Providers, accept string) (string, string) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+p.MetricsAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.Header.Get("Content-Type"), string(body)
}

// exemplarOf returns the trace ID of the exemplar on the sample line of
// series (the metric name and a label matcher it must carry), or "".
func exemplarOf(t *testing.T, exposition, series, label string) string {
	t.Helper()
	// The exemplar's labels come in either order (the exporter builds them
	// as a map).
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + `\{[^}]*` + regexp.QuoteMeta(label) + `[^}]*\} \S+ # \{([^}]*)\} \S+ \S+$`)
	m := re.FindStringSubmatch(exposition)
	if m == nil {
		return ""
	}
	id := regexp.MustCompile(`(?:^|,)trace_id="([0-9a-f]{32})"(?:,|$)`).FindStringSubmatch(m[1])
	if id == nil || !regexp.MustCompile(`(?:^|,)span_id="[0-9a-f]{16}"(?:,|$)`).MatchString(m[1]) {
		t.Errorf("exemplar {%s} of %s{%s}: want trace_id and span_id", m[1], series, label)
		return ""
	}
	return id[1]
}

// TestPrometheusServesExemplars: a counter incremented in a sampled span's
// context (conntrace counts a stale reuse in the request's context)
// carries that span's trace ID as an exemplar when the scrape negotiates
// OpenMetrics, the only format that carries exemplars.
func TestPrometheusServesExemplars(t *testing.T) {
	p := newPrometheus(t)
	meter := p.MeterProvider.Meter("github.com/conntrace/conntrace")
	staleReuses, _ := meter.Int64Counter(vocab.MetricStaleReuses)
	alerts, _ := meter.Int64Counter(vocab.MetricAlerts)

	ctx, span := p.TracerProvider.Tracer("test").Start(context.Background(), "GET")
	if !span.SpanContext().IsSampled() {
		t.Fatal("the span is not sampled; the default exemplar filter (trace_based) would record nothing")
	}
	traceID := span.SpanContext().TraceID().String()
	staleReuses.Add(ctx, 1, metric.WithAttributes(vocab.AttrOutcome.String(detectors.OutcomeHang)))
	alerts.Add(ctx, 1, metric.WithAttributes(vocab.AttrDetector.String("stale_reuse")))
	// Outside any span: no exemplar.
	staleReuses.Add(context.Background(), 1, metric.WithAttributes(vocab.AttrOutcome.String(detectors.OutcomeOK)))
	span.End()

	for name, accept := range openMetricsAccepts {
		t.Run(name, func(t *testing.T) {
			ctype, body := scrape(t, p, accept)
			if !strings.HasPrefix(ctype, "application/openmetrics-text") {
				t.Fatalf("Content-Type %q for Accept %q; want OpenMetrics", ctype, accept)
			}
			if got := exemplarOf(t, body, "conntrace_stale_reuses_total", `conntrace_outcome="hang"`); got != traceID {
				t.Errorf("conntrace_stale_reuses_total{conntrace_outcome=\"hang\"}: exemplar trace_id %q; want %q:\n%s", got, traceID, body)
			}
			if got := exemplarOf(t, body, "conntrace_alerts_total", `conntrace_detector="stale_reuse"`); got != traceID {
				t.Errorf("conntrace_alerts_total: exemplar trace_id %q; want %q:\n%s", got, traceID, body)
			}
			if !strings.Contains(body, "\nconntrace_stale_reuses_total{conntrace_outcome=\"ok\"") ||
				exemplarOf(t, body, "conntrace_stale_reuses_total", `conntrace_outcome="ok"`) != "" {
				t.Errorf("the count made outside any span should be served without an exemplar:\n%s", body)
			}
		})
	}
	// The classic text format cannot carry exemplars: still served to a
	// scraper that asks for nothing else.
	if ctype, body := scrape(t, p, ""); !strings.HasPrefix(ctype, "text/plain") || strings.Contains(body, "# {") {
		t.Errorf("without Accept: Content-Type %q; want text/plain, without exemplars:\n%s", ctype, body)
	}
}

// TestPrometheusExemplarIsTheLatest: a Prometheus counter shows one
// exemplar, and Prometheus stores it once: after a burst of alerts, the
// next alert's trace must be the one served. The SDK's default reservoir
// for counters keeps GOMAXPROCS exemplars, refills them from the first
// slot after each collection, and the Prometheus client serves the last
// slot: an old trace, until as many new alerts came.
func TestPrometheusExemplarIsTheLatest(t *testing.T) {
	// The default reservoir's size, fixed when the counter is created.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	p := newPrometheus(t)
	counter, _ := p.MeterProvider.Meter("github.com/conntrace/conntrace").Int64Counter(vocab.MetricStaleReuses)
	tracer := p.TracerProvider.Tracer("test")
	hang := metric.WithAttributes(vocab.AttrOutcome.String(detectors.OutcomeHang), attribute.String("server.address", "api.example.com"))
	alert := func() string {
		ctx, span := tracer.Start(context.Background(), "GET")
		defer span.End()
		counter.Add(ctx, 1, hang)
		return span.SpanContext().TraceID().String()
	}

	var burst []string
	for range 4 {
		burst = append(burst, alert())
	}
	_, body := scrape(t, p, openMetricsAccepts["prometheus"])
	if got := exemplarOf(t, body, "conntrace_stale_reuses_total", `conntrace_outcome="hang"`); !slices.Contains(burst, got) {
		t.Fatalf("after a burst: exemplar trace_id %q; want one of the burst's %v:\n%s", got, burst, body)
	}
	next := alert()
	_, body = scrape(t, p, openMetricsAccepts["prometheus"])
	if got := exemplarOf(t, body, "conntrace_stale_reuses_total", `conntrace_outcome="hang"`); got != next {
		t.Errorf("after one more alert: exemplar trace_id %q; want the new alert's %q (the burst was %v)", got, next, burst)
	}
}

// TestPrometheusNames: the names the OTel Prometheus exporter gives
// conntrace's fleet metrics, which exporters/prometheus/fleet.yml and the
// README use: a unit of "s" adds _seconds, a counter _total (a unit in
// braces adds nothing), dots become underscores, in both exposition
// formats. The instruments are made as the root metrics.go declares them.
func TestPrometheusNames(t *testing.T) {
	p := newPrometheus(t)
	meter := p.MeterProvider.Meter("github.com/conntrace/conntrace")
	ctx := context.Background()
	server := []attribute.KeyValue{attribute.String("server.address", "api.example.com"), attribute.Int("server.port", 443)}

	path, _ := meter.Float64Gauge(vocab.MetricPathIdleTimeout, metric.WithUnit("s"))
	path.Record(ctx, 240.5, metric.WithAttributes(append(server, vocab.AttrBound.String(vocab.BoundLower))...))
	path.Record(ctx, 352.25, metric.WithAttributes(append(server, vocab.AttrBound.String(vocab.BoundUpper))...))
	idleConn, _ := meter.Float64Gauge(vocab.MetricConfigIdleConnTimeout, metric.WithUnit("s"))
	idleConn.Record(ctx, 90)
	nat, _ := meter.Float64Gauge(vocab.MetricConfigNATIdleTimeout, metric.WithUnit("s"))
	nat.Record(ctx, 350)
	staleReuses, _ := meter.Int64Counter(vocab.MetricStaleReuses, metric.WithUnit("{request}"))
	staleReuses.Add(ctx, 2, metric.WithAttributes(append(server, vocab.AttrOutcome.String(detectors.OutcomeHang))...))
	alerts, _ := meter.Int64Counter(vocab.MetricAlerts, metric.WithUnit("{alert}"))
	alerts.Add(ctx, 3, metric.WithAttributes(append(server, vocab.AttrDetector.String("stale_reuse"))...))

	const scope = `otel_scope_name="github.com/conntrace/conntrace",otel_scope_schema_url="",otel_scope_version=""`
	for _, f := range []struct {
		name, accept, typeSuffix, one string
	}{
		// The classic text format names the counter's family with _total;
		// OpenMetrics without, its samples with.
		{"text", "", "_total", ""},
		{"openmetrics", openMetricsAccepts["openmetrics"], "", ".0"},
	} {
		t.Run(f.name, func(t *testing.T) {
			_, body := scrape(t, p, f.accept)
			for _, want := range []string{
				"# TYPE conntrace_path_idle_timeout_seconds gauge",
				`conntrace_path_idle_timeout_seconds{conntrace_bound="lower",` + scope + `,server_address="api.example.com",server_port="443"} 240.5`,
				`conntrace_path_idle_timeout_seconds{conntrace_bound="upper",` + scope + `,server_address="api.example.com",server_port="443"} 352.25`,
				"# TYPE conntrace_config_idle_conn_timeout_seconds gauge",
				`conntrace_config_idle_conn_timeout_seconds{` + scope + `} 90` + f.one,
				"# TYPE conntrace_config_nat_idle_timeout_seconds gauge",
				`conntrace_config_nat_idle_timeout_seconds{` + scope + `} 350` + f.one,
				"# TYPE conntrace_stale_reuses" + f.typeSuffix + " counter",
				`conntrace_stale_reuses_total{conntrace_outcome="hang",` + scope + `,server_address="api.example.com",server_port="443"} 2` + f.one,
				"# TYPE conntrace_alerts" + f.typeSuffix + " counter",
				`conntrace_alerts_total{conntrace_detector="stale_reuse",` + scope + `,server_address="api.example.com",server_port="443"} 3` + f.one,
			} {
				if !strings.Contains(body, want+"\n") {
					t.Errorf("/metrics lacks the line %q:\n%s", want, body)
				}
			}
		})
	}
}
