package exporters

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/testkit"
)

// TestOTLPDefaultsToPlainLocalReceivers: with OTEL_TRACES_EXPORTER=otlp and
// no endpoint variable, spans and metrics go to the specification's
// default receiver in plain HTTP (the Go exporters alone would try TLS,
// which Jaeger on localhost:4318 does not speak). The test's receiver
// stands in for localhost:4318.
func TestOTLPDefaultsToPlainLocalReceivers(t *testing.T) {
	if localOTLPHTTP != "localhost:4318" || localOTLPGRPC != "localhost:4317" {
		t.Fatalf("default receivers %s and %s; the specification says localhost:4318 and localhost:4317", localOTLPHTTP, localOTLPGRPC)
	}
	var mu sync.Mutex
	got := map[string][]byte{}
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got[r.URL.Path] = append(got[r.URL.Path], body...)
		mu.Unlock()
	}))
	defer receiver.Close()
	defer func(old string) { localOTLPHTTP = old }(localOTLPHTTP)
	localOTLPHTTP = strings.TrimPrefix(receiver.URL, "http://")
	testkit.ClearOTelEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_METRICS_EXPORTER", "otlp")

	p, err := New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, span := p.TracerProvider.Tracer("test").Start(context.Background(), "to-the-local-receiver")
	span.End()
	counter, _ := p.MeterProvider.Meter("test").Int64Counter("local.counter")
	counter.Add(context.Background(), 1)
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for path, want := range map[string]string{"/v1/traces": "to-the-local-receiver", "/v1/metrics": "local.counter"} {
		if !bytes.Contains(got[path], []byte(want)) {
			t.Errorf("the plain-HTTP receiver got no %q on %s", want, path)
		}
	}
}

// TestOTLPGRPCDefaultIsPlaintext: with the grpc protocol and no endpoint,
// the exporter opens a plaintext HTTP/2 connection to localhost:4317 (here
// the test's listener): its first bytes are the HTTP/2 preface, not a TLS
// ClientHello.
func TestOTLPGRPCDefaultIsPlaintext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer func(old string) { localOTLPGRPC = old }(localOTLPGRPC)
	localOTLPGRPC = ln.Addr().String()
	testkit.ClearOTelEnv(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_METRICS_EXPORTER", "none")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	// The listener never answers: give up the export after 300 ms, so that
	// Shutdown returns with every gRPC goroutine stopped.
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")

	first := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			first <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 24)
		n, _ := io.ReadFull(c, b)
		first <- b[:n]
	}()
	p, err := New(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, span := p.TracerProvider.Tracer("test").Start(context.Background(), "grpc")
	span.End()
	// The export fails; only its first bytes matter.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx)
	if got, want := string(<-first), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"; got != want {
		t.Errorf("the gRPC exporter opened with %q; want the plaintext HTTP/2 preface %q", got, want)
	}
}
