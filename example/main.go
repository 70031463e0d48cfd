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
// The NAT is internal/natsim, an in-process proxy that silently drops flows
// idle past its timeout, scaled down from AWS NAT Gateway's 350 s to 2 s.
//
//	go run ./example           # a readable summary
//	go run ./example -spans    # also print every span as JSON (stdouttrace)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/natsim"
)

func main() {
	natIdle := flag.Duration("nat-idle", 2*time.Second, "idle timeout of the simulated NAT (AWS NAT Gateway: 350s)")
	hang := flag.Duration("hang", time.Second, "how long a suspect request may wait for a response before the alert")
	spans := flag.Bool("spans", false, "also print every span as JSON to stdout (stdouttrace)")
	flag.Parse()
	if err := run(os.Stdout, *natIdle, *hang, *spans); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(out io.Writer, natIdle, hang time.Duration, printSpans bool) error {
	if natIdle <= 0 || hang <= 0 {
		return fmt.Errorf("-nat-idle (%v) and -hang (%v) must be positive", natIdle, hang)
	}
	// The alert handler prints from conntrace's timer goroutine while the
	// main goroutine prints too.
	out = &syncWriter{w: out}
	quiet := natIdle + natIdle/4 // a quiet period the NAT will not survive
	deadline := 4 * hang         // each request's own deadline

	// The backend, and the NAT in front of it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello\n")
	})}
	go backend.Serve(ln)
	defer backend.Close()
	nat, err := natsim.Listen(ln.Addr().String(), natIdle)
	if err != nil {
		return err
	}
	defer nat.Close()
	url := "http://" + nat.Addr() + "/hello"

	// OpenTelemetry: the summary printer reads conntrace's span events, a
	// manual reader its metrics.
	summary := &summary{}
	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithSpanProcessor(summary)}
	if printSpans {
		exp, err := stdouttrace.New(stdouttrace.WithWriter(out), stdouttrace.WithPrettyPrint())
		if err != nil {
			return err
		}
		tpOpts = append(tpOpts, sdktrace.WithSyncer(exp))
	}
	tp := sdktrace.NewTracerProvider(tpOpts...)
	defer tp.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	start := time.Now()
	newClient := func(base *http.Transport) *http.Client {
		return &http.Client{Transport: conntrace.NewTransport(base,
			conntrace.WithNATIdleTimeout(natIdle),
			conntrace.WithHangTimeout(hang),
			conntrace.WithTracerProvider(tp),
			conntrace.WithMeterProvider(mp),
			conntrace.WithLogger(slog.New(slog.DiscardHandler)), // the handler prints instead
			conntrace.WithAlertHandler(func(_ context.Context, a detectors.Alert) { printAlert(out, a) }),
		)}
	}
	do := func(client *http.Client) {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
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
		fmt.Fprintf(out, "   GET /hello -> %-36s %7s   %s\n", result, detectors.Round(time.Since(t0)), summary.last())
	}
	pause := func(d time.Duration, why string) {
		fmt.Fprintf(out, "   ... quiet for %s (%s)\n", d, why)
		time.Sleep(d)
	}

	fmt.Fprintf(out, "conntrace example: an HTTP client behind a NAT that forgets flows idle for %s\n", natIdle)
	fmt.Fprintf(out, "(AWS NAT Gateway forgets them after 350s; this in-process NAT is scaled down)\n\n")

	// 1. Healthy traffic. The base is a clone of http.DefaultTransport: what
	// most services run with (IdleConnTimeout 90s, far above the NAT's).
	base := http.DefaultTransport.(*http.Transport).Clone()
	defer base.CloseIdleConnections()
	client := newClient(base)
	fmt.Fprintln(out, "1. Healthy traffic: the second request reuses the pooled connection")
	do(client)
	pause(natIdle/4, "shorter than the NAT's idle timeout")
	do(client)

	// 2. The quiet period the NAT does not survive.
	fmt.Fprintf(out, "\n2. A quiet period longer than the NAT's idle timeout, then the same request (deadline %s)\n", deadline)
	pause(quiet, "longer than the NAT's "+natIdle.String())
	do(client)

	// 3. The cure the alert advised.
	cure := natIdle - natIdle/10
	fmt.Fprintf(out, "\n3. The cure: http.Transport.IdleConnTimeout = %s, below the NAT's %s\n", cure, natIdle)
	cured := http.DefaultTransport.(*http.Transport).Clone()
	cured.IdleConnTimeout = cure
	defer cured.CloseIdleConnections()
	client = newClient(cured)
	do(client)
	pause(quiet, "the pool closes the connection before the NAT forgets it")
	do(client)

	fmt.Fprintf(out, "\nMetrics after %s:\n", detectors.Round(time.Since(start)))
	return printMetrics(out, reader)
}

// summary is a SpanProcessor that keeps a one-line account of the last
// ended span, built from conntrace's events.
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
		case conntrace.EventConnectDone:
			d, _ := attrs.Value(conntrace.AttrDuration)
			parts = append(parts, "dialled ("+seconds(d.AsFloat64())+")")
		case conntrace.EventGotConn:
			if reused, _ := attrs.Value(conntrace.AttrReused); reused.AsBool() {
				idle, _ := attrs.Value(conntrace.AttrIdleTime)
				parts = append(parts, "reused, idle "+seconds(idle.AsFloat64()))
			}
		case conntrace.EventAlert:
			outcome, _ := attrs.Value(conntrace.AttrOutcome)
			parts = append(parts, "alert: stale_reuse/"+outcome.AsString())
		}
	}
	s.mu.Lock()
	s.line = strings.Join(parts, ", ")
	s.mu.Unlock()
}

func (s *summary) last() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.line
}

func seconds(f float64) string {
	return detectors.Round(time.Duration(f * float64(time.Second))).String()
}

// printAlert writes a in one Write, so its lines stay together.
func printAlert(out io.Writer, a detectors.Alert) {
	var b strings.Builder
	fmt.Fprintf(&b, "   ALERT %s/%s (%s), raised %s after the request was written, while it still waits:\n",
		a.Detector, a.Outcome, a.Level, detectors.Round(a.Waited))
	wrap(&b, "     ", a.Message)
	wrap(&b, "     Advice: ", a.Advice)
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
