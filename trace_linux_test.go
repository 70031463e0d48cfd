package conntrace

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestKernelGate: the kernel is read only for a connection reused after
// detect.KernelIdleGate of idle, and what it says shows on got_conn and
// in the learned path idle timeout, next to the configured settings. Such
// a reuse, answered before stale_reuse looks again, is not suspected: the
// write and the first byte stay numbers on its span, not events, however
// many times it happens (the timer it armed serves the next one).
func TestKernelGate(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	tel := newTelemetry(t)
	base := &http.Transport{IdleConnTimeout: 42 * time.Second}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: NewTransport(base, tel.options(WithNATIdleTimeout(350*time.Second))...)}

	testkit.Get(t, client, srv.URL)
	// Wall clock on purpose: the gate decides whether the kernel (TCP_INFO of a real socket) is read.
	time.Sleep(200 * time.Millisecond) // a hot reuse
	testkit.Get(t, client, srv.URL)
	time.Sleep(detect.KernelIdleGate + 100*time.Millisecond)
	testkit.Get(t, client, srv.URL)
	time.Sleep(detect.KernelIdleGate + 100*time.Millisecond)
	testkit.Get(t, client, srv.URL)

	spans := tel.Spans.Ended()
	if len(spans) != 4 {
		t.Fatalf("spans: %d; want 4", len(spans))
	}
	for i, want := range []bool{false, false, true, true} {
		for _, name := range []string{vocab.EventWroteRequest, vocab.EventFirstByte, vocab.EventAlert} {
			if _, ok := testkit.Event(spans[i], name); ok {
				t.Errorf("request %d: a %s event on an answered request; want the moments as numbers (events %q)", i+1, name, testkit.EventNames(spans[i]))
			}
		}
		spanAttrs := attribute.NewSet(spans[i].Attributes()...)
		for _, k := range []attribute.Key{vocab.AttrWroteAt, vocab.AttrFirstByteAt} {
			if !spanAttrs.HasValue(k) {
				t.Errorf("request %d: span attributes lack %s", i+1, k)
			}
		}
		attrs, _ := testkit.Event(spans[i], vocab.EventGotConn)
		wire, ok := attrs.Value(vocab.AttrWireIdle)
		if ok != want {
			t.Errorf("request %d: got_conn has %s: %v; want %v", i+1, vocab.AttrWireIdle, ok, want)
		}
		if ok && (wire.AsFloat64() < 1 || wire.AsFloat64() > 3) {
			t.Errorf("request %d: wire idle %vs; want about 1.1s", i+1, wire.AsFloat64())
		}
	}

	points := tel.Collect(t)
	host, port := srvHostPort(t, srv.URL)
	lower := points.Total(vocab.MetricPathIdleTimeout, semconv.ServerAddress(host), semconv.ServerPort(port), vocab.AttrBound.String(vocab.BoundLower))
	if lower < 1 || lower > 3 {
		t.Errorf("%s{lower}: %v; want about 1.1 (the answered reuse's wire idle)", vocab.MetricPathIdleTimeout, lower)
	}
	if n := len(points[vocab.MetricPathIdleTimeout]); n != 1 {
		t.Errorf("%s: %d points; want only the lower bound", vocab.MetricPathIdleTimeout, n)
	}
	for name, want := range map[string]float64{vocab.MetricConfigIdleConnTimeout: 42, vocab.MetricConfigNATIdleTimeout: 350} {
		if got := points.Total(name); got != want {
			t.Errorf("%s: %v; want %v", name, got, want)
		}
	}
}

func srvHostPort(t *testing.T, u string) (string, int) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return hostAndPort(req.URL)
}

// TestKernelReadingPooled: the kernel reading a request takes at GotConn
// lives in its wake timer, which goes back to the Transport's pool when
// the request ends and serves the next. Many requests at once, each read
// at hand-out and ended, then shown their GotConn again (late, from
// another goroutine): no ended request's timeline may still point at a
// reading another request now writes (the race detector would see it), and
// every reading a live request holds is its own connection's.
func TestKernelReadingPooled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(io.Discard, c) }()
		}
	}()
	const conns, rounds = 8, 50
	tr := NewTransport(roundTripperFunc(nil), newTelemetry(t).options()...)
	var wg sync.WaitGroup
	for range conns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		local := c.LocalAddr().(*net.TCPAddr).Port
		wg.Go(func() {
			var ended []*request
			var readAt []time.Time // each request's own reading's time
			info := httptrace.GotConnInfo{Conn: c, Reused: true, WasIdle: true, IdleTime: 2 * time.Second}
			for range rounds {
				r, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
				s := tr.newRequest(r)
				s.begin()
				s.gotConn(info)
				s.mu.Lock()
				tcp := s.tl.Conns[0].TCP
				if tcp == nil || tcp.State != "ESTABLISHED" {
					t.Fatalf("hand-out reading %+v; want the live connection's (local port %d)", tcp, local)
				}
				readAt = append(readAt, tcp.At)
				s.mu.Unlock()
				s.end(detect.BodyEOF, 0, nil)
				ended = append(ended, s)
			}
			for i, s := range ended {
				s.gotConn(info) // late: changes nothing
				s.mu.Lock()
				// Its own reading, or none: never one a later request took
				// (a race, too, if another goroutine's).
				if tcp := s.tl.Conns[0].TCP; tcp != nil && !tcp.At.Equal(readAt[i]) {
					t.Errorf("ended request %d: reading taken at %v; its own was at %v: another request's", i, tcp.At, readAt[i])
				}
				if len(s.tl.Conns) != 1 {
					t.Errorf("an ended request's connections: %d; want its one", len(s.tl.Conns))
				}
				s.mu.Unlock()
			}
		})
	}
	wg.Wait()
}
