package conntrace

import (
	"errors"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"
)

// connInstruments are the instruments of connection lifetimes (dialer.go)
// and connections not reused (body_not_drained.go). A failed instrument is
// a no-op one, and its error went to otel.Handle.
type connInstruments struct {
	open      httpconv.ClientOpenConnections
	duration  httpconv.ClientConnectionDuration
	notReused metric.Int64Counter
}

func newConnInstruments(m metric.Meter) *connInstruments {
	var errs [3]error
	var in connInstruments
	in.open, errs[0] = httpconv.NewClientOpenConnections(m)
	in.duration, errs[1] = httpconv.NewClientConnectionDuration(m)
	in.notReused, errs[2] = m.Int64Counter(MetricNotReused,
		metric.WithUnit("{connection}"),
		metric.WithDescription("HTTP/1 connections closed after a request instead of returned to the idle pool, by reason."))
	if err := errors.Join(errs[:]...); err != nil {
		otel.Handle(err)
	}
	if in.notReused == nil {
		in.notReused = noop.Int64Counter{}
	}
	return &in
}
