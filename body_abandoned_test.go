package conntrace

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestAbandonedBody: a response body dropped without Close or EOF ends its
// request once the garbage collector finds it unreachable: the span ends,
// with an abandoned event giving the bytes read, the request is no longer
// counted as active, and its HTTP/1 connection is counted as not reused.
func TestAbandonedBody(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, strings.Repeat("x", 1<<16)) })
	tel := newTelemetry(t)
	client, base := newClient(t, tel.options()...)
	ctx, cancel := context.WithCancel(context.Background())
	func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(res.Body, make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		// res goes out of scope here, its body neither drained nor closed.
	}()
	if got := len(tel.Spans.Ended()); got != 0 {
		t.Fatalf("span ended before the body was dropped")
	}
	// Wall clock on purpose: the body's finalizer runs outside any synctest
	// bubble, on a goroutine of its own after a collection finds the body
	// unreachable, so one runtime.GC is not enough to see it.
	if !testkit.Eventually(10*time.Second, func() bool { runtime.GC(); return len(tel.Spans.Ended()) == 1 }) {
		t.Fatalf("span of the abandoned body ended: not within 10 s of garbage collection")
	}

	span := tel.Spans.Ended()[0]
	ev, ok := testkit.Event(span, vocab.EventBodyAbandoned)
	if !ok {
		t.Fatalf("no %s event: %q", vocab.EventBodyAbandoned, testkit.EventNames(span))
	}
	if v, _ := ev.Value(vocab.AttrBodyRead); v.AsInt64() != 10 {
		t.Errorf("%s = %v; want 10", vocab.AttrBodyRead, v.Emit())
	}
	points := tel.Collect(t)
	if got := points.Total("http.client.active_requests"); got != 0 {
		t.Errorf("active requests: got %v; want 0", got)
	}
	if got := points.Total(vocab.MetricNotReused, vocab.AttrReason.String(vocab.ReasonBodyAbandoned)); got != 1 {
		t.Errorf("%s{reason=%s}: got %v; want 1", vocab.MetricNotReused, vocab.ReasonBodyAbandoned, got)
	}
	if got := len(tel.handledBy("body_not_drained")); got != 0 {
		t.Errorf("body_not_drained raised %d alerts for an abandoned body; want 0 (it was not closed)", got)
	}
	// net/http holds the connection until the request's context ends.
	cancel()
	base.CloseIdleConnections()
}

// TestClosedBodyNoCleanup: a body that is closed, or read to EOF, leaves
// nothing for the garbage collector to run: its watch goes back to the pool
// (whose watches, when the pool drops them, are finalized finding no
// request), so dropping closed bodies queues no finalizer or cleanup per
// body.
func TestClosedBodyNoCleanup(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	const n = 200
	queued := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/cleanups/queued:cleanups"}, {Name: "/gc/finalizers/queued:finalizers"}}
		metrics.Read(s)
		return s[0].Value.Uint64() + s[1].Value.Uint64()
	}
	runtime.GC()
	before := queued()
	for i := range n {
		res, err := client.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			io.Copy(io.Discard, res.Body) // EOF
		}
		res.Body.Close()
	}
	runtime.GC()
	runtime.GC()
	if got := queued() - before; got >= n/2 {
		t.Errorf("%d finalizers and cleanups queued after %d closed bodies were dropped; want (about) none", got, n)
	}
	if got := len(tel.Spans.Ended()); got != n {
		t.Errorf("ended spans: got %d; want %d", got, n)
	}
	for _, s := range tel.Spans.Ended() {
		if _, ok := testkit.Event(s, vocab.EventBodyAbandoned); ok {
			t.Fatalf("a closed body was recorded as abandoned")
		}
	}
}

// TestBodyWatchReused: a body's watch serves another body once its own has
// ended its request, and nothing the first body's caller does late (Close
// again, Read after Close, from other goroutines) reaches the request the
// watch now serves; that request, its body dropped, is still ended by the
// garbage collector through the same watch.
func TestBodyWatchReused(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, strings.Repeat("x", 1<<16)) })
	tel := newTelemetry(t)
	client, base := newClient(t, tel.options()...)
	ctx, cancel := context.WithCancel(context.Background())
	defer base.CloseIdleConnections()
	defer cancel()
	get := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	first := get()
	w := first.Body.(*body).w.Load()
	if w == nil {
		t.Fatal("a body just returned has no watch")
	}
	first.Body.Close()
	if first.Body.(*body).w.Load() != nil {
		t.Fatal("a closed body still holds its watch")
	}
	// Which watch the pool hands out is the pool's choice (another test's
	// Transport may take this one, the race detector drops some at random):
	// hand this one to the next body as the pool would, and give that
	// body's own back.
	second := get()
	b2 := second.Body.(*body)
	own := b2.w.Load()
	w.req.Store(own.req.Swap(nil))
	b2.w.Store(w)
	bodyWatches.Put(own)
	w = nil // the test itself must not keep the watch reachable
	ended := len(tel.Spans.Ended())

	// The first body's caller, late and from three goroutines.
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			first.Body.Close()
			first.Body.Read(make([]byte, 10))
		})
	}
	wg.Wait()
	if got := len(tel.Spans.Ended()); got != ended {
		t.Fatalf("%d spans ended by the first body's late Close and Read; want none (its watch serves another request now)", got-ended)
	}
	if got := tel.Collect(t).Total("http.client.active_requests"); got != 1 {
		t.Errorf("active requests after the late calls: %v; want 1 (the second, still open)", got)
	}

	func() {
		if _, err := io.ReadFull(second.Body, make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		second = nil // dropped, neither drained nor closed
	}()
	if !testkit.Eventually(10*time.Second, func() bool { runtime.GC(); return len(tel.Spans.Ended()) == ended+1 }) {
		t.Fatalf("the abandoned body of a reused watch did not end its request within 10 s of garbage collection")
	}
	span := tel.Spans.Ended()[ended]
	if _, ok := testkit.Event(span, vocab.EventBodyAbandoned); !ok {
		t.Fatalf("no %s event on the abandoned request: %q", vocab.EventBodyAbandoned, testkit.EventNames(span))
	}
	if got := tel.Collect(t).Total("http.client.active_requests"); got != 0 {
		t.Errorf("active requests at the end: %v; want 0", got)
	}
}
