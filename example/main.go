// Command example tells conntrace's whole story on loopback, in about ten
// seconds, with nothing to install:
//
//  1. healthy traffic: a new connection, then a reused one;
//  2. a quiet period longer than the NAT's idle timeout: the reused
//     connection hangs, and conntrace's stale-reuse alert fires while the
//     request is still hanging, with advice;
//  3. the cure from the advice (IdleConnTimeout below the NAT timeout): the
//     same quiet period, and the next request dials afresh and succeeds.
//
// The NAT is internal/natsim's in-memory network, which silently drops
// flows idle past its timeout, scaled down from AWS NAT Gateway's 350 s to
// 2 s. Its connections are pipes, not sockets, so there is no kernel to ask:
// conntrace judges by its fallback rule (idle past the NAT timeout, then no
// answer within the hang timeout). Behind a real NAT on Linux it asks the
// kernel instead, and decides in about a second whatever it was told of the
// NAT: sudo scripts/natlab.sh run shows it.
//
//	go run ./example           # a readable summary
//	go run ./example -spans    # also print every span as JSON (stdouttrace)
//
// Telemetry is set up by conntrace/exporters from the standard OTEL_*
// variables. With none set, nothing leaves the process: spans feed the
// summary, metrics a reader printed at the end. To see the same story in a
// real Jaeger and Prometheus (scripts/jaeger.sh, scripts/prometheus.sh):
//
//	OTEL_TRACES_EXPORTER=otlp go run ./example     # OTLP/HTTP to localhost:4318
//	OTEL_METRICS_EXPORTER=prometheus go run ./example -linger 5m
//
// -linger keeps the process, and its /metrics on localhost:9464, up for a
// while after the story, so that Prometheus scrapes the final counts and
// evaluates its alert rules; Ctrl-C ends it early.
//
// Sampled as in production (OTEL_TRACES_SAMPLER=parentbased_traceidratio
// OTEL_TRACES_SAMPLER_ARG=0.01), most requests leave no span; the hang's
// alert still gets a trace, an alert span of its own, and the ALERT lines
// give the ID of the trace that holds the alert.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/exporters"
	"github.com/conntrace/conntrace/internal/advice"
	"github.com/conntrace/conntrace/internal/natsim"
	"github.com/conntrace/conntrace/vocab"
)

func main() {
	natIdle := flag.Duration("nat-idle", 2*time.Second, "idle timeout of the simulated NAT (AWS NAT Gateway: 350s)")
	hang := flag.Duration("hang", time.Second, "how long a suspect request may wait for a response before the alert")
	spans := flag.Bool("spans", false, "also print every span as JSON to stdout (stdouttrace; OTEL_TRACES_EXPORTER overrides)")
	linger := flag.Duration("linger", 0, "after the story, keep running (and serving /metrics) this long; Ctrl-C ends it")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Stdout, options{natIdle: *natIdle, hang: *hang, spans: *spans, linger: *linger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

// options are the example's flags.
type options struct {
	natIdle time.Duration // idle timeout of the simulated NAT
	hang    time.Duration // conntrace's hang timeout
	spans   bool          // print spans as JSON unless OTEL_TRACES_EXPORTER says otherwise
	linger  time.Duration // how long to stay up after the story
}

// run tells the story to out. Cancelling ctx interrupts it, and ends the
// linger early without an error.
func run(ctx context.Context, out io.Writer, o options) (err error) {
	natIdle, hang := o.natIdle, o.hang
	if natIdle <= 0 || hang <= 0 {
		return fmt.Errorf("-nat-idle (%v) and -hang (%v) must be positive", natIdle, hang)
	}
	if o.linger < 0 {
		return fmt.Errorf("-linger (%v) must not be negative", o.linger)
	}
	// The alert handler prints from conntrace's timer goroutine while the
	// main goroutine prints too.
	out = &syncWriter{w: out}
	quiet := natIdle + natIdle/4 // a quiet period the NAT will not survive
	deadline := 4 * hang         // each request's own deadline

	// OpenTelemetry, from the OTEL_* variables. Without them the example's
	// defaults hold: no exporter (or the console for -spans); either way
	// the summary printer reads conntrace's span events and a manual
	// reader its metrics. New rather than Setup: the providers are passed
	// to conntrace explicitly, so the tests never share the globals.
	summary := &summary{}
	reader := sdkmetric.NewManualReader()
	tracesDefault := "none"
	if o.spans {
		tracesDefault = "console"
	}
	tel, err := exporters.New(ctx,
		exporters.WithServiceName("conntrace-example"),
		exporters.WithDefaultTracesExporter(tracesDefault),
		exporters.WithDefaultMetricsExporter("none"),
		exporters.WithConsoleWriter(out),
		exporters.WithSpanProcessor(summary),
		exporters.WithMetricReader(reader),
	)
	if err != nil {
		return err
	}
	// Shutdown flushes what the exporters still hold (the OTLP batch, the
	// last metrics); its error is the run's if nothing else failed.
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if serr := tel.Shutdown(ctx); serr != nil && err == nil {
			err = fmt.Errorf("flushing telemetry: %w", serr)
		}
	}()
	tp, mp := tel.TracerProvider, tel.MeterProvider

	// The backend, behind the NAT: every connection the clients dial goes
	// through it, whatever the address.
	nat := natsim.NewNetwork(natIdle)
	defer nat.Close()
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello\n")
	})}
	go backend.Serve(nat.Listener())
	defer backend.Close()
	const url = "http://backend.internal:8080/hello"

	start := time.Now()
	newClient := func(base *http.Transport) *http.Client {
		return &http.Client{Transport: conntrace.NewTransport(base,
			conntrace.WithNATIdleTimeout(natIdle),
			conntrace.WithHangTimeout(hang),
			conntrace.WithTracerProvider(tp),
			conntrace.WithMeterProvider(mp),
			conntrace.WithLogger(slog.New(slog.DiscardHandler)), // the handler prints instead
			conntrace.WithAlertHandler(func(ctx context.Context, a detectors.Alert) {
				printAlert(out, a, trace.SpanContextFromContext(ctx))
			}),
		)}
	}
	do := func(client *http.Client) {
		ctx, cancel := context.WithTimeout(ctx, deadline)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		t0 := time.Now()
		res, err := client.Do(req)
		if err == nil {
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		result := "200 OK"
		if err != nil {
			result = "error: " + errors.Unwrap(err).Error()
		} else if res.StatusCode != http.StatusOK {
			result = res.Status
		}
		fmt.Fprintf(out, "   GET /hello -> %-36s %7s   %s\n", result, advice.Round(time.Since(t0)), summary.take())
	}
	pause := func(d time.Duration, why string) error {
		fmt.Fprintf(out, "   ... quiet for %s (%s)\n", d, why)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("interrupted: %w", context.Cause(ctx))
		}
	}

	fmt.Fprintf(out, "conntrace example: an HTTP client behind a NAT that forgets flows idle for %s\n", natIdle)
	fmt.Fprintf(out, "(AWS NAT Gateway forgets them after 350s; this in-process NAT is scaled down)\n")
	if tel.TracesExporter != "none" || tel.MetricsExporter != "none" {
		fmt.Fprintf(out, "Telemetry: traces to %s, metrics to %s%s\n", tel.TracesExporter, tel.MetricsExporter, metricsURL(tel.MetricsAddr))
	}
	fmt.Fprintln(out)

	// 1. Healthy traffic. The base is a clone of http.DefaultTransport: what
	// most services run with (IdleConnTimeout 90s, far above the NAT's).
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.DialContext = nat.DialContext
	defer base.CloseIdleConnections()
	client := newClient(base)
	// A Transport that is garbage collected takes its observable counts out
	// of /metrics; this one's must stay there while the example lingers.
	defer runtime.KeepAlive(client)
	fmt.Fprintln(out, "1. Healthy traffic: the second request reuses the pooled connection")
	do(client)
	if err := pause(natIdle/4, "shorter than the NAT's idle timeout"); err != nil {
		return err
	}
	do(client)

	// 2. The quiet period the NAT does not survive.
	fmt.Fprintf(out, "\n2. A quiet period longer than the NAT's idle timeout, then the same request (deadline %s)\n", deadline)
	if err := pause(quiet, "longer than the NAT's "+natIdle.String()); err != nil {
		return err
	}
	do(client)

	// 3. The cure the alert advised.
	cure := natIdle - natIdle/10
	fmt.Fprintf(out, "\n3. The cure: http.Transport.IdleConnTimeout = %s, below the NAT's %s\n", cure, natIdle)
	cured := http.DefaultTransport.(*http.Transport).Clone()
	cured.DialContext = nat.DialContext
	cured.IdleConnTimeout = cure
	defer cured.CloseIdleConnections()
	client = newClient(cured)
	do(client)
	if err := pause(quiet, "the pool closes the connection before the NAT forgets it"); err != nil {
		return err
	}
	do(client)

	fmt.Fprintf(out, "\nMetrics after %s:\n", advice.Round(time.Since(start)))
	if err := printMetrics(out, reader); err != nil {
		return err
	}
	return linger(ctx, out, o.linger, tel.MetricsAddr)
}

// linger keeps the process up for d, or until ctx is done, so that a
// Prometheus server can scrape the final counts and evaluate its rules.
func linger(ctx context.Context, out io.Writer, d time.Duration, metricsAddr string) error {
	if d == 0 {
		return nil
	}
	if metricsAddr != "" {
		fmt.Fprintf(out, "\nServing http://%s/metrics for %s more (-linger); Ctrl-C ends it.\n", metricsAddr, d)
	} else {
		fmt.Fprintf(out, "\nStaying up for %s more (-linger); Ctrl-C ends it.\n", d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return nil
}

// metricsURL is " (http://addr/metrics)" for the Prometheus exporter, or "".
func metricsURL(addr string) string {
	if addr == "" {
		return ""
	}
	return " (http://" + addr + "/metrics)"
}

// summary is a SpanProcessor that keeps a one-line account of the spans
// ended since it was last taken, built from conntrace's events: a request's
// span, or, for a request whose span was not sampled, the alert span
// conntrace made for its alert, if any.
type summary struct {
	mu   sync.Mutex
	line string
}

func (s *summary) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (s *summary) Shutdown(context.Context) error                  { return nil }
func (s *summary) ForceFlush(context.Context) error                { return nil }

func (s *summary) OnEnd(span sdktrace.ReadOnlySpan) {
	var parts []string
	for _, e := range span.Events() {
		attrs := attribute.NewSet(e.Attributes...)
		switch e.Name {
		case vocab.EventConnectDone:
			d, _ := attrs.Value(vocab.AttrDuration)
			parts = append(parts, "dialled ("+seconds(d.AsFloat64())+")")
		case vocab.EventGotConn:
			if reused, _ := attrs.Value(vocab.AttrReused); reused.AsBool() {
				idle, _ := attrs.Value(vocab.AttrIdleTime)
				parts = append(parts, "reused, idle "+seconds(idle.AsFloat64()))
			} else {
				parts = append(parts, "new connection")
			}
		case vocab.EventAlert:
			detector, _ := attrs.Value(vocab.AttrDetector)
			outcome, _ := attrs.Value(vocab.AttrOutcome)
			parts = append(parts, "alert: "+detector.AsString()+"/"+outcome.AsString())
		}
	}
	line := strings.Join(parts, ", ")
	if marked := attribute.NewSet(span.Attributes()...); marked.HasValue(vocab.AttrAlertSpan) {
		line = "(not sampled; alert span: " + line + ")"
	}
	s.mu.Lock()
	s.line = line
	s.mu.Unlock()
}

// take returns the account of the last span ended since the previous take,
// or "" if none ended (a request whose span was not sampled).
func (s *summary) take() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	line := s.line
	s.line = ""
	return line
}

func seconds(f float64) string {
	return advice.Round(time.Duration(f * float64(time.Second))).String()
}

// printAlert writes a in one Write, so its lines stay together, with the
// trace that holds it: the request's, or its alert span's when the request
// was not sampled.
func printAlert(out io.Writer, a detectors.Alert, sc trace.SpanContext) {
	var b strings.Builder
	fmt.Fprintf(&b, "   ALERT %s/%s (%s)", a.Detector, a.Outcome, a.Level)
	if a.Outcome == detectors.OutcomeHang {
		fmt.Fprintf(&b, ", raised %s after the request was written, while it still waits", advice.Round(a.Waited))
	}
	b.WriteString(":\n")
	wrap(&b, "     ", a.Message)
	wrap(&b, "     Advice: ", a.Advice)
	if sc.IsSampled() {
		fmt.Fprintf(&b, "     Trace: %s\n", sc.TraceID())
	}
	io.WriteString(out, b.String())
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// wrap prints text after prefix, folded at about 100 columns.
func wrap(out io.Writer, prefix, text string) {
	indent := strings.Repeat(" ", 5)
	line := prefix
	for _, word := range strings.Fields(text) {
		if len(line)+len(word) > 100 && strings.TrimSpace(line) != "" {
			fmt.Fprintln(out, line)
			line = indent
		}
		if line != indent && line != prefix {
			line += " "
		}
		line += word
	}
	fmt.Fprintln(out, line)
}

// printMetrics prints conntrace's own counters, one line per attribute set.
func printMetrics(out io.Writer, reader *sdkmetric.ManualReader) error {
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		return err
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok || !strings.HasPrefix(m.Name, "conntrace.") {
				continue
			}
			for _, p := range sum.DataPoints {
				var labels []string
				for _, kv := range p.Attributes.ToSlice() {
					if strings.HasPrefix(string(kv.Key), "conntrace.") {
						labels = append(labels, string(kv.Key)+"="+kv.Value.Emit())
					}
				}
				fmt.Fprintf(out, "   %-32s %-62s %d\n", m.Name, "{"+strings.Join(labels, ", ")+"}", p.Value)
			}
		}
	}
	return nil
}
