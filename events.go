// This file says what becomes a span event, and with which attributes: the
// events of a request's own span (or of otelhttp's, when stacked), and the
// attributes set on the span when the round trip returns. Names come from
// vocab; the hooks that call these are in trace.go.

package conntrace

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/vocab"
)

// gotConnEvent adds the got_conn event. req.mu is held.
func (req *request) gotConnEvent(info httptrace.GotConnInfo, c detect.Conn) {
	attrs := req.appendConnAttrs(make([]attribute.KeyValue, 0, 12), c)
	if info.Conn != nil {
		if local, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok && local != nil {
			attrs = append(attrs, semconv.NetworkLocalPort(local.Port))
		}
	}
	req.span.AddEvent(vocab.EventGotConn, trace.WithAttributes(attrs...))
}

// appendConnAttrs appends the attributes of got_conn for c: the request's
// span has them, and an alert span's timeline repeats them.
func (req *request) appendConnAttrs(attrs []attribute.KeyValue, c detect.Conn) []attribute.KeyValue {
	attrs = append(attrs, vocab.AttrReused.Bool(c.Reused), vocab.AttrWasIdle.Bool(c.WasIdle),
		vocab.AttrIdleTime.Float64(c.IdleTime.Seconds()))
	if c.TCP != nil {
		attrs = append(attrs, vocab.AttrWireIdle.Float64(c.TCP.WireIdle().Seconds()))
	}
	if !c.Reused {
		attrs = appendSocketAttrs(attrs, c.Socket)
	}
	switch peer := c.RemoteAddr.(type) {
	case nil:
	case *net.TCPAddr:
		attrs = append(attrs, semconv.NetworkPeerAddress(req.host.peerAddress(peer.IP)), semconv.NetworkPeerPort(peer.Port))
	default:
		attrs = append(attrs, semconv.NetworkPeerAddress(peer.String()))
	}
	return attrs
}

var pooledEvent = []trace.EventOption{trace.WithAttributes(vocab.AttrOutcome.String(vocab.OutcomePooled))}

// peerAttrs describes a dial target as given to ConnectStart.
func peerAttrs(network, addr string) []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 6)
	if strings.HasPrefix(network, "tcp") {
		attrs = append(attrs, semconv.NetworkTransportTCP)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return append(attrs, semconv.NetworkPeerAddress(addr))
	}
	attrs = append(attrs, semconv.NetworkPeerAddress(host))
	if p, err := strconv.Atoi(port); err == nil {
		attrs = append(attrs, semconv.NetworkPeerPort(p))
	}
	return attrs
}

// appendErr appends error.type and the error's text when err is not nil.
func (req *request) appendErr(attrs []attribute.KeyValue, err error) []attribute.KeyValue {
	if err == nil {
		return attrs
	}
	return append(attrs, errorTypeAttr(req.Context, err), vocab.AttrError.String(req.errorText(err)))
}

// appendSocketAttrs appends the socket options of a new connection to its
// got_conn event.
func appendSocketAttrs(attrs []attribute.KeyValue, s detect.SocketOptions) []attribute.KeyValue {
	switch {
	case !s.Known:
		return append(attrs, vocab.AttrSocketKeepAlive.String("unknown"))
	case !s.KeepAlive:
		return append(attrs, vocab.AttrSocketKeepAlive.String("off"), vocab.AttrSocketUserTimeout.Float64(s.UserTimeout.Seconds()))
	default:
		return append(attrs, vocab.AttrSocketKeepAlive.String("on"),
			vocab.AttrSocketKeepAliveIdle.Float64(s.Idle.Seconds()),
			vocab.AttrSocketKeepAliveInterval.Float64(s.Interval.Seconds()),
			vocab.AttrSocketKeepAliveCount.Int(s.Count),
			vocab.AttrSocketUserTimeout.Float64(s.UserTimeout.Seconds()))
	}
}

// setSpanAttributes sets url.full and the response's attributes on the
// request's own span, in one call: the span grows its attributes once.
func (req *request) setSpanAttributes(out *http.Request, res *http.Response, err error) {
	attrs := make([]attribute.KeyValue, 1, 4)
	attrs[0] = semconv.URLFull(req.t.redact.url(out.URL))
	if err == nil && res != nil {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(res.StatusCode))
		if v := protocolVersion(res); v != "" {
			attrs = append(attrs, semconv.NetworkProtocolVersion(v))
		}
		if res.StatusCode >= 400 {
			// For a client, every 4xx and 5xx is an error (semconv).
			attrs = append(attrs, semconv.ErrorTypeKey.String(strconv.Itoa(res.StatusCode)))
			req.span.SetStatus(codes.Error, "")
		}
	}
	req.span.SetAttributes(attrs...)
}

// event adds an event to the request's span, if it records.
func (req *request) event(name string, attrs ...attribute.KeyValue) {
	switch {
	case !req.events:
	case len(attrs) == 0:
		req.span.AddEvent(name) // options cost an allocation, even empty ones
	default:
		req.span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

func protocolVersion(res *http.Response) string {
	switch {
	case res.ProtoMajor == 1 && res.ProtoMinor == 1:
		return "1.1"
	case res.ProtoMajor == 2:
		return "2"
	case res.ProtoMajor == 1 && res.ProtoMinor == 0:
		return "1.0"
	default:
		return strings.TrimPrefix(res.Proto, "HTTP/")
	}
}

func alertAttrs(a detectors.Alert) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		vocab.AttrDetector.String(a.Detector),
		vocab.AttrOutcome.String(a.Outcome),
		vocab.AttrLevel.String(a.Level.String()),
		vocab.AttrSummary.String(a.Summary),
		vocab.AttrMessage.String(a.Message),
		vocab.AttrAdvice.String(a.Advice),
	}
	if a.IdleTime > 0 {
		attrs = append(attrs, vocab.AttrIdleTime.Float64(a.IdleTime.Seconds()))
	}
	if a.Threshold > 0 {
		attrs = append(attrs, vocab.AttrThreshold.Float64(a.Threshold.Seconds()))
	}
	if a.Waited > 0 {
		attrs = append(attrs, vocab.AttrWaited.Float64(a.Waited.Seconds()))
	}
	if a.Evidence != "" {
		attrs = append(attrs, vocab.AttrEvidence.String(a.Evidence))
	}
	if a.WireIdle > 0 {
		attrs = append(attrs, vocab.AttrWireIdle.Float64(a.WireIdle.Seconds()))
	}
	return attrs
}

// The verdict of a request is the alert its span shows without opening its
// events: the most severe of its alerts of level WARN or above, the first
// raised among equals (a hang stays the verdict when a warning follows).

// verdict returns the index of the verdict in alerts, or -1 if none is of
// level WARN or above.
func verdict(alerts []detectors.Alert) int {
	v := -1
	for i := range alerts {
		if l := alerts[i].Level; l >= slog.LevelWarn && (v < 0 || l > alerts[v].Level) {
			v = i
		}
	}
	return v
}

// verdictAttrs are the verdict's attributes on a span: the request's (its
// own, or otelhttp's) and an alert span.
func verdictAttrs(a detectors.Alert) []attribute.KeyValue {
	return []attribute.KeyValue{
		vocab.AttrDetector.String(a.Detector),
		vocab.AttrOutcome.String(a.Outcome),
		vocab.AttrLevel.String(a.Level.String()),
		vocab.AttrSummary.String(a.Summary),
	}
}

// statusDescription describes a request's span that ends in an error: the
// verdict's summary first, if it has one, then the error's (redacted) text.
func statusDescription(summary, errText string) string {
	if summary == "" {
		return errText
	}
	return summary + "; " + errText
}
