package conntrace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
)

// Option configures a [Transport]. Options are applied in order by
// [NewTransport]; a later option overrides an earlier one.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// AlertHandler receives every alert of level WARN or above that passes the
// rate limit. ctx is the request's context; for an alert recorded in an
// alert span ([vocab.AttrAlertSpan]), the request's context with that span in
// it, so that what the handler logs or records points at the trace that
// holds the alert. It runs on the goroutine that
// observed the alert (a timer for a hang, else the request's or its body's,
// or one started for a body dropped unclosed), so it should return quickly;
// a panic in it is recovered and reported to otel.Handle, never to the
// request.
type AlertHandler func(ctx context.Context, a detectors.Alert)

type config struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagators    propagation.TextMapPropagator
	spans          bool
	natIdleTimeout time.Duration
	hangTimeout    time.Duration
	alertInterval  time.Duration
	logger         *slog.Logger
	alertHandler   AlertHandler
	audit          bool     // log detectors.Audit of the base at start (detectors.go)
	followParent   bool     // start no span for a parent that was not sampled
	closeDead      bool     // WithCloseDeadConnections (cure.go)
	natKeepAlive   bool     // WithNATKeepAlive (cure.go)
	redactKeys     []string // WithRedactedQueryKeys, beyond the default ones (redact.go)
	// WithFilter, WithSpanNameFormatter, WithMetricAttributesFn (user.go).
	filters            []Filter
	spanNameFormatter  func(string, *http.Request) string
	metricAttributesFn func(*http.Request) []attribute.KeyValue
	errs               []error
}

func newConfig(opts []Option) *config {
	c := &config{
		spans:          true,
		natIdleTimeout: detect.DefaultNATIdleTimeout,
		hangTimeout:    detect.DefaultHangTimeout,
		alertInterval:  detect.DefaultAlertInterval,
		audit:          true,
	}
	for _, o := range opts {
		if o != nil {
			o.apply(c)
		}
	}
	c.checkCure()
	// The globals are read here, not in the options, so that nil means
	// "default" wherever it is passed.
	if c.tracerProvider == nil {
		c.tracerProvider = otel.GetTracerProvider()
	}
	if c.meterProvider == nil {
		c.meterProvider = otel.GetMeterProvider()
	}
	if c.propagators == nil {
		c.propagators = otel.GetTextMapPropagator()
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	return c
}

// err returns every misconfiguration found, joined, or nil.
func (c *config) err() error { return errors.Join(c.errs...) }

func (c *config) positive(option string, d time.Duration) bool {
	if d > 0 {
		return true
	}
	c.errs = append(c.errs, fmt.Errorf("conntrace: %s(%v): the duration must be positive", option, d))
	return false
}

// notTypedNil reports whether v, an interface value passed to option, is
// other than a nil pointer or func in a non-nil interface: such a value
// passes the nil check and panics on first use, far from the mistake.
// Other nil kinds can work (an empty composite propagator is a nil slice).
func (c *config) notTypedNil(option string, v any) bool {
	if rv := reflect.ValueOf(v); v == nil || rv.Kind() != reflect.Pointer && rv.Kind() != reflect.Func || !rv.IsNil() {
		return true
	}
	c.errs = append(c.errs, fmt.Errorf("conntrace: %s((%T)(nil)): a typed nil would panic on first use; pass nil itself for the global default", option, v))
	return false
}

// WithTracerProvider sets the TracerProvider that creates the client spans.
// The default, and what nil means, is the global provider (otel.GetTracerProvider).
// A typed nil, such as a nil *sdktrace.TracerProvider, is rejected:
// NewTransport panics.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(c *config) {
		if c.notTypedNil("WithTracerProvider", tp) {
			c.tracerProvider = tp
		}
	})
}

// WithMeterProvider sets the MeterProvider that creates the metric
// instruments. The default, and what nil means, is the global provider
// (otel.GetMeterProvider). A typed nil is rejected: NewTransport panics.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) {
		if c.notTypedNil("WithMeterProvider", mp) {
			c.meterProvider = mp
		}
	})
}

// WithPropagators sets the propagators that inject the client span's context
// into the request headers, and read a trace context the caller put in them
// (see [Transport.RoundTrip]). The default, and what nil means, is the
// global propagator (otel.GetTextMapPropagator). Nothing is injected when
// the Transport annotates a span it did not start, or runs WithoutSpans. A
// typed nil is rejected: NewTransport panics.
func WithPropagators(p propagation.TextMapPropagator) Option {
	return optionFunc(func(c *config) {
		if c.notTypedNil("WithPropagators", p) {
			c.propagators = p
		}
	})
}

// WithoutSpans turns tracing off: no span is started, annotated or
// propagated; metrics, detectors, logs and the alert handler keep working.
// By default the Transport starts a client span per request, or annotates
// the recording client span already in the request's context.
func WithoutSpans() Option {
	return optionFunc(func(c *config) { c.spans = false })
}

// WithParentBasedSampling tells the Transport that its TracerProvider's
// sampler follows the parent's decision, as sdktrace.ParentBased does (the
// SDK's default, and what OTEL_TRACES_SAMPLER=parentbased_* selects): a
// span whose parent was not sampled is not sampled either. The Transport
// then starts no span for a request whose parent, in its context or its
// headers, was not sampled, since nobody would record it; it writes the
// parent's trace context into the request's headers instead, so the trace
// goes on downstream. At 1% sampling that is 99% of a service's requests,
// and each saves the cost of starting a span that records nothing.
//
// By default the Transport asks the sampler for every request, which is
// right whatever the sampler: the API cannot tell a parent-based sampler
// from one that samples children of unsampled parents (AlwaysOn, or
// TraceIDRatioBased not wrapped in ParentBased). Do not use this option
// with such a sampler: requests it would have sampled would have no span.
func WithParentBasedSampling() Option {
	return optionFunc(func(c *config) { c.followParent = true })
}

// WithNATIdleTimeout sets the idle timeout of the NAT, firewall or load
// balancer between the client and its servers. Where the kernel cannot be
// read (not Linux), a connection reused after sitting idle at least this
// long is suspect, and hangs by the fallback rule (see [WithHangTimeout]);
// where it can, the hang verdict rests on the kernel's evidence instead.
// Everywhere, such a connection's round trip is reported failed, retried
// or ok, keepalive_gap and the audit check the pool and the socket against
// it, and the advice uses it until the path's own timeout is learned. The
// default is 350 s (AWS NAT Gateway); Azure NAT Gateway uses 4 min, GCP
// Cloud NAT 20 min. It must be positive: NewTransport panics otherwise.
func WithNATIdleTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if c.positive("WithNATIdleTimeout", d) {
			c.natIdleTimeout = d
		}
	})
}

// WithHangTimeout sets how long a request on a suspect connection (see
// [WithNATIdleTimeout]) may wait for its response, from the moment it was
// handed the connection, before the fallback rule reports it as hanging,
// while it still hangs. Where the kernel can be read it decides no hang:
// it is how long a request the peer acknowledged may wait before it is
// reported beyond_first_hop. The default is 10 s. It must be positive:
// NewTransport panics otherwise.
func WithHangTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if c.positive("WithHangTimeout", d) {
			c.hangTimeout = d
		}
	})
}

// WithAlertInterval sets the rate limit of logged and handled alerts, and
// of alert spans ([vocab.AttrAlertSpan]): at most one per detector and host per
// interval; the next logged one says how many were held back. Span events
// and metrics are never rate-limited. The default is 1 min. It must be
// positive: NewTransport panics otherwise.
func WithAlertInterval(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if c.positive("WithAlertInterval", d) {
			c.alertInterval = d
		}
	})
}

// WithLogger sets the logger that alerts of level WARN and above, and the
// audit at start (see [WithoutAudit]), are written to. The default, and
// what nil means, is slog.Default(). To log nothing, pass
// slog.New(slog.DiscardHandler).
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) { c.logger = l })
}

// WithAlertHandler sets a function that receives every alert of level WARN
// and above that passes the rate limit. By default there is none; nil
// removes one set earlier.
func WithAlertHandler(h AlertHandler) Option {
	return optionFunc(func(c *config) { c.alertHandler = h })
}

// WithoutAudit stops NewTransport from auditing its base. By default, when
// the base is an *http.Transport (a nil base means http.DefaultTransport),
// or wraps one and says so (see [NewTransport]),
// NewTransport logs the findings of [detectors.Audit], each at its
// severity, to the logger of [WithLogger]: the settings that make the
// failures conntrace detects likely, and which setting to change. The same
// findings are logged once per process, however many Transports are made.
func WithoutAudit() Option {
	return optionFunc(func(c *config) { c.audit = false })
}

// WithRedactedQueryKeys adds keys to the query parameters whose values
// are REDACTED in url.full, and in the text of an error that carries the
// URL (the span's status, conntrace.error). The default list is semconv's
// (AWSAccessKeyId, Signature, sig, X-Goog-Signature, X-Amz-Signature,
// X-Amz-Credential, X-Amz-Security-Token) with X-Goog-Credential,
// access_token, token, api_key and apikey. The option adds to it, and
// several calls add up: unlike semconv's sensitive_query_parameters
// setting, it cannot drop a default key, and with it the protection.
//
// A key is compared with a parameter's key once decoded (so Signatur%65
// is Signature) and case-sensitively, as semconv asks: add each spelling
// a server reads, such as "apiKey" or "key" (Google's API key, left out of
// the defaults as too common a word). An empty key is rejected:
// NewTransport panics.
func WithRedactedQueryKeys(keys ...string) Option {
	return optionFunc(func(c *config) {
		for _, k := range keys {
			if k == "" {
				c.errs = append(c.errs, fmt.Errorf("conntrace: WithRedactedQueryKeys(%q): an empty key names no parameter", keys))
				return
			}
		}
		c.redactKeys = append(c.redactKeys, keys...)
	})
}

// redactor is the redactor of the default keys and those of
// WithRedactedQueryKeys.
func (c *config) redactor() *redactor {
	if len(c.redactKeys) == 0 {
		return defaultRedactor
	}
	keys := append(slices.Clip(defaultRedactedQueryKeys), c.redactKeys...)
	return newRedactor(keys)
}

// Filter reports whether RoundTrip should trace a request: false filters
// it out. It has the shape of otelhttp's Filter; [WithFilter] takes
// either, and any func(*http.Request) bool.
type Filter func(*http.Request) bool

// WithFilter adds a filter: a request that any filter rejects (returns
// false for) is filtered out. It is otelhttp's WithFilter: several filters
// are ANDed, and none means every request is traced. A nil filter is
// rejected: NewTransport panics.
//
// A filtered request, a health check or a metrics scrape, gets what
// otelhttp gives it: no span (neither conntrace's own nor events on a
// client span in its context), no trace context written into its headers,
// no http.client.request.duration and no count in
// http.client.active_requests. But it travels on the same pooled
// connections as the requests that are traced, so what it learns of them
// is still counted and alerted, as for any request: the connection
// metrics (conntrace.connection.reuses, .idle_time, .dials, .put_idle,
// .not_reused, http.client.open_connections, http.client.connection.duration),
// the detectors and their alerts (conntrace.stale_reuses, conntrace.alerts,
// the log record, the AlertHandler, an alert span when tracing is on),
// what the path's idle timeout is learned to be, and the cure
// ([WithCloseDeadConnections]). A health check that finds a connection a
// NAT forgot raises the same alert as a traced request would. A filter
// runs on every request, on the caller's goroutine, before anything
// else; a panic in it is reported to otel.Handle and the request is
// traced.
func WithFilter(f func(*http.Request) bool) Option {
	return optionFunc(func(c *config) {
		if f == nil {
			c.errs = append(c.errs, errors.New("conntrace: WithFilter(nil): a filter must be a function"))
			return
		}
		c.filters = append(c.filters, f)
	})
}

// WithSpanNameFormatter sets the function that names the client span
// conntrace starts for a request, in place of semconv's method ("GET",
// or "HTTP" for an unknown method). It has otelhttp's signature; operation
// is "", as otelhttp's Transport passes it. An empty name, or a panic in
// the function (reported to otel.Handle), falls back to the default. It
// names only conntrace's own span: stacked under otelhttp, otelhttp names
// the client span. nil restores the default. Span names are not metric
// attributes: they add no series.
func WithSpanNameFormatter(f func(operation string, r *http.Request) string) Option {
	return optionFunc(func(c *config) { c.spanNameFormatter = f })
}

// WithMetricAttributesFn sets a function whose attributes are added to the
// request's http.client.request.duration, as otelhttp's
// WithMetricAttributesFn does (see also [Labeler], for attributes known
// only to the caller of the request). It is called once per request that
// is not filtered, after the round trip returns; a panic in it is reported
// to otel.Handle and its attributes dropped. nil removes one set earlier.
//
// The attributes go on http.client.request.duration only, never on the
// connection metrics, and their number is bounded: a Transport keeps at
// most 256 distinct sets of the attributes from this function and the
// Labeler together; a request with a set beyond those is recorded with
// the one attribute otel.metric.overflow=true in their place (the SDK's
// name for its own overflow series), so a user attribute with unbounded
// values (a request id, a URL path) can multiply the series of
// http.client.request.duration by at most 257. The SDK's cardinality
// limit (2000 series per instrument by default) applies on top.
func WithMetricAttributesFn(f func(r *http.Request) []attribute.KeyValue) Option {
	return optionFunc(func(c *config) { c.metricAttributesFn = f })
}
