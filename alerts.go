package conntrace

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
	"github.com/conntrace/conntrace/vocab"
)

// raise sends each alert where it belongs, beyond the span event that
// observe already added: for stale reuse a conntrace.stale_reuses count;
// for alerts of level WARN and above a conntrace.alerts count and, within
// the rate limit, a log record and the AlertHandler; for a hang the kernel
// decided, WithCloseDeadConnections, the close of the dead connection. It
// must be called without req.mu held: a handler may take its time.
func (req *request) raise(alerts []detectors.Alert) {
	if len(alerts) == 0 {
		return // a healthy request: nothing to do
	}
	// On a request whose trace is not sampled, an alert span (alerts.go):
	// the counts' exemplars, the log record and the close point at the
	// trace holding the alert.
	ctx, alertSpan := req.alertContext(alerts)
	for _, a := range alerts {
		// beyond_first_hop is stale_reuse saying a connection was NOT stale.
		if a.Detector == detectors.StaleReuseName && a.Outcome != detectors.OutcomeBeyondFirstHop {
			req.count(ctx, req.t.inst.staleReuses, vocab.AttrOutcome.String(a.Outcome))
		}
		if a.Level < slog.LevelWarn {
			continue
		}
		req.count(ctx, req.t.inst.alerts, vocab.AttrDetector.String(a.Detector), vocab.AttrOutcome.String(a.Outcome))
		req.t.deliver(ctx, a)
	}
	closedAt := req.closeDead(ctx, alertSpan, alerts) // WithCloseDeadConnections (cure.go)
	if alertSpan != nil {
		end := closedAt
		for _, a := range alerts {
			end = later(end, a.Time)
		}
		alertSpan.End(trace.WithTimestamp(end))
	}
}

// deliver logs a and hands it to the AlertHandler, unless the rate limit for
// its detector and host holds it back.
func (t *Transport) deliver(ctx context.Context, a detectors.Alert) {
	ok, suppressed := t.limiter.Allow(a.Time, alertKey(a))
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
	// The record's message is the summary, the first line a trace shows
	// of the same alert; the whole message follows.
	t.logger.LogAttrs(ctx, a.Level, "conntrace: "+a.Summary,
		slog.String("detector", a.Detector),
		slog.String("outcome", a.Outcome),
		slog.String("message", a.Message),
		slog.String("server", advice.HostPort(a.Host, a.Port)),
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

// Alerts that survive head sampling.
//
// At 1 % sampling, 99 requests in 100 have a span that is not sampled: an
// alert event on it is never exported, and the Prometheus alert that the
// same hang fires would point at no trace. So an alert of level WARN or
// above raised on a request whose span is not sampled is recorded in a span
// of its own, an alert span: started with [vocab.AttrAlertSpan] so that a sampler
// can keep it (exporters.KeepAlertSpans does), as a new root linked to the
// request's span, and holding the request's timeline so far as events. The
// alert's counts ([vocab.MetricStaleReuses], [vocab.MetricAlerts]) are then made in the
// alert span's context, so their exemplars point at its trace; for a sampled
// request they are made in the request span's context, and point at the
// request's trace.
//
// A healthy request raises no alert, and pays nothing for all this.

// alertContext returns the context in which raise counts and delivers
// alerts: the request's, or the request's with an alert span in it (see
// vocab.AttrAlertSpan), if one of alerts is of level WARN or above, the
// request's trace is not sampled (its span, or, WithParentBasedSampling,
// its parent), and the rate limit allows it. The alert span, if any, is
// returned too, for raise to end. It must be called without req.mu held.
func (req *request) alertContext(alerts []detectors.Alert) (context.Context, trace.Span) {
	if req.t.tracer == nil || trace.SpanContextFromContext(req.spanCtx).IsSampled() || !req.t.allowAlertSpan(alerts) {
		return req.spanCtx, nil
	}
	// The timeline and the first alert span are req's, behind req.mu; the
	// span ends outside it, since ending may export it.
	req.mu.Lock()
	span := req.startAlertSpan(alerts)
	req.mu.Unlock()
	if span == nil {
		return req.spanCtx, nil // the provider does not record it: no sampler keeps it
	}
	return trace.ContextWithSpan(req.spanCtx, span), span
}

// allowAlertSpan reports whether alerts may have an alert span: one of
// them is of level WARN or above and passes t's rate limit for its
// detector and host. Each such alert is shown to the limiter.
func (t *Transport) allowAlertSpan(alerts []detectors.Alert) bool {
	allow := false
	for _, a := range alerts {
		if a.Level < slog.LevelWarn {
			continue
		}
		if ok, _ := t.alertSpans.Allow(a.Time, alertKey(a)); ok {
			allow = true
		}
	}
	return allow
}

// alertKey is what the rate limits count alerts by: their detector and
// server.
func alertKey(a detectors.Alert) string {
	return a.Detector + " " + advice.HostPort(a.Host, a.Port)
}

// startAlertSpan starts an alert span holding req's timeline so far, named
// and described after the verdict of alerts (one of them is of level WARN
// or above: allowAlertSpan), and returns it, or nil if it does not record.
// req.mu must be held.
func (req *request) startAlertSpan(alerts []detectors.Alert) trace.Span {
	a := alerts[verdict(alerts)]
	attrs := append(verdictAttrs(a), vocab.AttrAlertSpan.Bool(true),
		semconv.HTTPRequestMethodKey.String(req.tl.Method), req.host.kvs[0], req.host.kvs[1])
	opts := []trace.SpanStartOption{trace.WithTimestamp(req.tl.Start), trace.WithAttributes(attrs...)}
	if sc := trace.SpanContextFromContext(req.spanCtx); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	parent := req.spanCtx
	if req.alertRoot != nil {
		parent = trace.ContextWithSpan(req.spanCtx, req.alertRoot)
	} else {
		opts = append(opts, trace.WithNewRoot())
	}
	// What happened, and to which operation: low cardinality, as span
	// names must be (no host), and what a trace list shows first.
	_, span := req.t.tracer.Start(parent, a.Detector+"/"+a.Outcome+" "+spanName(req.tl.Method), opts...)
	if !span.IsRecording() {
		return nil
	}
	if a.Level >= slog.LevelError {
		span.SetStatus(codes.Error, a.Summary)
	}
	if req.alertRoot == nil {
		req.alertRoot = span
	}
	for _, e := range req.timelineEvents() {
		span.AddEvent(e.name, trace.WithTimestamp(e.at), trace.WithAttributes(e.attrs...))
	}
	return span
}

type timelineEvent struct {
	at    time.Time
	name  string
	attrs []attribute.KeyValue
}

// timelineEvents are the span events of req's timeline so far, in the
// order they happened: each connection handed out, the write, and each
// alert. (The first response byte is hooked only for a recording span.)
// req.mu must be held.
func (req *request) timelineEvents() []timelineEvent {
	tl := &req.tl
	evs := make([]timelineEvent, 0, len(tl.Conns)+len(tl.Alerts)+1)
	for _, c := range tl.Conns {
		evs = append(evs, timelineEvent{c.At, vocab.EventGotConn, req.appendConnAttrs(nil, c)})
	}
	if !tl.WroteRequest.IsZero() {
		evs = append(evs, timelineEvent{tl.WroteRequest, vocab.EventWroteRequest, nil})
	}
	for _, a := range tl.Alerts {
		evs = append(evs, timelineEvent{a.Time, vocab.EventAlert, alertAttrs(a)})
	}
	slices.SortStableFunc(evs, func(a, b timelineEvent) int { return a.at.Compare(b.at) })
	return evs
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
