package conntrace

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/testkit"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

const (
	metricOpenConns    = "http.client.open_connections"
	metricConnDuration = "http.client.connection.duration"
)

var (
	stateActive = attribute.String("http.connection.state", "active")
	stateIdle   = attribute.String("http.connection.state", "idle")
)

// heldServer is a server whose handlers wait until released, and which
// counts its open connections: the real sockets the gauge must match.
type heldServer struct {
	*httptest.Server
	open    atomic.Int64 // accepted connections not yet closed
	running atomic.Int64 // handlers waiting for release
	release chan struct{}
}

func newHeldServer(t *testing.T, h2 bool) *heldServer {
	s := &heldServer{release: make(chan struct{})}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.running.Add(1)
		<-s.release
		hello(w, r)
	}))
	s.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			s.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			s.open.Add(-1)
		}
	}
	startServer(t, s.Server, h2)
	return s
}

// gauge returns the open-connections gauge by state.
func gauge(t *testing.T, tel *telemetry, extra ...attribute.KeyValue) (active, idle float64) {
	points := tel.Collect(t)
	return points.Total(metricOpenConns, append(extra, stateActive)...), points.Total(metricOpenConns, append(extra, stateIdle)...)
}

// TestConnectionMetrics compares the open-connections gauge with the
// server's real sockets over the life of four HTTP/1.1 connections: all
// active while four requests wait in the handler, two idle after (the
// default pool keeps two per host and closes the others), none after
// CloseIdleConnections, and four lifetimes recorded.
func TestConnectionMetrics(t *testing.T) {
	srv := newHeldServer(t, false)
	tel := newTelemetry(t)
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	ct := NewTransport(base, tel.options()...)
	base.DialContext = ct.WrapDialContext(nil)
	client := &http.Client{Transport: ct}

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { testkit.Get(t, client, srv.URL) })
	}
	// Wall clock on purpose: the gauge is checked against the server's real sockets.
	testkit.WaitFor(t, 2*time.Second, "4 requests in the handler", func() bool { return srv.running.Load() == 4 })
	if active, idle := gauge(t, tel); active != 4 || idle != 0 || srv.open.Load() != 4 {
		t.Errorf("4 requests in flight: gauge active %v idle %v, server sockets %d; want 4, 0, 4", active, idle, srv.open.Load())
	}
	close(srv.release)
	wg.Wait()
	// The server learns of a close a moment after the client makes it.
	testkit.WaitFor(t, 2*time.Second, "the server to see 2 sockets closed", func() bool { return srv.open.Load() == 2 })
	if active, idle := gauge(t, tel); active != 0 || idle != 2 {
		t.Errorf("after the requests: gauge active %v idle %v; want 0, 2 (the server has %d sockets)", active, idle, srv.open.Load())
	}

	base.CloseIdleConnections()
	testkit.WaitFor(t, 2*time.Second, "the server to see all sockets closed", func() bool { return srv.open.Load() == 0 })
	points := tel.Collect(t)
	if active, idle := gauge(t, tel); active != 0 || idle != 0 {
		t.Errorf("after CloseIdleConnections: gauge active %v idle %v; want 0, 0", active, idle)
	}
	host := semconv.ServerAddress("127.0.0.1")
	if got := points.Total(metricConnDuration, host); got != 4 {
		t.Errorf("%s: got %v lifetimes; want 4", metricConnDuration, got)
	}
	for _, p := range points[metricOpenConns] {
		if _, ok := p.Attrs.Value(semconv.ServerPortKey); !ok || !testkit.HasAll(p.Attrs, host) {
			t.Errorf("%s point lacks server.address/server.port: %v", metricOpenConns, p.Attrs.ToSlice())
		}
	}
}

// connectProxy is an HTTP proxy that serves CONNECT only.
func connectProxy(t *testing.T) *httptest.Server {
	return newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		dst, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			dst.Close()
			return
		}
		io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
		go func() {
			io.Copy(dst, brw)
			dst.Close()
		}()
		io.Copy(conn, dst)
		conn.Close()
	})
}

// TestConnectionMetricsHTTP2Proxy: the wrapped dialer keeps HTTP/2, TLS and
// a CONNECT proxy working. Three concurrent requests share one HTTP/2
// connection, to the proxy, counted once: active while they run, idle after.
func TestConnectionMetricsHTTP2Proxy(t *testing.T) {
	srv := newHeldServer(t, true)
	proxy := connectProxy(t)
	proxyURL, _ := url.Parse(proxy.URL)
	tel := newTelemetry(t)
	base := srv.Client().Transport.(*http.Transport).Clone()
	base.Proxy = http.ProxyURL(proxyURL)
	defer base.CloseIdleConnections()
	ct := NewTransport(base, tel.options()...)
	base.DialContext = ct.WrapDialContext(nil)
	client := &http.Client{Transport: ct}

	var wg sync.WaitGroup
	var protos sync.Map
	for range 3 {
		wg.Go(func() {
			res, err := client.Get(srv.URL)
			if err != nil {
				t.Error(err)
				return
			}
			protos.Store(res.Proto, true)
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		})
	}
	// Wall clock on purpose: real sockets, TLS and a CONNECT proxy are what the wrapped dialer must keep working.
	testkit.WaitFor(t, 2*time.Second, "3 requests in the handler", func() bool { return srv.running.Load() == 3 })
	atProxy := semconv.ServerPort(proxy.Listener.Addr().(*net.TCPAddr).Port)
	// Until the first connection says it speaks HTTP/2, each request
	// dials its own; net/http closes the spares once the first is in use.
	testkit.WaitFor(t, 2*time.Second, "the spare connections to be closed", func() bool { return srv.open.Load() == 1 })
	if active, idle := gauge(t, tel, atProxy); active != 1 || idle != 0 || srv.open.Load() != 1 {
		t.Errorf("3 streams in flight: gauge active %v idle %v (to the proxy), server sockets %d; want 1, 0, 1", active, idle, srv.open.Load())
	}
	close(srv.release)
	wg.Wait()
	if _, ok := protos.Load("HTTP/2.0"); !ok {
		t.Fatalf("responses came over %v; want HTTP/2.0", keys(&protos))
	}
	if active, idle := gauge(t, tel, atProxy); active != 0 || idle != 1 {
		t.Errorf("after the streams: gauge active %v idle %v; want 0, 1", active, idle)
	}
	base.CloseIdleConnections()
	testkit.WaitFor(t, 2*time.Second, "the server to see the socket closed", func() bool { return srv.open.Load() == 0 })
	if active, idle := gauge(t, tel); active != 0 || idle != 0 {
		t.Errorf("after CloseIdleConnections: gauge active %v idle %v; want 0, 0", active, idle)
	}
	if got := tel.Collect(t).Total(metricConnDuration, atProxy); got != 1 {
		t.Errorf("%s: got %v lifetimes; want 1", metricConnDuration, got)
	}
}

func keys(m *sync.Map) []any {
	var out []any
	m.Range(func(k, _ any) bool { out = append(out, k); return true })
	return out
}

// TestWrapDialContext: the exported wrapper counts connections of a base
// built by hand, and passes dial errors through unchanged.
func TestWrapDialContext(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	ct := NewTransport(base, tel.options()...)
	base.DialContext = ct.WrapDialContext(nil)
	testkit.Get(t, &http.Client{Transport: ct}, srv.URL)
	if active, idle := gauge(t, tel); active != 0 || idle != 1 {
		t.Errorf("gauge active %v idle %v; want 0, 1", active, idle)
	}
	dial := ct.WrapDialContext(func(_ context.Context, _, _ string) (net.Conn, error) { return nil, io.ErrUnexpectedEOF })
	if c, err := dial(t.Context(), "tcp", "x:1"); c != nil || err != io.ErrUnexpectedEOF {
		t.Errorf("dial error: got (%v, %v); want (nil, io.ErrUnexpectedEOF)", c, err)
	}
}
