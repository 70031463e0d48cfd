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
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/vocab"
)

// gotConnEvent adds the got_conn event, with the wait since GetConn and,
// behind a proxy, the host:port the connection was wanted for. req.mu is
// held.
func (req *request) gotConnEvent(info httptrace.GotConnInfo, c detect.Conn) {
	buf := getAttrBuf()
	defer putAttrBuf(buf)
	attrs := req.appendConnAttrs(buf[:0], c)
	if info.Conn != nil {
		if local, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok && local != nil {
			attrs = append(attrs, semconv.NetworkLocalPort(local.Port))
		}
	}
	m := &req.moments
	if wait := c.At.Sub(req.start) - m.getConn; m.getConn > 0 && wait >= 0 {
		attrs = append(attrs, vocab.AttrWaitTime.Float64(wait.Seconds()))
	}
	if m.getConnFor != "" {
		attrs = append(attrs, vocab.AttrHostPort.String(m.getConnFor))
	}
	m.getConn, m.getConnFor = 0, "" // a retry's GetConn comes again
	req.span.AddEvent(vocab.EventGotConn, trace.WithAttributes(attrs...))
}

// attrBufs hold scratch buffers for a recording span's attributes:
// got_conn's, and the span's at the round trip's return, are built in one
// and handed to the span, which copies them (the API's EventConfig and the
// SDK's SetAttributes do), then the buffer goes back, cleared. A buffer
// escapes to the heap through the span's interface: pooled, a request
// allocates none.
var attrBufs = sync.Pool{New: func() any { return new(attrBuf) }}

type attrBuf [14]attribute.KeyValue

func getAttrBuf() *attrBuf { return attrBufs.Get().(*attrBuf) }

func putAttrBuf(b *attrBuf) {
	clear(b[:]) // no host name or URL kept alive by the pool
	attrBufs.Put(b)
}

// moments are what a recording span is told of a request beyond its
// timeline: when a connection was asked for (GetConn), and for which
// host:port, until got_conn says how long the wait was; when the first
// byte of the response came; and which moments are already on the span.
// Guarded by request.mu.
//
// The write (the timeline's WroteRequest) and the first response byte are
// numbers on the span, seconds from its start ([vocab.AttrWroteAt],
// [vocab.AttrFirstByteAt]): an event costs the SDK several times an
// attribute. Where a detector suspects the request (it raised an alert or
// asked to be woken), they are events as well, at their moments, so that
// the hang's story reads on the timeline: got_conn, wrote_request, alert,
// and no first_response_byte.
//
// Moments are kept as times since the request's start (its monotonic
// clock), the cheapest to take and to compare; the write is the
// timeline's.
type moments struct {
	getConn    time.Duration // the last GetConn, until got_conn takes it
	getConnFor string        // its host:port, when not the server's: a proxy's
	firstByte  time.Duration // the last GotFirstResponseByte

	shownWrote, shownFirstByte time.Duration // the moments added as events
}

// suspected reports whether a detector raised an alert on the request, or
// was woken for it (and looks again, or gives its verdict). req.mu is held.
func (req *request) suspected() bool {
	return req.woken || len(req.tl.Alerts) > 0
}

// showMoments adds the write and the first response byte to the span as
// events at their moments, each once. req.mu is held; the span records.
func (req *request) showMoments() {
	m := &req.moments
	if w := req.tl.WroteRequest; !w.IsZero() && w.Sub(req.start) != m.shownWrote {
		req.span.AddEvent(vocab.EventWroteRequest, trace.WithTimestamp(w))
		m.shownWrote = w.Sub(req.start)
	}
	if fb := m.firstByte; fb > 0 && fb != m.shownFirstByte {
		req.span.AddEvent(vocab.EventFirstByte, trace.WithTimestamp(req.start.Add(fb)))
		m.shownFirstByte = fb
	}
}

// wroteEvent adds wrote_request for a write that failed, with the error, or
// on a suspected request. req.mu is held; the span records.
func (req *request) wroteEvent(at time.Time, err error) {
	switch {
	case err != nil:
		req.span.AddEvent(vocab.EventWroteRequest, trace.WithTimestamp(at), trace.WithAttributes(req.appendErr(nil, err)...))
		req.moments.shownWrote = at.Sub(req.start)
	case req.suspected():
		req.showMoments()
	}
}

// lateMoments returns, as the request ends, the moments its span has not
// had as attributes: both, for a round trip that never returned; else a
// write reported after the response (a server that answers before reading
// the whole body). Zero for none. req.mu is held.
func (req *request) lateMoments() (wrote time.Time, first time.Duration) {
	tl := &req.tl
	switch {
	case tl.Response.IsZero():
		return tl.WroteRequest, req.moments.firstByte
	case tl.WroteRequest.After(tl.Response):
		return tl.WroteRequest, 0
	}
	return time.Time{}, 0
}

// appendMomentAttrs appends the attributes of the moments wrote and first
// (since the request's start) that are not zero: seconds from the span's
// start.
func (req *request) appendMomentAttrs(attrs []attribute.KeyValue, wrote time.Time, first time.Duration) []attribute.KeyValue {
	if wrote.IsZero() && first == 0 {
		return attrs
	}
	skew := req.start.Sub(req.spanStart()) // how much later the request started than its span
	if !wrote.IsZero() {
		attrs = append(attrs, vocab.AttrWroteAt.Float64((wrote.Sub(req.start) + skew).Seconds()))
	}
	if first > 0 {
		attrs = append(attrs, vocab.AttrFirstByteAt.Float64((first + skew).Seconds()))
	}
	return attrs
}

// spanStart returns the start of the request's span, as the SDK's spans
// tell it; else (another implementation of the API) the request's, a few
// microseconds later than its own span's, later than otelhttp's by
// otelhttp's own work.
func (req *request) spanStart() time.Time {
	if s, ok := req.span.(interface{ StartTime() time.Time }); ok {
		if t := s.StartTime(); !t.IsZero() {
			return t
		}
	}
	return req.start
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

// setSpanAttributes sets, on the request's own span, url.full and the
// response's attributes, and on any recording span the moments of the
// write and the first response byte, in one call: the span grows its
// attributes once.
func (req *request) setSpanAttributes(out *http.Request, res *http.Response, err error) {
	var full string
	if req.own {
		full = req.t.redact.url(out.URL)
	}
	buf := getAttrBuf()
	defer putAttrBuf(buf)
	req.mu.Lock() // for the moments; a late GotConn may add its event meanwhile
	defer req.mu.Unlock()
	attrs := req.appendMomentAttrs(buf[:0], req.tl.WroteRequest, req.moments.firstByte)
	if !req.own {
		// otelhttp's span: its owner sets the rest.
		if len(attrs) > 0 {
			req.span.SetAttributes(attrs...)
		}
		return
	}
	attrs = append(attrs, semconv.URLFull(full))
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
