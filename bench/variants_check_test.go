package bench

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/net/http/httptrace/otelhttptrace"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/vocab"
)

// TestVariants checks that each variant records, for a GET on a reused
// connection, what its name promises, so
// that no figure is of a variant that silently does less: which
// instrumentation scopes make spans, how many, whether conntrace's
// connection events are on them, and which scopes record metrics.
func TestVariants(t *testing.T) {
	url := serverURL(t)
	const (
		ct  = conntrace.ScopeName
		oh  = otelhttp.ScopeName
		oht = otelhttptrace.ScopeName
	)
	tests := []struct {
		variant string
		spans   map[string]int // spans per scope
		events  string         // the prefix of every span event's name; "" for none
		meters  []string       // scopes with metric data, sorted
	}{
		{"bare", nil, "", nil},
		{"conntrace", map[string]int{ct: 1}, "conntrace.", []string{ct}},
		{"conntrace-unsampled", nil, "", []string{ct}},
		{"conntrace-unsampled-remote-parent", nil, "", []string{ct}},
		{"conntrace-metrics-only", nil, "", []string{ct}},
		{"otelhttp", map[string]int{oh: 1}, "", []string{oh}},
		{"otelhttp-unsampled", nil, "", []string{oh}},
		{"otelhttp-unsampled-remote-parent", nil, "", []string{oh}},
		// otelhttptrace's sub-spans: http.getconn, http.headers, http.send, http.receive.
		{"otelhttp+otelhttptrace", map[string]int{oh: 1, oht: 4}, "", []string{oh}},
		// The same moments as events on otelhttp's span.
		{"otelhttp+otelhttptrace-nosubspans", map[string]int{oh: 1}, "http.", []string{oh}},
		// One span, otelhttp's, annotated by conntrace.
		{"otelhttp-over-conntrace", map[string]int{oh: 1}, "conntrace.", []string{ct, oh}},
	}
	if len(tests) != len(variants) {
		t.Fatalf("%d variants checked, %d defined: check every variant", len(tests), len(variants))
	}
	for _, tt := range tests {
		t.Run(tt.variant, func(t *testing.T) {
			v, err := lookupVariant(tt.variant)
			if err != nil {
				t.Fatal(err)
			}
			rec := tracetest.NewSpanRecorder()
			p := newProviders(rec)
			defer func() {
				if err := p.shutdown(); err != nil {
					t.Error(err)
				}
			}()
			c, err := newClient(p, v, url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			// The first GET dials; the next, as in the benchmarks, reuses
			// the connection (or, rarely, see maxDials, the one after).
			if err := c.get(); err != nil {
				t.Fatal(err)
			}
			var first int
			for attempt := 1; ; attempt++ {
				first = len(rec.Ended())
				dials := c.dials.Load()
				if err := c.get(); err != nil {
					t.Fatal(err)
				}
				if c.dials.Load() == dials {
					break
				}
				if attempt == 3 {
					t.Fatalf("%d GETs in a row dialled a new connection: none was reused", attempt)
				}
			}

			spans := map[string]int{}
			var events []string
			for _, s := range rec.Ended()[first:] {
				spans[s.InstrumentationScope().Name]++
				for _, e := range s.Events() {
					events = append(events, e.Name)
				}
			}
			if len(spans) == 0 {
				spans = nil
			}
			if !maps.Equal(spans, tt.spans) {
				t.Errorf("spans per scope: got %v; want %v", spans, tt.spans)
			}
			if want := tt.events; (want == "") != (len(events) == 0) || slices.ContainsFunc(events, func(e string) bool {
				return !strings.HasPrefix(e, want)
			}) {
				t.Errorf("span events: got %q; want %s", events, describeEvents(want))
			}
			if tt.events == "conntrace." && !slices.Contains(events, vocab.EventGotConn) {
				t.Errorf("span events: got %q; want %s among them", events, vocab.EventGotConn)
			}

			var rm metricdata.ResourceMetrics
			if err := p.reader.Collect(context.Background(), &rm); err != nil {
				t.Fatal(err)
			}
			var meters []string
			for _, sm := range rm.ScopeMetrics {
				if len(sm.Metrics) > 0 {
					meters = append(meters, sm.Scope.Name)
				}
			}
			slices.Sort(meters)
			if !slices.Equal(meters, tt.meters) {
				t.Errorf("scopes with metrics: got %s; want %s", strings.Join(meters, ", "), strings.Join(tt.meters, ", "))
			}
		})
	}
}

func describeEvents(prefix string) string {
	if prefix == "" {
		return "none"
	}
	return "some, each named " + prefix + "*"
}
