package conntrace

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Values of error.type for the errors HTTP clients meet most, on the span,
// its events, http.client.request.duration, dns.lookup.duration and
// [MetricDials]. semconv asks for a low-cardinality, documented class of
// error; for errors of other kinds, error.type is the one the error gives
// (an ErrorType() string method), else its type's name, as semconv.ErrorType
// says, else _OTHER for a bare errors.New value, whose type says nothing.
const (
	// ErrorTypeTimeout: a deadline ended the request: http.Client.Timeout,
	// the context's deadline, or one of the transport's timeouts (dial,
	// TLS handshake, response header, an i/o deadline, a DNS timeout).
	ErrorTypeTimeout = "timeout"
	// ErrorTypeCanceled: the request's context was cancelled (or its
	// deprecated Request.Cancel closed) before any deadline.
	ErrorTypeCanceled = "canceled"
	// ErrorTypeConnectionRefused: the server's host refused the
	// connection (ECONNREFUSED): nothing listens on the port.
	ErrorTypeConnectionRefused = "connection_refused"
	// ErrorTypeConnectionReset: the peer reset the connection (ECONNRESET,
	// ECONNABORTED, or EPIPE on a write): a server, load balancer or
	// firewall aborted it.
	ErrorTypeConnectionReset = "connection_reset"
	// ErrorTypeConnectionClosed: the connection was closed before the
	// response was complete (EOF, unexpected EOF, "server closed idle
	// connection"): a server's idle timer, typically.
	ErrorTypeConnectionClosed = "connection_closed"
	// ErrorTypeHostNotFound, ErrorTypeTryAgain, ErrorTypeNoRecovery: DNS
	// errors, named after getaddrinfo's as semconv's dns.lookup.duration
	// asks: the name does not exist; a temporary failure; any other.
	ErrorTypeHostNotFound = "host_not_found"
	ErrorTypeTryAgain     = "try_again"
	ErrorTypeNoRecovery   = "no_recovery"
	// ErrorTypeServerCertificateInvalid: the server's certificate was
	// rejected (unknown authority, wrong host name, expired).
	ErrorTypeServerCertificateInvalid = "server_certificate_invalid"
	// ErrorTypeTLS: any other TLS failure: an alert from the server, a
	// server that does not speak TLS, a protocol error.
	ErrorTypeTLS = "tls_error"
	// ErrorTypeDeadConnection: conntrace closed the request's connection
	// because the kernel showed it dead, and did not resend the request
	// ([ErrDeadConnection], [WithCloseDeadConnections]).
	ErrorTypeDeadConnection = "dead_connection"
)

// errorType classifies err, which ended a request, a dial, a lookup or a
// handshake made with ctx, into a value of error.type.
//
// The error decides first. The context decides an error that says nothing
// of its own cause: http.Client.Timeout cancels a Transport that net/http
// does not know (conntrace's) through Request.Cancel, and net/http returns
// a bare "net/http: request canceled", while the context the client set
// its deadline on has passed it; a context cancelled with a cause returns
// the cause.
func errorType(ctx context.Context, err error) string {
	var (
		typed   interface{ ErrorType() string }
		timeout interface{ Timeout() bool }
		dns     *net.DNSError
	)
	switch {
	case errors.As(err, &typed) && typed.ErrorType() != "":
		return typed.ErrorType()
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &timeout) && timeout.Timeout():
		return ErrorTypeTimeout
	case errors.Is(err, context.Canceled):
		return ErrorTypeCanceled
	case errors.As(err, &dns):
		switch {
		case dns.IsNotFound:
			return ErrorTypeHostNotFound
		case dns.IsTemporary:
			return ErrorTypeTryAgain
		}
		return ErrorTypeNoRecovery
	case errors.Is(err, syscall.ECONNREFUSED):
		return ErrorTypeConnectionRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE):
		return ErrorTypeConnectionReset
	case isCertificateError(err):
		return ErrorTypeServerCertificateInvalid
	case inChain(err, func(e error) bool { return strings.HasPrefix(e.Error(), "tls: ") }):
		return ErrorTypeTLS
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		inChain(err, func(e error) bool { return e.Error() == "http: server closed idle connection" }):
		return ErrorTypeConnectionClosed
	case deadlinePassed(ctx):
		return ErrorTypeTimeout
	case ctx.Err() != nil, strings.HasPrefix(err.Error(), "net/http: request canceled"):
		return ErrorTypeCanceled
	}
	if kv := semconv.ErrorType(err); kv.Value.AsString() != "*errors.errorString" {
		return kv.Value.AsString()
	}
	return semconv.ErrorTypeOther.Value.AsString()
}

// errorTypeAttr is error.type for err, classified by errorType.
func errorTypeAttr(ctx context.Context, err error) attribute.KeyValue {
	return semconv.ErrorTypeKey.String(errorType(ctx, err))
}

func deadlinePassed(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func isCertificateError(err error) bool {
	var (
		verify    *tls.CertificateVerificationError
		authority x509.UnknownAuthorityError
		host      x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	return errors.As(err, &verify) || errors.As(err, &authority) || errors.As(err, &host) || errors.As(err, &invalid)
}

// inChain reports whether f holds for err or any error it wraps.
func inChain(err error, f func(error) bool) bool {
	for err != nil {
		if f(err) {
			return true
		}
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			err = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				if inChain(e, f) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}
