package bench

import (
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// floorVariants are yardsticks, not products: the least any RoundTripper
// must do to give conntrace's metrics-only telemetry with its safety
// properties, measured the way the variants are (bash bench/callgrind.sh
// floor-metrics-only). bench/FLOOR.md compares conntrace with it. They are
// not in callgrind.sh's default list.
var floorVariants = []variant{
	{"floor-metrics-only", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newFloor(p, base, nil, false)
	}, nil},
	{"floor-unsampled", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newFloor(p, base, p.unsampled.Tracer("floor"), false)
	}, nil},
	{"floor-unsampled-remote-parent", func(p *providers, base http.RoundTripper) http.RoundTripper {
		return newFloor(p, base, p.tp.Tracer("floor"), true)
	}, unsampledParent},
}

// floor records what conntrace's metrics-only mode records on a request
// over a reused connection, and no more: http.client.request.duration with
// its six attributes and conntrace.connection.idle_time with the server's
// two, from attribute sets built once per server and kept in a map; reuses
// and active requests as atomic counts (conntrace's are read at
// collection). It hooks GotConn and PutIdleConn, is itself the context
// that carries its ClientTrace (as conntrace's request is), and wraps the
// body with a pooled finalizer watch that ends an abandoned request. With
// a tracer, it also starts the client span (none under an unsampled
// parent, with parentBased, as WithParentBasedSampling) and writes the
// trace context into a copy of the headers. No detector, no timeline, no
// lock, no span attribute: what conntrace adds over it is its diagnosis.
type floor struct {
	tracer      trace.Tracer // nil: metrics only
	parentBased bool
	prop        propagation.TextMapPropagator

	base     http.RoundTripper
	duration metric.Float64Histogram
	idleTime metric.Float64Histogram

	mu    sync.RWMutex
	hosts map[string]*floorHost
}

type floorHost struct {
	idle     []metric.RecordOption
	duration []metric.RecordOption // of the one method, scheme, status and protocol the bench sends
	reuses   atomic.Int64
	active   atomic.Int64
}

func newFloor(p *providers, base http.RoundTripper, tracer trace.Tracer, parentBased bool) http.RoundTripper {
	m := p.mp.Meter("floor")
	d, err := m.Float64Histogram("http.client.request.duration", metric.WithUnit("s"))
	if err != nil {
		panic(err)
	}
	i, err := m.Float64Histogram("conntrace.connection.idle_time", metric.WithUnit("s"))
	if err != nil {
		panic(err)
	}
	return &floor{tracer: tracer, parentBased: parentBased, prop: p.prop, base: base, duration: d, idleTime: i, hosts: make(map[string]*floorHost)}
}

func (f *floor) host(r *http.Request) *floorHost {
	f.mu.RLock()
	h := f.hosts[r.URL.Host]
	f.mu.RUnlock()
	if h != nil {
		return h
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if h = f.hosts[r.URL.Host]; h != nil {
		return h
	}
	name, port := r.URL.Hostname(), 80
	if p, err := strconv.Atoi(r.URL.Port()); err == nil {
		port = p
	}
	server := []attribute.KeyValue{semconv.ServerAddress(name), semconv.ServerPort(port)}
	dur := append(server, semconv.HTTPRequestMethodGet, semconv.URLScheme("http"),
		semconv.HTTPResponseStatusCode(http.StatusOK), semconv.NetworkProtocolVersion("1.1"))
	h = &floorHost{
		idle:     []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(server...))},
		duration: []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(dur...))},
	}
	f.hosts[r.URL.Host] = h
	return h
}

// floorRequest is the request's state and the context its hooks are found
// in.
type floorRequest struct {
	context.Context
	f     *floor
	host  *floorHost
	start time.Time
	span  trace.Span // nil in metrics only, and under an unsampled parent with parentBased
	hooks httptrace.ClientTrace
	ended atomic.Bool
}

func (req *floorRequest) Value(key any) any {
	if key == floorTraceKey {
		return &req.hooks
	}
	return req.Context.Value(key)
}

func (req *floorRequest) gotConn(info httptrace.GotConnInfo) {
	if info.Reused {
		req.host.reuses.Add(1)
	}
	if info.WasIdle {
		req.f.idleTime.Record(req.Context, info.IdleTime.Seconds(), req.host.idle...)
	}
}

func (req *floorRequest) putIdleConn(error) {}

func (req *floorRequest) end() {
	if !req.ended.Swap(true) {
		req.host.active.Add(-1)
		if req.span != nil {
			req.span.End()
		}
	}
}

func (f *floor) RoundTrip(r *http.Request) (*http.Response, error) {
	req := &floorRequest{Context: r.Context(), f: f, host: f.host(r), start: time.Now()}
	if f.tracer != nil {
		if sc := trace.SpanContextFromContext(req.Context); !f.parentBased || !sc.IsValid() || sc.IsSampled() {
			req.Context, req.span = f.tracer.Start(req.Context, r.Method, trace.WithSpanKind(trace.SpanKindClient))
		}
	}
	req.hooks.GotConn, req.hooks.PutIdleConn = req.gotConn, req.putIdleConn
	req.host.active.Add(1)
	out := r.WithContext(req)
	if f.tracer != nil {
		out.Header = make(http.Header, len(r.Header)+1)
		for k, v := range r.Header {
			out.Header[k] = v
		}
		f.prop.Inject(req.Context, propagation.HeaderCarrier(out.Header))
	}
	res, err := f.base.RoundTrip(out)
	f.duration.Record(req.Context, time.Since(req.start).Seconds(), req.host.duration...)
	if err != nil || res.Body == nil || res.Body == http.NoBody {
		req.end()
		return res, err
	}
	w := floorWatches.Get().(*floorWatch)
	w.req.Store(req)
	b := &floorBody{rc: res.Body}
	b.w.Store(w)
	res.Body = b
	return res, nil
}

// floorWatch is pooled with its finalizer set, as conntrace's bodyWatch.
type floorWatch struct{ req atomic.Pointer[floorRequest] }

var floorWatches = sync.Pool{New: func() any {
	w := new(floorWatch)
	runtime.SetFinalizer(w, (*floorWatch).abandon)
	return w
}}

func (b *floorBody) end() {
	if w := b.w.Swap(nil); w != nil {
		if req := w.req.Swap(nil); req != nil {
			req.end()
		}
		floorWatches.Put(w)
	}
}

func (w *floorWatch) abandon() {
	if req := w.req.Swap(nil); req != nil {
		go req.end()
	}
}

type floorBody struct {
	rc io.ReadCloser
	w  atomic.Pointer[floorWatch]
}

func (b *floorBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		b.end()
	}
	return n, err
}

func (b *floorBody) Close() error {
	b.end()
	return b.rc.Close()
}

// floorTraceKey is the key httptrace keeps a ClientTrace under.
var floorTraceKey = func() any {
	var rec floorKeyRecorder
	httptrace.ContextClientTrace(&rec)
	return rec.key
}()

type floorKeyRecorder struct {
	context.Context
	key any
}

func (k *floorKeyRecorder) Value(key any) any {
	k.key = key
	return nil
}

// TestFloorVariants checks that each yardstick does what bench/FLOOR.md
// counts it for, so that the floor is not lower for doing less: a GET
// through it offers its ClientTrace to the base transport, records both
// histograms once, and, with a tracer, sends the trace context.
func TestFloorVariants(t *testing.T) {
	tests := []struct {
		variant     string
		traceparent bool
	}{
		{"floor-metrics-only", false},
		{"floor-unsampled", true},
		{"floor-unsampled-remote-parent", true},
	}
	if len(tests) != len(floorVariants) {
		t.Fatalf("%d floor variants checked, %d defined: check every one", len(tests), len(floorVariants))
	}
	for _, tt := range tests {
		t.Run(tt.variant, func(t *testing.T) {
			v, err := lookupVariant(tt.variant)
			if err != nil {
				t.Fatal(err)
			}
			p := newProviders()
			defer p.shutdown()
			var sent http.Header
			rt := v.wrap(p, roundTripFunc(func(r *http.Request) (*http.Response, error) {
				sent = r.Header
				if ct := httptrace.ContextClientTrace(r.Context()); ct != nil && ct.GotConn != nil {
					ct.GotConn(httptrace.GotConnInfo{Reused: true, WasIdle: true, IdleTime: time.Second})
				} else {
					t.Error("the request's context offers no ClientTrace with GotConn")
				}
				return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader("ok"))}, nil
			}))
			ctx := context.Background()
			if v.parent != nil {
				ctx = v.parent()
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://example.test:8080/", nil)
			res, err := rt.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if got := sent.Get("traceparent") != ""; got != tt.traceparent {
				t.Errorf("traceparent sent: %v; want %v", got, tt.traceparent)
			}
			var rm metricdata.ResourceMetrics
			if err := p.reader.Collect(context.Background(), &rm); err != nil {
				t.Fatal(err)
			}
			counts := map[string]uint64{}
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					if h, ok := m.Data.(metricdata.Histogram[float64]); ok {
						for _, dp := range h.DataPoints {
							counts[m.Name] += dp.Count
						}
					}
				}
			}
			want := map[string]uint64{"http.client.request.duration": 1, "conntrace.connection.idle_time": 1}
			if !maps.Equal(counts, want) {
				t.Errorf("histogram counts: %v; want %v", counts, want)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
