package conntrace

import (
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/semconv/v1.43.0/dnsconv"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/conntrace/conntrace/vocab"
)

// ScopeName is the instrumentation scope of conntrace's tracer and meter.
const ScopeName = "github.com/conntrace/conntrace"

// Version is the version of conntrace, reported as the instrumentation
// scope version.
const Version = "0.1.0"

// idleTimeBuckets are the bucket boundaries (seconds) of vocab.MetricIdleTime,
// chosen so the common NAT and load-balancer idle timeouts fall on a
// boundary: 60 (AWS ALB/NLB), 240 (Azure), 350 (AWS NAT), 1200 (GCP Cloud NAT).
var idleTimeBuckets = []float64{0.1, 1, 5, 15, 30, 60, 90, 120, 180, 240, 300, 350, 450, 600, 900, 1200, 1800, 3600}

// instruments holds every metric instrument of a Transport. A failed
// instrument is a no-op one, and its error went to otel.Handle.
type instruments struct {
	requestDuration httpconv.ClientRequestDuration
	dnsDuration     dnsconv.LookupDuration
	idleTime        metric.Float64Histogram
	dials           metric.Int64Counter
	staleReuses     metric.Int64Counter
	alerts          metric.Int64Counter
	// Connection lifetimes (dialer.go), connections not reused
	// (body_not_drained.go) and HTTP/2 errors (http2.go).
	open        httpconv.ClientOpenConnections
	duration    httpconv.ClientConnectionDuration
	notReused   metric.Int64Counter
	http2Errors metric.Int64Counter
	closedDead  metric.Int64Counter // cure.go
}

func newInstruments(m metric.Meter) *instruments {
	var errs [11]error
	var in instruments
	in.requestDuration, errs[0] = httpconv.NewClientRequestDuration(m)
	in.dnsDuration, errs[1] = dnsconv.NewLookupDuration(m)
	in.idleTime, errs[2] = m.Float64Histogram(vocab.MetricIdleTime,
		metric.WithUnit("s"),
		metric.WithDescription("How long a reused connection sat idle in the pool before it was handed out."),
		metric.WithExplicitBucketBoundaries(idleTimeBuckets...))
	in.dials, errs[3] = m.Int64Counter(vocab.MetricDials,
		metric.WithUnit("{dial}"),
		metric.WithDescription("Dial attempts, with error.type when one failed."))
	in.staleReuses, errs[4] = m.Int64Counter(vocab.MetricStaleReuses,
		metric.WithUnit("{request}"),
		metric.WithDescription("Requests sent on a connection that sat idle past the NAT idle timeout, by outcome."))
	in.alerts, errs[5] = m.Int64Counter(vocab.MetricAlerts,
		metric.WithUnit("{alert}"),
		metric.WithDescription("Alerts raised by conntrace's detectors, by detector."))
	in.open, errs[6] = httpconv.NewClientOpenConnections(m)
	in.duration, errs[7] = httpconv.NewClientConnectionDuration(m)
	in.notReused, errs[8] = m.Int64Counter(vocab.MetricNotReused,
		metric.WithUnit("{connection}"),
		metric.WithDescription("HTTP/1 connections closed after a request instead of returned to the idle pool, by reason."))
	in.http2Errors, errs[9] = m.Int64Counter(vocab.MetricHTTP2Errors,
		metric.WithUnit("{error}"),
		metric.WithDescription("HTTP/2 transport errors reported to CountError, by error.type (conn_close_lost_ping: a health-check ping went unanswered)."))
	in.closedDead, errs[10] = m.Int64Counter(vocab.MetricClosedDead,
		metric.WithUnit("{connection}"),
		metric.WithDescription("Reused connections closed because the kernel showed them dead under a request (WithCloseDeadConnections)."))
	if err := errors.Join(errs[:]...); err != nil {
		otel.Handle(err)
	}
	// The API lets a failing Meter return a nil instrument; never call one.
	if in.idleTime == nil {
		in.idleTime = noop.Float64Histogram{}
	}
	for _, c := range []*metric.Int64Counter{&in.dials, &in.staleReuses, &in.alerts, &in.notReused, &in.http2Errors, &in.closedDead} {
		if *c == nil {
			*c = noop.Int64Counter{}
		}
	}
	return &in
}
