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

	"github.com/conntrace/conntrace/vocab"
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
		return vocab.ErrorTypeTimeout
	case errors.Is(err, context.Canceled):
		return vocab.ErrorTypeCanceled
	case errors.As(err, &dns):
		switch {
		case dns.IsNotFound:
			return vocab.ErrorTypeHostNotFound
		case dns.IsTemporary:
			return vocab.ErrorTypeTryAgain
		}
		return vocab.ErrorTypeNoRecovery
	case errors.Is(err, syscall.ECONNREFUSED):
		return vocab.ErrorTypeConnectionRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE):
		return vocab.ErrorTypeConnectionReset
	case isCertificateError(err):
		return vocab.ErrorTypeServerCertificateInvalid
	case inChain(err, func(e error) bool { return strings.HasPrefix(e.Error(), "tls: ") }):
		return vocab.ErrorTypeTLS
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		inChain(err, func(e error) bool { return e.Error() == "http: server closed idle connection" }):
		return vocab.ErrorTypeConnectionClosed
	case deadlinePassed(ctx):
		return vocab.ErrorTypeTimeout
	case ctx.Err() != nil, strings.HasPrefix(err.Error(), "net/http: request canceled"):
		return vocab.ErrorTypeCanceled
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
