package conntrace

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/vocab"
)

// raise sends each alert where it belongs, beyond the span event that
// observe already added: for stale reuse a conntrace.stale_reuses count;
// for alerts of level WARN and above a conntrace.alerts count and, within
// the rate limit, a log record and the AlertHandler. It must be called
// without req.mu held: a handler may take its time.
func (req *request) raise(alerts []detectors.Alert) {
	if len(alerts) == 0 {
		return // a healthy request: nothing to do
	}
	// On a request whose trace is not sampled, an alert span (alertspan.go):
	// the counts' exemplars and the log record point at the trace holding
	// the alert.
	ctx := req.alertContext(alerts)
	for _, a := range alerts {
		// beyond_first_hop is stale_reuse saying a connection was NOT stale.
		if a.Detector == detectors.StaleReuseName && a.Outcome != detectors.OutcomeBeyondFirstHop {
			req.t.inst.staleReuses.Add(ctx, 1, metric.WithAttributeSet(req.host.with(vocab.AttrOutcome.String(a.Outcome))))
		}
		if a.Level < slog.LevelWarn {
			continue
		}
		req.t.inst.alerts.Add(ctx, 1, metric.WithAttributeSet(req.host.with(vocab.AttrDetector.String(a.Detector), vocab.AttrOutcome.String(a.Outcome))))
		req.t.deliver(ctx, a)
	}
}

func alertAttrs(a detectors.Alert) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		vocab.AttrDetector.String(a.Detector),
		vocab.AttrOutcome.String(a.Outcome),
		vocab.AttrLevel.String(a.Level.String()),
		vocab.AttrMessage.String(a.Message),
		vocab.AttrAdvice.String(a.Advice),
	}
	if a.IdleTime > 0 {
		attrs = append(attrs, vocab.AttrIdleTime.Float64(a.IdleTime.Seconds()))
	}
	if a.Threshold > 0 {
		attrs = append(attrs, vocab.AttrThreshold.Float64(a.Threshold.Seconds()))
	}
	if a.Waited > 0 {
		attrs = append(attrs, vocab.AttrWaited.Float64(a.Waited.Seconds()))
	}
	if a.Evidence != "" {
		attrs = append(attrs, vocab.AttrEvidence.String(a.Evidence))
	}
	if a.WireIdle > 0 {
		attrs = append(attrs, vocab.AttrWireIdle.Float64(a.WireIdle.Seconds()))
	}
	return attrs
}

// deliver logs a and hands it to the AlertHandler, unless the rate limit for
// its detector and host holds it back.
func (t *Transport) deliver(ctx context.Context, a detectors.Alert) {
	ok, suppressed := t.limiter.Allow(a.Time, a.Detector+" "+net.JoinHostPort(a.Host, strconv.Itoa(a.Port)))
	if !ok {
		return
	}
	a.Suppressed = suppressed
	// A user's slog.Handler or AlertHandler may panic, on a timer goroutine
	// where nothing else would recover it.
	defer func() {
		if r := recover(); r != nil {
			otel.Handle(fmt.Errorf("conntrace: alert logger or handler panicked: %v", r))
		}
	}()
	t.logger.LogAttrs(ctx, a.Level, "conntrace: "+a.Message,
		slog.String("detector", a.Detector),
		slog.String("outcome", a.Outcome),
		slog.String("server", net.JoinHostPort(a.Host, strconv.Itoa(a.Port))),
		slog.Duration("idle_time", a.IdleTime),
		slog.Duration("threshold", a.Threshold),
		slog.Duration("waited", a.Waited),
		slog.String("evidence", a.Evidence),
		slog.Int("suppressed", a.Suppressed),
		slog.String("advice", a.Advice),
	)
	if t.handler != nil {
		t.handler(ctx, a)
	}
}
