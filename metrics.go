package conntrace

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// connInstruments are the instruments of connections not reused
// (body_not_drained.go). A failed instrument is a no-op one, and its error
// went to otel.Handle.
type connInstruments struct {
	notReused metric.Int64Counter
}

func newConnInstruments(m metric.Meter) *connInstruments {
	var in connInstruments
	var err error
	in.notReused, err = m.Int64Counter(MetricNotReused,
		metric.WithUnit("{connection}"),
		metric.WithDescription("HTTP/1 connections closed after a request instead of returned to the idle pool, by reason."))
	if err != nil {
		otel.Handle(err)
	}
	if in.notReused == nil {
		in.notReused = noop.Int64Counter{}
	}
	return &in
}
