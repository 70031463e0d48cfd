package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/contrib/instrumentation/net/http/httptrace/otelhttptrace"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace"
)

// providers are what every instrumented variant reports to: the SDK, so
// that the cost of building spans and recording metrics is counted, but
// nothing that costs more after that. Spans are sampled, recorded and
// ended, then dropped (no span processor); metrics are aggregated by a
// ManualReader that is never collected. No OTel global is set: every
// variant gets its providers and propagator as options.
type providers struct {
	tp        *sdktrace.TracerProvider // samples every span
	unsampled *sdktrace.TracerProvider // samples none
	mp        *sdkmetric.MeterProvider
	reader    *sdkmetric.ManualReader
	prop      propagation.TextMapPropagator
}

// newProviders returns the providers; a test may add span processors to
// see the spans (the benchmarks add none).
func newProviders(processors ...sdktrace.SpanProcessor) *providers {
	var opts []sdktrace.TracerProviderOption
	for _, sp := range processors {
		opts = append(opts, sdktrace.WithSpanProcessor(sp))
	}
	reader := sdkmetric.NewManualReader()
	return &providers{
		tp:        sdktrace.NewTracerProvider(opts...),
		unsampled: sdktrace.NewTracerProvider(append(opts, sdktrace.WithSampler(sdktrace.NeverSample()))...),
		mp:        sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
		reader:    reader,
		// W3C trace context, as in production: the span variants also pay
		// for writing the traceparent header.
		prop: propagation.TraceContext{},
	}
}

func (p *providers) shutdown() error {
	ctx := context.Background()
	return errors.Join(p.tp.Shutdown(ctx), p.unsampled.Shutdown(ctx), p.mp.Shutdown(ctx))
}

// variant is one way of instrumenting the same base transport.
type variant struct {
	name string
	wrap func(p *providers, base http.RoundTripper) http.RoundTripper
	// parent, if set, is the context every request is sent with: what the
	// service's own handler left in it.
	parent func() context.Context
}

// unsampledParent is the context of a request a service sends while
// serving a request whose trace was not sampled upstream: the remote
// parent is valid and its sampled flag is off. At 1% sampling, 99% of a
// service's outgoing requests look like this.
func unsampledParent() context.Context {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:  trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		Remote:  true,
	})
	return trace.ContextWithRemoteSpanContext(context.Background(), sc)
}

// variants lists every configuration measured, bare first: the others are
// compared with it.
var variants = []variant{
	{"bare", func(_ *providers, base http.RoundTripper) http.RoundTripper { return base }, nil},
	// Full mode: conntrace's own sampled client span with every connection
	// event, the metrics, and the detectors armed (they always are).
	{"conntrace", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newConntrace(p, base, conntrace.WithTracerProvider(p.tp))
	}, nil},
	{"conntrace-unsampled", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newConntrace(p, base, conntrace.WithTracerProvider(p.unsampled))
	}, nil},
	// The SDK's default sampler (parent-based) under a parent that was not
	// sampled, conntrace told so (WithParentBasedSampling): no span; the
	// parent's trace context goes on in the headers.
	{"conntrace-unsampled-remote-parent", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newConntrace(p, base, conntrace.WithTracerProvider(p.tp), conntrace.WithParentBasedSampling())
	}, unsampledParent},
	{"conntrace-metrics-only", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newConntrace(p, base, conntrace.WithoutSpans())
	}, nil},
	// otelhttp alone: one client span and the request metrics, no
	// connection story.
	{"otelhttp", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newOtelhttp(p, base)
	}, nil},
	{"otelhttp-unsampled", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newOtelhttp(p, base, otelhttp.WithTracerProvider(p.unsampled))
	}, nil},
	{"otelhttp-unsampled-remote-parent", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newOtelhttp(p, base)
	}, unsampledParent},
	// The nearest peer: otelhttp with otelhttptrace's ClientTrace, which
	// makes sub-spans for the connection moments.
	{"otelhttp+otelhttptrace", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newOtelhttp(p, base, otelhttp.WithClientTrace(func(ctx context.Context) *httptrace.ClientTrace {
			return otelhttptrace.NewClientTrace(ctx, otelhttptrace.WithTracerProvider(p.tp))
		}))
	}, nil},
	{"otelhttp+otelhttptrace-nosubspans", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newOtelhttp(p, base, otelhttp.WithClientTrace(func(ctx context.Context) *httptrace.ClientTrace {
			return otelhttptrace.NewClientTrace(ctx, otelhttptrace.WithTracerProvider(p.tp), otelhttptrace.WithoutSubSpans())
		}))
	}, nil},
	// conntrace stacked under otelhttp: it annotates otelhttp's span
	// instead of starting its own.
	{"otelhttp-over-conntrace", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newOtelhttp(p, newConntrace(p, base, conntrace.WithTracerProvider(p.tp)))
	}, nil},
}

func newConntrace(p *providers, base http.RoundTripper, opts ...conntrace.Option) http.RoundTripper {
	return conntrace.NewTransport(base, append([]conntrace.Option{
		conntrace.WithMeterProvider(p.mp),
		conntrace.WithPropagators(p.prop),
		conntrace.WithLogger(slog.New(slog.DiscardHandler)),
	}, opts...)...)
}

func newOtelhttp(p *providers, base http.RoundTripper, opts ...otelhttp.Option) http.RoundTripper {
	return otelhttp.NewTransport(base, append([]otelhttp.Option{
		otelhttp.WithTracerProvider(p.tp),
		otelhttp.WithMeterProvider(p.mp),
		otelhttp.WithPropagators(p.prop),
	}, opts...)...)
}

// lookupVariant returns the variant called name.
func lookupVariant(name string) (variant, error) {
	var names []string
	for _, v := range append(variants[:len(variants):len(variants)], floorVariants...) {
		if v.name == name {
			return v, nil
		}
		names = append(names, v.name)
	}
	return variant{}, fmt.Errorf("no variant %q; the variants are: %s", name, strings.Join(names, " "))
}

// client sends GETs through one variant, over its own base transport.
type client struct {
	base  *http.Transport
	rt    http.RoundTripper
	req   *http.Request
	dials atomic.Int64 // connections the base transport opened
}

// newClient builds v over a clone of http.DefaultTransport, the transport a
// service is most likely to have, counting its dials.
func newClient(p *providers, v variant, url string) (*client, error) {
	ctx := context.Background()
	if v.parent != nil {
		ctx = v.parent()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	c := &client{req: req}
	c.base = http.DefaultTransport.(*http.Transport).Clone()
	c.base.MaxIdleConnsPerHost = 64 // room for every goroutine of BenchmarkParallel
	dialer := &net.Dialer{}
	c.base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c.dials.Add(1)
		return dialer.DialContext(ctx, network, addr)
	}
	c.rt = v.wrap(p, c.base)
	return c, nil
}

// get sends one GET, drains the body and closes it.
func (c *client) get() error { return c.getReq(c.req) }

func (c *client) getReq(req *http.Request) error {
	res, err := c.rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, res.Body)
	if cerr := res.Body.Close(); err == nil {
		err = cerr
	}
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", req.URL, res.Status)
	}
	return err
}

// checkReused reports an error if the client dialled more than max
// connections: every figure is meant to be for a reused connection.
func (c *client) checkReused(max int64) error {
	if n := c.dials.Load(); n > max {
		return fmt.Errorf("%d connections were dialled, want at most %d: the connection was not reused", n, max)
	}
	return nil
}

// maxDials is how many dials n sequential GETs may take. One, but net/http
// drops a connection whose response came back before its writeLoop reported
// the request written, after 50 ms (maxWriteWaitBeforeConnReuse), which a
// machine stalled by other work can cause now and then. One more dial per
// thousand GETs costs them under 0.3%; a dial per GET is the failure this
// guards against.
func maxDials(n int) int64 { return 1 + int64(n/1000) }

func (c *client) close() { c.base.CloseIdleConnections() }
