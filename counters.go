package conntrace

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/conntrace/conntrace/vocab"
)

// Three of conntrace's metrics change on nearly every request:
// http.client.active_requests, conntrace.connection.reuses and
// conntrace.connection.put_idle. A synchronous measurement costs the OTel
// SDK some two thousand instructions (it normalises the attribute set
// every time), more than the rest of conntrace's work on a request; an
// atomic add costs a few. So these three are observable instruments: each
// host has atomic counts, and the SDK reads them, through one callback per
// Transport, when it collects. Observations of one attribute set from
// several Transports add up, as synchronous counts would.

// maxCountedHosts bounds the hosts with counts of their own, as the SDK's
// default cardinality limit bounds series: 2000, one of them the overflow
// series. Later hosts share one set of counts whose only attribute is
// otel.metric.overflow=true, the SDK's overflow series.
const maxCountedHosts = 1999

// putIdleReasons are the conntrace.reason values of a rejected
// PutIdleConn; hostCounts.putIdle counts them after vocab.OutcomePooled.
var putIdleReasons = [...]string{vocab.ReasonTooManyIdleForHost, vocab.ReasonTooManyIdle, vocab.ReasonBroken, vocab.ReasonClosing, vocab.ReasonOther}

// hostCounts are one host's counts.
type hostCounts struct {
	active  atomic.Int64
	reuses  [2]atomic.Int64                       // by was_idle
	putIdle [1 + len(putIdleReasons)]atomic.Int64 // pooled, then rejected by reason

	// kvs are the host's attributes. The callback builds the attribute sets
	// from them at each collection rather than keeping them: up to 1999
	// hosts times eight sets would hold megabytes for a few microseconds
	// saved once a minute.
	kvs []attribute.KeyValue
}

// reasonIndex is the index in hostCounts.putIdle of a rejection's reason.
func reasonIndex(reason string) int {
	for i, r := range putIdleReasons {
		if r == reason {
			return 1 + i
		}
	}
	return len(putIdleReasons) // vocab.ReasonOther
}

// counts holds a Transport's hostCounts, and reports them.
type counts struct {
	active  metric.Int64ObservableUpDownCounter
	reuses  metric.Int64ObservableCounter
	putIdle metric.Int64ObservableCounter

	mu       sync.Mutex
	hosts    map[hostKeyAttrs]*hostCounts
	overflow *hostCounts
}

type hostKeyAttrs struct {
	host string
	port int
}

// newCounts creates the observable instruments and registers the callback
// that reports c. The registration is returned so that the Transport can
// unregister it when it is garbage collected.
func newCounts(m metric.Meter) (*counts, metric.Registration) {
	c := &counts{hosts: make(map[hostKeyAttrs]*hostCounts)}
	var errs [4]error
	var active httpconv.ClientActiveRequestsObservable
	active, errs[0] = httpconv.NewClientActiveRequestsObservable(m)
	c.active = active.Int64ObservableUpDownCounter
	c.reuses, errs[1] = m.Int64ObservableCounter(vocab.MetricReuses,
		metric.WithUnit("{connection}"),
		metric.WithDescription("Connections handed out from the idle pool (or shared, for HTTP/2) instead of dialled."))
	c.putIdle, errs[2] = m.Int64ObservableCounter(vocab.MetricPutIdle,
		metric.WithUnit("{connection}"),
		metric.WithDescription("Connections returned to the idle pool (pooled) or refused by it (rejected, with a reason)."))
	var reg metric.Registration
	if c.active != nil && c.reuses != nil && c.putIdle != nil {
		reg, errs[3] = m.RegisterCallback(c.observe, c.active, c.reuses, c.putIdle)
	}
	if err := errors.Join(errs[:]...); err != nil {
		otel.Handle(err)
	}
	return c, reg
}

// get returns the counts of host and port. It takes c.mu: hostCache calls
// it only when it builds a host's attributes.
func (c *counts) get(host string, port int) *hostCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := hostKeyAttrs{host, port}
	if h, ok := c.hosts[k]; ok {
		return h
	}
	if len(c.hosts) >= maxCountedHosts {
		if c.overflow == nil {
			c.overflow = &hostCounts{kvs: []attribute.KeyValue{attribute.Bool("otel.metric.overflow", true)}}
		}
		return c.overflow
	}
	h := &hostCounts{kvs: []attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(port)}}
	c.hosts[k] = h
	return h
}

// observe reports every host's counts: active requests always (it goes
// back to 0, and must be seen to), the others once they are not zero.
func (c *counts) observe(_ context.Context, o metric.Observer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range c.hosts {
		h.observe(o, c)
	}
	if c.overflow != nil {
		c.overflow.observe(o, c)
	}
	return nil
}

func (h *hostCounts) observe(o metric.Observer, c *counts) {
	o.ObserveInt64(c.active, h.active.Load(), observeWith(h.kvs)...)
	for i := range h.reuses {
		if n := h.reuses[i].Load(); n != 0 {
			o.ObserveInt64(c.reuses, n, observeWith(h.kvs, vocab.AttrWasIdle.Bool(i == 1))...)
		}
	}
	for i := range h.putIdle {
		n := h.putIdle[i].Load()
		switch {
		case n == 0:
		case i == 0:
			o.ObserveInt64(c.putIdle, n, observeWith(h.kvs, vocab.AttrOutcome.String(vocab.OutcomePooled))...)
		default:
			o.ObserveInt64(c.putIdle, n, observeWith(h.kvs, vocab.AttrOutcome.String(vocab.OutcomeRejected), vocab.AttrReason.String(putIdleReasons[i-1]))...)
		}
	}
}

func observeWith(kvs []attribute.KeyValue, extra ...attribute.KeyValue) []metric.ObserveOption {
	all := append(append(make([]attribute.KeyValue, 0, len(kvs)+len(extra)), kvs...), extra...)
	return []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(all...))}
}
