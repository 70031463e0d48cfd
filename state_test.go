package conntrace

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// TestRecyclable: a state goes back to the pool only when net/http can no
// longer call its hooks: an idle connection straight from the pool, the
// request written, the connection returned, no timer, no composed trace.
func TestRecyclable(t *testing.T) {
	pooledConn := httptrace.GotConnInfo{Conn: testConn, Reused: true, WasIdle: true, IdleTime: time.Second}
	tests := []struct {
		name  string
		hooks func(ct *httptrace.ClientTrace)
		want  bool
	}{
		{"idle conn, written, pooled", func(ct *httptrace.ClientTrace) {
			ct.GotConn(pooledConn)
			ct.WroteRequest(httptrace.WroteRequestInfo{})
			ct.PutIdleConn(nil)
		}, true},
		{"idle conn, written, pool full", func(ct *httptrace.ClientTrace) {
			ct.GotConn(pooledConn)
			ct.WroteRequest(httptrace.WroteRequestInfo{})
			ct.PutIdleConn(errTooManyIdle)
		}, true},
		{"new conn: a dial may still report", func(ct *httptrace.ClientTrace) {
			ct.GotConn(httptrace.GotConnInfo{Conn: testConn})
			ct.WroteRequest(httptrace.WroteRequestInfo{})
			ct.PutIdleConn(nil)
		}, false},
		{"handed over by another request: this one queued a dial", func(ct *httptrace.ClientTrace) {
			ct.GotConn(httptrace.GotConnInfo{Conn: testConn, Reused: true})
			ct.WroteRequest(httptrace.WroteRequestInfo{})
			ct.PutIdleConn(nil)
		}, false},
		{"not yet written: WroteRequest may come", func(ct *httptrace.ClientTrace) {
			ct.GotConn(pooledConn)
			ct.PutIdleConn(nil)
		}, false},
		{"body closed early: no PutIdleConn", func(ct *httptrace.ClientTrace) {
			ct.GotConn(pooledConn)
			ct.WroteRequest(httptrace.WroteRequestInfo{})
		}, false},
		{"retried on a second connection", func(ct *httptrace.ClientTrace) {
			ct.GotConn(pooledConn)
			ct.GotConn(httptrace.GotConnInfo{Conn: testConn})
			ct.WroteRequest(httptrace.WroteRequestInfo{})
			ct.PutIdleConn(nil)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTransport(nil, WithoutSpans(), WithoutAudit())
			req, _ := http.NewRequest(http.MethodGet, "http://example.test:8080/x", nil)
			s := tr.newRequestState(req, time.Now())
			s.withHooks()
			tt.hooks(&s.hooks)
			s.mu.Lock()
			got := s.recyclable()
			s.mu.Unlock()
			if got != tt.want {
				t.Errorf("recyclable: got %v; want %v", got, tt.want)
			}
		})
	}

	t.Run("suspect with a hang timer", func(t *testing.T) {
		tr := NewTransport(nil, WithoutSpans(), WithNATIdleTimeout(time.Second), WithoutAudit())
		req, _ := http.NewRequest(http.MethodGet, "http://example.test:8080/x", nil)
		s := tr.newRequestState(req, time.Now())
		s.withHooks()
		s.hooks.GotConn(httptrace.GotConnInfo{Conn: testConn, Reused: true, WasIdle: true, IdleTime: time.Hour})
		s.hooks.WroteRequest(httptrace.WroteRequestInfo{})
		s.hooks.PutIdleConn(nil)
		s.mu.Lock()
		got := s.recyclable()
		s.mu.Unlock()
		s.finish(nil)
		if got {
			t.Errorf("recyclable with a hang timer armed: got true; want false")
		}
	})

	t.Run("hooks composed into the caller's trace", func(t *testing.T) {
		tr := NewTransport(nil, WithoutSpans(), WithoutAudit())
		ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://example.test:8080/x", nil)
		s := tr.newRequestState(req, time.Now())
		ct := httptrace.ContextClientTrace(s.withHooks())
		ct.GotConn(httptrace.GotConnInfo{Conn: testConn, Reused: true, WasIdle: true, IdleTime: time.Second})
		ct.WroteRequest(httptrace.WroteRequestInfo{})
		ct.PutIdleConn(nil)
		s.mu.Lock()
		got := s.recyclable()
		s.mu.Unlock()
		if got {
			t.Errorf("recyclable when composed: got true; want false (the caller's context keeps the hooks)")
		}
	})
}

var errTooManyIdle = fmt.Errorf("http: putIdleConn: too many idle connections for host")

// TestContextAfterEnd: the request's context that outlives it
// (res.Request.Context()) no longer holds conntrace's hooks, so a request
// built on it later cannot reach a state that serves another request.
func TestContextAfterEnd(t *testing.T) {
	srv := newServer(t, hello)
	client, _ := newClient(t, WithoutSpans())
	res, err := client.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := res.Request.Context()
	if httptrace.ContextClientTrace(ctx) == nil {
		t.Fatalf("while the body is unread, the request's context holds no ClientTrace; want conntrace's")
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if ct := httptrace.ContextClientTrace(ctx); ct != nil {
		t.Errorf("after the body's EOF, the request's context still holds a ClientTrace; want none")
	}
	if ctx.Err() != nil || ctx.Done() != nil && isClosed(ctx.Done()) {
		t.Errorf("the request's context was cancelled: %v", ctx.Err())
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestPooledStatesStayApart: many concurrent requests to several servers,
// through pooled states, each span describes its own request only: its own
// server port on the span, the metrics and the got_conn event.
func TestPooledStatesStayApart(t *testing.T) {
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	var ports []int
	var urls []string
	for range 3 {
		srv := newServer(t, hello)
		urls = append(urls, srv.URL)
		ports = append(ports, srv.Listener.Addr().(*net.TCPAddr).Port)
	}
	const perWorker = 40
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			for i := range perWorker {
				if got := get(t, client, urls[(w+i)%len(urls)]); got != "hello" {
					t.Errorf("body: got %q", got)
					return
				}
			}
		})
	}
	wg.Wait()

	spans := tel.spans.Ended()
	if len(spans) != 6*perWorker {
		t.Fatalf("got %d spans; want %d", len(spans), 6*perWorker)
	}
	perPort := map[int]int{}
	for _, s := range spans {
		attrs := attribute.NewSet(s.Attributes()...)
		port, _ := attrs.Value(semconv.ServerPortKey)
		url, _ := attrs.Value(semconv.URLFullKey)
		if want := "http://127.0.0.1:" + strconv.Itoa(int(port.AsInt64())); url.AsString() != want {
			t.Errorf("span of %s: url.full %q; want %q", port.Emit(), url.AsString(), want)
		}
		got, ok := event(s, EventGotConn)
		if !ok {
			t.Errorf("span without got_conn: %q", events(s))
			continue
		}
		if peer, _ := got.Value(semconv.NetworkPeerPortKey); peer.AsInt64() != port.AsInt64() {
			t.Errorf("span to port %d: got_conn from peer port %d; a pooled state mixed two requests", port.AsInt64(), peer.AsInt64())
		}
		for _, name := range []string{EventGotConn, EventWroteRequest, EventFirstByte} {
			if n := count(events(s), name); n != 1 {
				t.Errorf("span to port %d: %d %s events; want 1 (%q)", port.AsInt64(), n, name, events(s))
			}
		}
		perPort[int(port.AsInt64())]++
	}
	points := tel.collect(t)
	for _, p := range ports {
		host := []attribute.KeyValue{semconv.ServerPort(p)}
		if got := total(points, "http.client.request.duration", host...); got != float64(perPort[p]) {
			t.Errorf("request durations for port %d: got %v; want %d", p, got, perPort[p])
		}
		if got := total(points, "http.client.active_requests", host...); got != 0 {
			t.Errorf("active requests for port %d after all ended: got %v; want 0", p, got)
		}
	}
}
