package conntrace

import (
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
)

// connInstruments are the instruments of connection lifetimes
// (dialer.go), connections not reused (body_not_drained.go) and HTTP/2
// errors (http2.go). A failed instrument is a no-op one, and its error went
// to otel.Handle.
type connInstruments struct {
	open        httpconv.ClientOpenConnections
	duration    httpconv.ClientConnectionDuration
	notReused   metric.Int64Counter
	http2Errors metric.Int64Counter
}

func newConnInstruments(m metric.Meter) *connInstruments {
	var errs [4]error
	var in connInstruments
	in.open, errs[0] = httpconv.NewClientOpenConnections(m)
	in.duration, errs[1] = httpconv.NewClientConnectionDuration(m)
	in.notReused, errs[2] = m.Int64Counter(MetricNotReused,
		metric.WithUnit("{connection}"),
		metric.WithDescription("HTTP/1 connections closed after a request instead of returned to the idle pool, by reason."))
	in.http2Errors, errs[3] = m.Int64Counter(MetricHTTP2Errors,
		metric.WithUnit("{error}"),
		metric.WithDescription("HTTP/2 transport errors reported to CountError, by error.type (conn_close_lost_ping: a health-check ping went unanswered)."))
	if err := errors.Join(errs[:]...); err != nil {
		otel.Handle(err)
	}
	for _, c := range []*metric.Int64Counter{&in.notReused, &in.http2Errors} {
		if *c == nil {
			*c = noop.Int64Counter{}
		}
	}
	return &in
}
