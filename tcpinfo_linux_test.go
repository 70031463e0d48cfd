package conntrace

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/vocab"
)

// TestReadTCPInfo reads real sockets: the reading knows the state, sees a
// write acknowledged, and times the wire idle; it looks through TLS and the
// dialer wrapper, and knows nothing of a connection with no socket.
func TestReadTCPInfo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	before := readTCPInfo(c, time.Now())
	if before == nil || before.State != "ESTABLISHED" || before.RTO <= 0 {
		t.Fatalf("fresh connection: %+v; want a known ESTABLISHED reading with an RTO", before)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	var after *detectors.TCPInfo
	for time.Now().Before(deadline) {
		if after = readTCPInfo(c, time.Now()); after != nil && after.BytesAcked >= before.BytesAcked+5 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if after == nil || after.BytesAcked < before.BytesAcked+5 || after.Unacked != 0 {
		t.Fatalf("after a 5-byte write: bytes acked %d (before %d), unacked %d; want 5 more, none unacked", after.BytesAcked, before.BytesAcked, after.Unacked)
	}
	time.Sleep(300 * time.Millisecond)
	if idle := readTCPInfo(c, time.Now()).WireIdle(); idle < 250*time.Millisecond || idle > 2*time.Second {
		t.Errorf("wire idle after 300ms quiet: %v", idle)
	}

	// Through the dialer wrapper, and through TLS over it.
	tel := newTelemetry(t)
	tracked := newTrackedConn(c, NewTransport(nil, tel.options(WithoutAudit())...).inst, ln.Addr().String())
	if readTCPInfo(tracked, time.Now()) == nil {
		t.Error("through trackedConn: not known")
	}
	if readTCPInfo(tls.Client(tracked, &tls.Config{}), time.Now()) == nil {
		t.Error("through *tls.Conn over trackedConn: not known")
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if got := readTCPInfo(p1, time.Now()); got != nil {
		t.Errorf("net.Pipe: %+v; want not known", got)
	}

	c.Close()
	if got := readTCPInfo(c, time.Now()); got != nil {
		t.Errorf("closed: %+v; want not known", got)
	}
	<-done
}

// TestKernelGate: the kernel is read only for a connection reused after
// detect.KernelIdleGate of idle, and what it says shows on got_conn and
// in the learned path idle timeout, next to the configured settings.
func TestKernelGate(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	tel := newTelemetry(t)
	base := &http.Transport{IdleConnTimeout: 42 * time.Second}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: NewTransport(base, tel.options(WithNATIdleTimeout(350*time.Second))...)}

	get(t, client, srv.URL)
	time.Sleep(200 * time.Millisecond) // a hot reuse
	get(t, client, srv.URL)
	time.Sleep(detect.KernelIdleGate + 100*time.Millisecond)
	get(t, client, srv.URL)

	spans := tel.spans.Ended()
	if len(spans) != 3 {
		t.Fatalf("spans: %d; want 3", len(spans))
	}
	for i, want := range []bool{false, false, true} {
		attrs, _ := event(spans[i], vocab.EventGotConn)
		wire, ok := attrs.Value(vocab.AttrWireIdle)
		if ok != want {
			t.Errorf("request %d: got_conn has %s: %v; want %v", i+1, vocab.AttrWireIdle, ok, want)
		}
		if ok && (wire.AsFloat64() < 1 || wire.AsFloat64() > 3) {
			t.Errorf("request %d: wire idle %vs; want about 1.1s", i+1, wire.AsFloat64())
		}
	}

	points := tel.collect(t)
	host, port := srvHostPort(t, srv.URL)
	lower := total(points, vocab.MetricPathIdleTimeout, semconv.ServerAddress(host), semconv.ServerPort(port), vocab.AttrBound.String(vocab.BoundLower))
	if lower < 1 || lower > 3 {
		t.Errorf("%s{lower}: %v; want about 1.1 (the answered reuse's wire idle)", vocab.MetricPathIdleTimeout, lower)
	}
	if n := len(points[vocab.MetricPathIdleTimeout]); n != 1 {
		t.Errorf("%s: %d points; want only the lower bound", vocab.MetricPathIdleTimeout, n)
	}
	for name, want := range map[string]float64{vocab.MetricConfigIdleConnTimeout: 42, vocab.MetricConfigNATIdleTimeout: 350} {
		if got := total(points, name); got != want {
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

// BenchmarkReadTCPInfo is what a reuse after a second of idle pays at
// GotConn, and each kernel check on a timer: one getsockopt(TCP_INFO).
func BenchmarkReadTCPInfo(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if readTCPInfo(c, now) == nil {
			b.Fatal("not known")
		}
	}
}
