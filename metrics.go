package conntrace

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/dnsconv"
	"go.opentelemetry.io/otel/semconv/v1.43.0/httpconv"

	"github.com/conntrace/conntrace/internal/detect"
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
	// Connection lifetimes (connections.go), connections not reused
	// (roundtripper.go: notReusedReason) and HTTP/2 errors (http2.go).
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
		metric.WithDescription("Requests on a reused connection that stale_reuse found or suspected stale, by outcome."))
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
//
// The counts are kept apart from the host's attributes (hostCache), and
// are never dropped with them: a host dropped for want of use and seen
// again finds its counts where they were, so a cumulative count never
// starts again from zero under the same attributes (which a reader would
// take for a reset), and a request in flight across the drop decrements
// the active count it incremented. Dropping counts would save nothing
// the SDK does not keep anyway: with cumulative temporality it keeps each
// series it was given, up to the same limit. A collection reads at most
// maxCountedHosts+1 sets of counts, however many hosts came and went.
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
// it only when it builds a host's attributes, the first time or again
// after a sweep dropped them.
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

// What a Transport has learned of each path's idle timeout
// (detect.PathTimeouts, fed by stale_reuse's verdicts), and the two
// settings a fleet compares it with, as gauges read at collection:
// conntrace.path.idle_timeout{conntrace.bound}, and
// conntrace.config.idle_conn_timeout and conntrace.config.nat_idle_timeout.

// newLearnedGauges registers the callback that reports paths, the base's
// IdleConnTimeout (if base is or wraps an *http.Transport) and natIdle. The
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
	tr := baseTransport(base)
	isTransport := tr != nil
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

// count adds one to c, in ctx (for its exemplar), with the host
// attributes and extra.
func (req *request) count(ctx context.Context, c metric.Int64Counter, extra ...attribute.KeyValue) {
	if len(extra) == 0 {
		c.Add(ctx, 1, req.host.add...)
		return
	}
	c.Add(ctx, 1, metric.WithAttributeSet(req.host.with(extra...)))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
