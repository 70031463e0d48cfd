package conntrace

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// typedError says its own error.type, as semconv.ErrorType allows.
type typedError struct{}

func (typedError) Error() string     { return "typed" }
func (typedError) ErrorType() string { return "my_error" }

func TestErrorType(t *testing.T) {
	bg := context.Background()
	past, cancelPast := context.WithDeadline(bg, time.Unix(1, 0))
	defer cancelPast()
	canceled, cancel := context.WithCancel(bg)
	cancel()
	syscallErr := func(op string, errno syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
	}
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"context deadline", bg, context.DeadlineExceeded, vocab.ErrorTypeTimeout},
		{"i/o timeout", bg, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}, vocab.ErrorTypeTimeout},
		{"DNS timeout", bg, &net.DNSError{Err: "i/o timeout", IsTimeout: true}, vocab.ErrorTypeTimeout},
		// http.Client.Timeout through a Transport net/http does not know:
		// the client closes Request.Cancel when its context's deadline passes.
		{"Client.Timeout", past, errors.New("net/http: request canceled"), vocab.ErrorTypeTimeout},
		{"Request.Cancel", bg, errors.New("net/http: request canceled"), vocab.ErrorTypeCanceled},
		{"request canceled waiting for a connection", bg, errors.New("net/http: request canceled while waiting for connection"), vocab.ErrorTypeCanceled},
		{"context canceled", bg, context.Canceled, vocab.ErrorTypeCanceled},
		{"dial canceled", bg, &net.OpError{Op: "dial", Net: "tcp", Err: fmt.Errorf("operation was canceled: %w", context.Canceled)}, vocab.ErrorTypeCanceled},
		{"canceled with a cause", canceled, errors.New("shutting down"), vocab.ErrorTypeCanceled},
		{"connection refused", bg, syscallErr("connect", syscall.ECONNREFUSED), vocab.ErrorTypeConnectionRefused},
		{"connection reset", bg, syscallErr("read", syscall.ECONNRESET), vocab.ErrorTypeConnectionReset},
		{"broken pipe", bg, syscallErr("write", syscall.EPIPE), vocab.ErrorTypeConnectionReset},
		{"wrapped reset", bg, fmt.Errorf("read body: %w", syscallErr("read", syscall.ECONNRESET)), vocab.ErrorTypeConnectionReset},
		{"no such host", bg, &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", IsNotFound: true}}, vocab.ErrorTypeHostNotFound},
		{"DNS temporary", bg, &net.DNSError{Err: "server misbehaving", IsTemporary: true}, vocab.ErrorTypeTryAgain},
		{"DNS other", bg, &net.DNSError{Err: "cannot unmarshal DNS message"}, vocab.ErrorTypeNoRecovery},
		{"unknown authority", bg, &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, vocab.ErrorTypeServerCertificateInvalid},
		{"wrong host", bg, x509.HostnameError{Host: "example.test", Certificate: &x509.Certificate{}}, vocab.ErrorTypeServerCertificateInvalid},
		{"expired", bg, x509.CertificateInvalidError{Reason: x509.Expired, Cert: &x509.Certificate{}}, vocab.ErrorTypeServerCertificateInvalid},
		{"TLS alert", bg, &net.OpError{Op: "remote error", Err: tls.AlertError(40)}, vocab.ErrorTypeTLS},
		{"not TLS", bg, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, vocab.ErrorTypeTLS},
		{"EOF", bg, io.EOF, vocab.ErrorTypeConnectionClosed},
		{"unexpected EOF", bg, fmt.Errorf("net/http: HTTP/1.x transport connection broken: %w", io.ErrUnexpectedEOF), vocab.ErrorTypeConnectionClosed},
		{"server closed idle", bg, errors.New("http: server closed idle connection"), vocab.ErrorTypeConnectionClosed},
		{"own error.type", bg, fmt.Errorf("wrapped: %w", typedError{}), "my_error"},
		{"a named type", bg, &net.AddrError{Err: "missing port"}, "*net.AddrError"},
		{"errors.New", bg, errors.New("boom"), semconv.ErrorTypeOther.Value.AsString()},
	}
	for _, tt := range tests {
		if got := errorType(tt.ctx, tt.err); got != tt.want {
			t.Errorf("%s: errorType(%v) = %q; want %q", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestErrorTypeClientTimeout: http.Client.Timeout ending a hang is a
// timeout, on the span and on http.client.request.duration.
func TestErrorTypeClientTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	client.Timeout = 100 * time.Millisecond
	if _, err := client.Get(srv.URL); err == nil {
		t.Fatal("GET of a hanging server: no error")
	}
	want := semconv.ErrorTypeKey.String(vocab.ErrorTypeTimeout)
	span := tel.Spans.Ended()[0]
	if attrs := attribute.NewSet(span.Attributes()...); !testkit.HasAll(attrs, want) {
		v, _ := attrs.Value(want.Key)
		t.Errorf("span error.type = %q; want %q", v.Emit(), want.Value.Emit())
	}
	if got := tel.Collect(t).Total("http.client.request.duration", want); got != 1 {
		t.Errorf("http.client.request.duration{error.type=%s}: got %v; want 1", vocab.ErrorTypeTimeout, got)
	}
}

// TestErrorTypeConnectionRefused: a refused dial says so on the span, its
// connect.done event and the dial metric.
func TestErrorTypeConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options()...)
	if _, err := client.Get("http://" + addr + "/"); err == nil {
		t.Fatal("GET of a closed port: no error")
	}
	want := semconv.ErrorTypeKey.String(vocab.ErrorTypeConnectionRefused)
	span := tel.Spans.Ended()[0]
	if attrs := attribute.NewSet(span.Attributes()...); !testkit.HasAll(attrs, want) {
		v, _ := attrs.Value(want.Key)
		t.Errorf("span error.type = %q; want %q", v.Emit(), want.Value.Emit())
	}
	if ev, _ := testkit.Event(span, vocab.EventConnectDone); !testkit.HasAll(ev, want) {
		t.Errorf("%s event lacks %s=%s: %v", vocab.EventConnectDone, want.Key, want.Value.Emit(), ev.ToSlice())
	}
	points := tel.Collect(t)
	for _, name := range []string{vocab.MetricDials, "http.client.request.duration"} {
		if got := points.Total(name, want); got != 1 {
			t.Errorf("%s{error.type=%s}: got %v; want 1", name, vocab.ErrorTypeConnectionRefused, got)
		}
	}
}
