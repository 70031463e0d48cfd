// This file holds what a user adds to a request's telemetry, with
// otelhttp's names: the filters that keep a request out of the traces
// (WithFilter), the span's name (WithSpanNameFormatter), and attributes of
// the request duration (WithMetricAttributesFn, Labeler), bounded.

package conntrace

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
)

// Labeler holds attributes that the caller of a request adds to its
// http.client.request.duration: put one in the request's context with
// [ContextWithLabeler], and add to it until the round trip returns. It has
// the shape of otelhttp's Labeler, whose client side
// (otelhttp.ContextWithClientLabeler) it stands in for when conntrace runs
// alone; stacked under otelhttp, otelhttp records the duration, with its
// own Labeler's attributes. Its attributes are bounded as those of
// [WithMetricAttributesFn] are. A Labeler is safe for concurrent use.
type Labeler struct {
	mu         sync.Mutex
	attributes []attribute.KeyValue
}

// Add adds attributes to l.
func (l *Labeler) Add(ls ...attribute.KeyValue) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attributes = append(l.attributes, ls...)
}

// Get returns a copy of the attributes added to l.
func (l *Labeler) Get() []attribute.KeyValue {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]attribute.KeyValue(nil), l.attributes...)
}

type labelerKey struct{}

// labelers is set once a Labeler has been put in a context: until then, a
// request's context is not searched for one (a walk up its chain of
// contexts, on every request).
var labelers atomic.Bool

// ContextWithLabeler returns a copy of parent holding l: the requests sent
// with it have l's attributes on their http.client.request.duration.
func ContextWithLabeler(parent context.Context, l *Labeler) context.Context {
	labelers.Store(true)
	return context.WithValue(parent, labelerKey{}, l)
}

// LabelerFromContext returns the Labeler in ctx and true, or a new, empty
// Labeler and false if ctx holds none (attributes added to that one are
// recorded nowhere).
func LabelerFromContext(ctx context.Context) (*Labeler, bool) {
	if l, ok := ctx.Value(labelerKey{}).(*Labeler); ok && l != nil {
		return l, true
	}
	return &Labeler{}, false
}

// filtered reports whether a filter of t rejects r. A filter that panics
// lets r be traced.
func (t *Transport) filtered(r *http.Request) (out bool) {
	defer func() {
		if p := recover(); p != nil {
			otel.Handle(fmt.Errorf("conntrace: a WithFilter function panicked: %v", p))
			out = false
		}
	}()
	for _, f := range t.filters {
		if !f(r) {
			return true
		}
	}
	return false
}

// spanName is the name of r's span: the WithSpanNameFormatter function's,
// or def where it gives none, or panics.
func (t *Transport) spanName(r *http.Request, def string) (name string) {
	defer func() {
		if p := recover(); p != nil {
			otel.Handle(fmt.Errorf("conntrace: the WithSpanNameFormatter function panicked: %v", p))
			name = def
		}
	}()
	if name = t.spanNameFormatter("", r); name == "" {
		name = def
	}
	return name
}

// userMetricAttributes returns the attributes the user adds to r's
// request duration (WithMetricAttributesFn's, then the Labeler's in ctx),
// as a set bounded by t.userSets; ok is false if there are none.
func (t *Transport) userMetricAttributes(ctx context.Context, r *http.Request) (set attribute.Set, ok bool) {
	var attrs []attribute.KeyValue
	if t.metricAttributesFn != nil {
		attrs = t.callMetricAttributesFn(r)
	}
	if labelers.Load() {
		if l, found := ctx.Value(labelerKey{}).(*Labeler); found && l != nil {
			attrs = append(attrs, l.Get()...)
		}
	}
	if len(attrs) == 0 {
		return attribute.Set{}, false
	}
	return t.userSets.admit(attribute.NewSet(attrs...)), true
}

func (t *Transport) callMetricAttributesFn(r *http.Request) (attrs []attribute.KeyValue) {
	defer func() {
		if p := recover(); p != nil {
			otel.Handle(fmt.Errorf("conntrace: the WithMetricAttributesFn function panicked: %v", p))
			attrs = nil
		}
	}()
	return t.metricAttributesFn(r)
}

// maxUserAttributeSets bounds the distinct sets of user attributes a
// Transport records (WithMetricAttributesFn says why 256).
const maxUserAttributeSets = 256

// overflowSet replaces a set of user attributes beyond the bound: the
// SDK's own name for the series that holds what its limit turned away.
var overflowSet = attribute.NewSet(attribute.Bool("otel.metric.overflow", true))

// attributeSets admits up to maxUserAttributeSets distinct attribute sets,
// and turns every later new one into overflowSet. Its memory is bounded by
// the same number.
type attributeSets struct {
	mu   sync.Mutex
	seen map[attribute.Distinct]struct{}
}

func (s *attributeSets) admit(set attribute.Set) attribute.Set {
	d := set.Equivalent()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[d]; ok {
		return set
	}
	if len(s.seen) >= maxUserAttributeSets {
		return overflowSet
	}
	if s.seen == nil {
		s.seen = make(map[attribute.Distinct]struct{})
	}
	s.seen[d] = struct{}{}
	return set
}
