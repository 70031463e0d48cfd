package exporters_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/goleak"

	"github.com/conntrace/conntrace/exporters"
	"github.com/conntrace/conntrace/internal/testkit"
)

func TestMain(m *testing.M) {
	if os.Getenv(envSetupChild) != "" {
		os.Exit(setupChild())
	}
	goleak.VerifyTestMain(m)
}

func cleanEnv(t *testing.T, set ...string) {
	t.Helper()
	testkit.ClearOTelEnv(t, set...)
}

func TestBadInputIsAClearError(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		opts []exporters.Option
		want string
	}{
		{
			name: "unknown traces exporter",
			env:  []string{"OTEL_TRACES_EXPORTER", "jaeger"},
			want: "exporters: OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'; valid: otlp, console, none",
		},
		{
			name: "unknown metrics exporter",
			env:  []string{"OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "xyz"},
			want: "exporters: OTEL_METRICS_EXPORTER: unknown exporter 'xyz'; valid: otlp, prometheus, console, none",
		},
		{
			name: "a list is not one exporter",
			env:  []string{"OTEL_TRACES_EXPORTER", "otlp,console"},
			want: "unknown exporter 'otlp,console'",
		},
		{
			name: "unknown OTLP protocol",
			env:  []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"},
			want: "exporters: OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol 'http/json'; valid: http/protobuf, grpc",
		},
		{
			name: "unknown OTLP metrics protocol",
			env:  []string{"OTEL_TRACES_EXPORTER", "none", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp"},
			want: "exporters: OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: unknown protocol 'udp'",
		},
		{
			name: "Prometheus port not a number",
			env:  []string{"OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "prometheus", "OTEL_EXPORTER_PROMETHEUS_PORT", "ninety"},
			want: "exporters: OTEL_EXPORTER_PROMETHEUS_PORT: 'ninety' is not a port number (0-65535)",
		},
		{
			name: "unknown sampler",
			env:  []string{"OTEL_TRACES_SAMPLER", "jaeger_remote"},
			want: "exporters: OTEL_TRACES_SAMPLER: unknown sampler 'jaeger_remote'; valid: always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
		},
		{
			name: "sampler ratio not a number",
			env:  []string{"OTEL_TRACES_SAMPLER", "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG", "1%"},
			want: "exporters: OTEL_TRACES_SAMPLER_ARG: '1%' is not a ratio from 0 to 1 (for OTEL_TRACES_SAMPLER=parentbased_traceidratio)",
		},
		{
			name: "sampler ratio above 1",
			env:  []string{"OTEL_TRACES_SAMPLER", "traceidratio", "OTEL_TRACES_SAMPLER_ARG", "1.5"},
			want: "exporters: OTEL_TRACES_SAMPLER_ARG: '1.5' is not a ratio from 0 to 1 (for OTEL_TRACES_SAMPLER=traceidratio)",
		},
		{
			name: "sampler ratio negative",
			env:  []string{"OTEL_TRACES_SAMPLER", "traceidratio", "OTEL_TRACES_SAMPLER_ARG", "-0.01"},
			want: "exporters: OTEL_TRACES_SAMPLER_ARG: '-0.01' is not a ratio",
		},
		{
			name: "sampler ratio NaN",
			env:  []string{"OTEL_TRACES_SAMPLER", "traceidratio", "OTEL_TRACES_SAMPLER_ARG", "NaN"},
			want: "exporters: OTEL_TRACES_SAMPLER_ARG: 'NaN' is not a ratio",
		},
		{
			name: "unknown default traces exporter",
			opts: []exporters.Option{exporters.WithDefaultTracesExporter("zipkin")},
			want: "exporters: WithDefaultTracesExporter: unknown exporter 'zipkin'; valid: otlp, console, none",
		},
		{
			name: "unknown default metrics exporter",
			opts: []exporters.Option{exporters.WithDefaultMetricsExporter("statsd")},
			want: "exporters: WithDefaultMetricsExporter: unknown exporter 'statsd'; valid: otlp, prometheus, console, none",
		},
		{
			name: "empty service name",
			opts: []exporters.Option{exporters.WithServiceName("")},
			want: "exporters: WithServiceName: empty service name",
		},
		{
			name: "nil processor, reader and writer",
			opts: []exporters.Option{exporters.WithSpanProcessor(nil), exporters.WithMetricReader(nil), exporters.WithConsoleWriter(nil)},
			want: "nil SpanProcessor\nexporters: WithMetricReader: nil Reader\nexporters: WithConsoleWriter: nil Writer",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t, tt.env...)
			p, err := exporters.New(context.Background(), tt.opts...)
			if err == nil {
				p.Shutdown(context.Background())
				t.Fatalf("got no error; want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q; want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestDefaultsApplyWhenUnset: with no OTEL_* variable, the option defaults
// decide, so a program can default to no export at all; the program's own
// processor and reader still see everything.
func TestDefaultsApplyWhenUnset(t *testing.T) {
	cleanEnv(t)
	rec := tracetest.NewSpanRecorder()
	reader := sdkmetric.NewManualReader()
	p, err := exporters.New(context.Background(),
		exporters.WithDefaultTracesExporter("none"),
		exporters.WithDefaultMetricsExporter("none"),
		exporters.WithSpanProcessor(rec),
		exporters.WithMetricReader(reader),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Shutdown(context.Background())
	if p.TracesExporter != "none" || p.MetricsExporter != "none" || p.MetricsAddr != "" {
		t.Errorf("got traces %q, metrics %q, addr %q; want none, none, no address", p.TracesExporter, p.MetricsExporter, p.MetricsAddr)
	}
	_, span := p.TracerProvider.Tracer("test").Start(context.Background(), "op")
	span.End()
	counter, _ := p.MeterProvider.Meter("test").Int64Counter("test.requests")
	counter.Add(context.Background(), 2)

	if got := len(rec.Ended()); got != 1 {
		t.Errorf("the span processor saw %d spans; want 1", got)
	}
	if got := testkit.Collect(t, reader).Total("test.requests"); got != 2 {
		t.Errorf("the reader collected %v; want 2", got)
	}
}

// TestEnvironmentWinsOverDefaults: an operator's OTEL_* variable overrides
// the program's default.
func TestEnvironmentWinsOverDefaults(t *testing.T) {
	cleanEnv(t, "OTEL_TRACES_EXPORTER", "console", "OTEL_METRICS_EXPORTER", "console")
	var out testkit.SyncBuffer
	p, err := exporters.New(context.Background(),
		exporters.WithDefaultTracesExporter("none"),
		exporters.WithDefaultMetricsExporter("none"),
		exporters.WithConsoleWriter(&out),
	)
	if err != nil {
		t.Fatal(err)
	}
	if p.TracesExporter != "console" || p.MetricsExporter != "console" {
		t.Errorf("got traces %q, metrics %q; want console, console", p.TracesExporter, p.MetricsExporter)
	}
	_, span := p.TracerProvider.Tracer("test").Start(context.Background(), "the-span")
	span.End()
	// Console traces are synchronous: the span is printed as it ends.
	if !strings.Contains(out.String(), `"Name": "the-span"`) {
		t.Errorf("console output lacks the span as it ended:\n%s", out.String())
	}
	counter, _ := p.MeterProvider.Meter("test").Int64Counter("test.requests")
	counter.Add(context.Background(), 5)
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Console metrics are exported at shutdown (the interval is a minute).
	if text := out.String(); !strings.Contains(text, `"Name": "test.requests"`) || !strings.Contains(text, `"Value": 5`) {
		t.Errorf("console output lacks the metric after shutdown:\n%s", text)
	}
}

// TestOTLPShutdownFlushes: OTLP export is batched (spans every 5 s,
// metrics every minute); Shutdown must send both at once, to the endpoint
// of OTEL_EXPORTER_OTLP_ENDPOINT.
func TestOTLPShutdownFlushes(t *testing.T) {
	var mu sync.Mutex
	got := map[string][]byte{}
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got[r.URL.Path] = append(got[r.URL.Path], body...)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	cleanEnv(t, "OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL, "OTEL_SERVICE_NAME", "flush-test")

	p, err := exporters.New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p.TracesExporter != "otlp" || p.MetricsExporter != "otlp" {
		t.Errorf("got traces %q, metrics %q; want the specification's default, otlp", p.TracesExporter, p.MetricsExporter)
	}
	_, span := p.TracerProvider.Tracer("test").Start(context.Background(), "flushed-span")
	span.End()
	counter, _ := p.MeterProvider.Meter("test").Int64Counter("flushed.counter")
	counter.Add(context.Background(), 1)

	mu.Lock()
	before := len(got)
	mu.Unlock()
	if before != 0 {
		t.Fatalf("exported before Shutdown (%d paths); the test cannot tell a flush from a timer", before)
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Protobuf carries strings as raw bytes.
	for path, want := range map[string]string{"/v1/traces": "flushed-span", "/v1/metrics": "flushed.counter"} {
		if !bytes.Contains(got[path], []byte(want)) {
			t.Errorf("after Shutdown, %s did not receive %q", path, want)
		}
		if !bytes.Contains(got[path], []byte("flush-test")) {
			t.Errorf("%s: the resource lacks service.name flush-test", path)
		}
	}
}

// TestPrometheusServesMetrics: OTEL_METRICS_EXPORTER=prometheus serves the
// OpenTelemetry names translated to Prometheus's (dots to underscores,
// _total on counters) until Shutdown.
func TestPrometheusServesMetrics(t *testing.T) {
	cleanEnv(t, "OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "prometheus",
		"OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT", "0")
	p, err := exporters.New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(p.MetricsAddr)
	if host != "127.0.0.1" || port == "0" || port == "" {
		t.Fatalf("MetricsAddr %q; want 127.0.0.1 and the port the kernel chose", p.MetricsAddr)
	}
	counter, _ := p.MeterProvider.Meter("test").Int64Counter("test.stale_reuses")
	counter.Add(context.Background(), 3, metric.WithAttributes(attribute.String("test.outcome", "hang")))

	body := testkit.Get(t, http.DefaultClient, "http://"+p.MetricsAddr+"/metrics")
	for _, want := range []string{
		"# TYPE test_stale_reuses_total counter",
		`test_stale_reuses_total{otel_scope_name="test",otel_scope_schema_url="",otel_scope_version="",test_outcome="hang"} 3`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", p.MetricsAddr, time.Second); err == nil {
		t.Errorf("%s still accepts connections after Shutdown", p.MetricsAddr)
	}
}

func TestPrometheusPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cleanEnv(t, "OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "prometheus",
		"OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT", port)
	_, err = exporters.New(context.Background())
	want := "exporters: Prometheus exporter: listening on 127.0.0.1:" + port + " (OTEL_EXPORTER_PROMETHEUS_HOST, OTEL_EXPORTER_PROMETHEUS_PORT)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v; want an error containing %q", err, want)
	}
}

func TestServiceName(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		opts []exporters.Option
		want string
	}{
		{name: "option", opts: []exporters.Option{exporters.WithServiceName("checkout")}, want: "checkout"},
		{name: "OTEL_SERVICE_NAME wins", env: []string{"OTEL_SERVICE_NAME", "from-env"}, opts: []exporters.Option{exporters.WithServiceName("checkout")}, want: "from-env"},
		{name: "OTEL_RESOURCE_ATTRIBUTES wins", env: []string{"OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,team=net"}, opts: []exporters.Option{exporters.WithServiceName("checkout")}, want: "from-attrs"},
		{name: "neither", want: "unknown_service:exporters.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t, append([]string{"OTEL_TRACES_EXPORTER", "none", "OTEL_METRICS_EXPORTER", "none"}, tt.env...)...)
			rec := tracetest.NewSpanRecorder()
			p, err := exporters.New(context.Background(), append(tt.opts, exporters.WithSpanProcessor(rec))...)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Shutdown(context.Background())
			_, span := p.TracerProvider.Tracer("test").Start(context.Background(), "op")
			span.End()
			res := rec.Ended()[0].Resource()
			if got, _ := res.Set().Value("service.name"); got.AsString() != tt.want {
				t.Errorf("service.name %q; want %q", got.AsString(), tt.want)
			}
			if got, _ := res.Set().Value("telemetry.sdk.language"); got.AsString() != "go" {
				t.Errorf("telemetry.sdk.language %q; want go", got.AsString())
			}
		})
	}
}

// envSetupChild makes the test binary run setupChild instead of the tests:
// Setup sets process-wide globals, so it is tested in a process of its own.
const envSetupChild = "CONNTRACE_EXPORTERS_SETUP_CHILD"

func setupChild() int {
	shutdown, err := exporters.Setup(context.Background(), exporters.WithServiceName("setup-child"))
	if err != nil {
		os.Stderr.WriteString(err.Error())
		return 1
	}
	if _, ok := otel.GetTracerProvider().(*sdktrace.TracerProvider); !ok {
		os.Stderr.WriteString("the global TracerProvider is not the SDK's")
		return 1
	}
	if got := otel.GetTextMapPropagator().Fields(); !strings.Contains(strings.Join(got, " "), "traceparent") {
		os.Stderr.WriteString("the global propagator lacks traceparent")
		return 1
	}
	_, span := otel.Tracer("test").Start(context.Background(), "through-the-globals")
	span.End()
	if err := shutdown(context.Background()); err != nil {
		os.Stderr.WriteString(err.Error())
		return 1
	}
	return 0
}

func TestSetupInstallsGlobals(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envSetupChild+"=1", "OTEL_TRACES_EXPORTER=console", "OTEL_METRICS_EXPORTER=none", "OTEL_SERVICE_NAME=",
		"OTEL_TRACES_SAMPLER=", "OTEL_TRACES_SAMPLER_ARG=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, stderr.String())
	}
	for _, want := range []string{`"Name": "through-the-globals"`, `"Value": "setup-child"`} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("the child's console output lacks %s:\n%s", want, out)
		}
	}
}

func TestSetupErrorLeavesSafeShutdown(t *testing.T) {
	cleanEnv(t, "OTEL_TRACES_EXPORTER", "xyz")
	shutdown, err := exporters.Setup(context.Background())
	if err == nil {
		t.Fatal("got no error for OTEL_TRACES_EXPORTER=xyz")
	}
	if shutdown == nil || shutdown(context.Background()) != nil {
		t.Error("on error, shutdown must be a func that does nothing")
	}
}
