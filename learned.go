package conntrace

import (
	"context"
	"errors"
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/vocab"
)

// What a Transport has learned of each path's idle timeout
// (detect.PathTimeouts, fed by stale_reuse's verdicts), and the two
// settings a fleet compares it with, as gauges read at collection:
// conntrace.path.idle_timeout{conntrace.bound}, and
// conntrace.config.idle_conn_timeout and conntrace.config.nat_idle_timeout.

// newLearnedGauges registers the callback that reports paths, the base's
// IdleConnTimeout (if base is an *http.Transport) and natIdle. The
// registration is returned so that the Transport can unregister it when it
// is garbage collected.
func newLearnedGauges(m metric.Meter, paths *detect.PathTimeouts, base http.RoundTripper, c *config) metric.Registration {
	var errs [4]error
	var path, idleConn, nat metric.Float64ObservableGauge
	path, errs[0] = m.Float64ObservableGauge(vocab.MetricPathIdleTimeout,
		metric.WithUnit("s"),
		metric.WithDescription("The idle timeout of the path to a server, as learned from reused connections: "+
			"bound=lower is the longest wire idle time a connection survived, bound=upper the shortest one did not."))
	idleConn, errs[1] = m.Float64ObservableGauge(vocab.MetricConfigIdleConnTimeout,
		metric.WithUnit("s"),
		metric.WithDescription("The base http.Transport's IdleConnTimeout; 0: idle connections are never closed for idleness."))
	nat, errs[2] = m.Float64ObservableGauge(vocab.MetricConfigNATIdleTimeout,
		metric.WithUnit("s"),
		metric.WithDescription("The NAT idle timeout conntrace was told (WithNATIdleTimeout)."))
	tr, isTransport := base.(*http.Transport)
	var idleConnTimeout float64
	if isTransport {
		idleConnTimeout = max(tr.IdleConnTimeout, 0).Seconds()
	}
	natIdle := c.natIdleTimeout.Seconds()
	var reg metric.Registration
	if path != nil && idleConn != nil && nat != nil {
		reg, errs[3] = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			paths.Each(func(host string, port int, b detect.Bracket) {
				if b.Lower > 0 {
					o.ObserveFloat64(path, b.Lower.Seconds(), boundAttrs(host, port, vocab.BoundLower))
				}
				if b.Upper > 0 {
					o.ObserveFloat64(path, b.Upper.Seconds(), boundAttrs(host, port, vocab.BoundUpper))
				}
			})
			if isTransport {
				o.ObserveFloat64(idleConn, idleConnTimeout)
			}
			o.ObserveFloat64(nat, natIdle)
			return nil
		}, path, idleConn, nat)
	}
	if err := errors.Join(errs[:]...); err != nil {
		otel.Handle(err)
	}
	return reg
}

func boundAttrs(host string, port int, bound string) metric.ObserveOption {
	return metric.WithAttributeSet(attribute.NewSet(semconv.ServerAddress(host), semconv.ServerPort(port), vocab.AttrBound.String(bound)))
}
