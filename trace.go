package conntrace

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
)

// requestState is everything conntrace keeps about one request: its span,
// its metric attributes and the timeline its httptrace hooks fill.
//
// The hooks run on several goroutines (the caller's, the transport's dialer
// and read loop, a hang timer), and some of them fire after the request has
// ended: a dial that outlives a cancelled request still reports ConnectDone.
// So the timeline lives behind mu, and once ended is set it no longer
// changes; metrics are still counted, and events on an ended span are
// dropped by the SDK.
type requestState struct {
	t       *Transport
	ctx     context.Context // the request's context, holding its span
	span    trace.Span      // nil WithoutSpans
	ownSpan bool            // conntrace started span (else it annotates someone else's)
	events  bool            // span is recording: worth building events for
	host    *hostAttrs      // server.address and server.port: on every metric

	mu       sync.Mutex
	tl       detectors.Timeline
	conns    [2]detectors.Conn // backing array of tl.Conns: most requests get one
	timer    *time.Timer       // armed only when a detector asks to be woken
	ended    bool
	dnsStart time.Time
	dnsName  string // the name looked up: the proxy's, behind a proxy
	tlsStart time.Time
	dials    []dialStart // concurrent dial attempts (happy eyeballs)

	flight *detectors.Flight // pool_overflow: counts this request in flight to an overflowing host; may be nil
	held   *trackedConn      // connection metrics: the connection this request uses, if dialled through WrapDialContext
}

type dialStart struct {
	addr string
	at   time.Time
}

// clientTrace returns the hooks that fill s. The hooks that only make span
// events are left out when the span is not recording: each costs an
// allocation per request.
func (s *requestState) clientTrace() *httptrace.ClientTrace {
	ct := &httptrace.ClientTrace{
		GotConn:              s.gotConn,
		PutIdleConn:          s.putIdleConn,
		GotFirstResponseByte: s.gotFirstResponseByte,
		DNSStart:             s.dnsStartHook,
		DNSDone:              s.dnsDone,
		ConnectDone:          s.connectDone,
		WroteRequest:         s.wroteRequest,
	}
	if s.events {
		ct.GetConn = s.getConn
		ct.ConnectStart = s.connectStart
		ct.TLSHandshakeStart = s.tlsHandshakeStart
		ct.TLSHandshakeDone = s.tlsHandshakeDone
	}
	return ct
}

func (s *requestState) event(name string, attrs ...attribute.KeyValue) {
	if s.events {
		s.span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

// count adds one to c with the host attributes and extra.
func (s *requestState) count(c metric.Int64Counter, extra ...attribute.KeyValue) {
	if len(extra) == 0 {
		c.Add(s.ctx, 1, metric.WithAttributeSet(s.host.set))
		return
	}
	c.Add(s.ctx, 1, metric.WithAttributes(append(s.host.kvs[:], extra...)...))
}

func (s *requestState) getConn(hostPort string) {
	s.event(EventGetConn, AttrHostPort.String(hostPort))
}

func (s *requestState) gotConn(info httptrace.GotConnInfo) {
	now := time.Now()
	c := detectors.Conn{At: now, Reused: info.Reused, WasIdle: info.WasIdle, IdleTime: info.IdleTime}
	var peer net.Addr
	if info.Conn != nil {
		if peer = info.Conn.RemoteAddr(); isNilTCPAddr(peer) {
			peer = nil // a custom net.Conn may return a typed nil
		}
		c.RemoteAddr = peer
	}
	if !info.Reused {
		c.Socket = socketOptions(info.Conn) // keepalive_gap: once per new connection
		s.dialed()                          // pool_overflow
	}
	tc := trackedOf(info.Conn)

	s.mu.Lock()
	var alerts []detectors.Alert
	prev := tc
	if !s.ended {
		s.tl.Conns = append(s.tl.Conns, c)
		alerts = s.observe(now, detectors.StepGotConn)
		prev, s.held = s.held, tc
	}
	s.mu.Unlock()
	if prev != tc {
		prev.release() // a retry leaves the first connection
		tc.acquire()
	}

	in := s.t.inst
	if info.Reused {
		s.count(in.reuses, AttrWasIdle.Bool(info.WasIdle))
	}
	if info.WasIdle {
		in.idleTime.Record(s.ctx, info.IdleTime.Seconds(), metric.WithAttributeSet(s.host.set))
	}
	if s.events {
		attrs := make([]attribute.KeyValue, 0, 6)
		attrs = append(attrs, AttrReused.Bool(info.Reused), AttrWasIdle.Bool(info.WasIdle),
			AttrIdleTime.Float64(info.IdleTime.Seconds()))
		if !info.Reused {
			attrs = appendSocketAttrs(attrs, c.Socket)
		}
		attrs = appendAddr(attrs, peer, semconv.NetworkPeerAddress, semconv.NetworkPeerPort)
		if info.Conn != nil {
			if local, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok && local != nil {
				attrs = append(attrs, semconv.NetworkLocalPort(local.Port))
			}
		}
		s.event(EventGotConn, attrs...)
	}
	s.raise(alerts)
}

// appendAddr appends a's address and port, split for a TCP or UDP address
// and whole otherwise.
func appendAddr(attrs []attribute.KeyValue, a net.Addr, addrKV func(string) attribute.KeyValue, portKV func(int) attribute.KeyValue) []attribute.KeyValue {
	switch a := a.(type) {
	case nil:
		return attrs
	case *net.TCPAddr:
		return append(attrs, addrKV(a.IP.String()), portKV(a.Port))
	default:
		return append(attrs, addrKV(a.String()))
	}
}

func (s *requestState) putIdleConn(err error) {
	if err == nil {
		s.count(s.t.inst.putIdle, AttrOutcome.String(OutcomePooled))
		s.event(EventPutIdleConn, AttrOutcome.String(OutcomePooled))
		return
	}
	reason := putIdleReason(err)
	// A full pool is not the request's failure: no error status, no error.type.
	s.count(s.t.inst.putIdle, AttrOutcome.String(OutcomeRejected), AttrReason.String(reason))
	s.event(EventPutIdleConn, AttrOutcome.String(OutcomeRejected), AttrReason.String(reason), AttrError.String(err.Error()))
	if reason == ReasonTooManyIdleForHost {
		s.poolOverflowed()
	}
}

// putIdleReason classifies a PutIdleConn error. net/http does not export
// these errors, so their texts (stable since Go 1.7) are matched.
func putIdleReason(err error) string {
	msg := err.Error()
	switch {
	case strings.HasSuffix(msg, "too many idle connections for host"):
		return ReasonTooManyIdleForHost
	case strings.HasSuffix(msg, "too many idle connections"):
		return ReasonTooManyIdle
	case strings.HasSuffix(msg, "connection is in bad state"):
		return ReasonBroken
	case strings.Contains(msg, "CloseIdleConnections"), strings.Contains(msg, "readLoop exiting"):
		return ReasonClosing
	default:
		return ReasonOther
	}
}

func (s *requestState) gotFirstResponseByte() {
	s.mu.Lock()
	if !s.ended {
		s.tl.FirstByte = time.Now()
	}
	s.mu.Unlock()
	s.event(EventFirstByte)
}

func (s *requestState) dnsStartHook(info httptrace.DNSStartInfo) {
	s.mu.Lock()
	s.dnsStart, s.dnsName = time.Now(), info.Host
	s.mu.Unlock()
	s.event(EventDNSStart, semconv.DNSQuestionName(info.Host))
}

func (s *requestState) dnsDone(info httptrace.DNSDoneInfo) {
	s.mu.Lock()
	d, name := time.Since(s.dnsStart), s.dnsName
	s.mu.Unlock()
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, s.host.kvs[:]...)
	if info.Err != nil {
		attrs = append(attrs, semconv.ErrorType(info.Err))
	}
	s.t.inst.dnsDuration.Record(s.ctx, d.Seconds(), name, attrs...)
	if s.events {
		addrs := make([]string, len(info.Addrs))
		for i, a := range info.Addrs {
			addrs[i] = a.String()
		}
		attrs = append(attrs[:0], AttrDuration.Float64(d.Seconds()), AttrDNSAddresses.StringSlice(addrs))
		s.event(EventDNSDone, appendErr(attrs, info.Err)...)
	}
}

// appendErr appends error.type and the error's text when err is not nil.
func appendErr(attrs []attribute.KeyValue, err error) []attribute.KeyValue {
	if err == nil {
		return attrs
	}
	return append(attrs, semconv.ErrorType(err), AttrError.String(err.Error()))
}

func (s *requestState) connectStart(network, addr string) {
	s.mu.Lock()
	s.dials = append(s.dials, dialStart{addr: addr, at: time.Now()})
	s.mu.Unlock()
	s.event(EventConnectStart, peerAttrs(network, addr)...)
}

func (s *requestState) connectDone(network, addr string, err error) {
	var d time.Duration
	s.mu.Lock()
	for i, ds := range s.dials {
		if ds.addr == addr {
			d = time.Since(ds.at)
			s.dials = append(s.dials[:i], s.dials[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	if err != nil {
		s.count(s.t.inst.dials, semconv.ErrorType(err))
	} else {
		s.count(s.t.inst.dials)
	}
	if !s.events {
		return
	}
	attrs := append(peerAttrs(network, addr), AttrDuration.Float64(d.Seconds()))
	s.event(EventConnectDone, appendErr(attrs, err)...)
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

func (s *requestState) tlsHandshakeStart() {
	s.mu.Lock()
	s.tlsStart = time.Now()
	s.mu.Unlock()
	s.event(EventTLSStart)
}

func (s *requestState) tlsHandshakeDone(state tls.ConnectionState, err error) {
	s.mu.Lock()
	d := time.Since(s.tlsStart)
	s.mu.Unlock()
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs, AttrDuration.Float64(d.Seconds()), semconv.TLSResumed(state.DidResume))
	if state.Version != 0 {
		// tls.VersionName gives "TLS 1.3"; semconv wants "1.3".
		attrs = append(attrs, semconv.TLSProtocolVersion(strings.TrimPrefix(tls.VersionName(state.Version), "TLS ")))
	}
	s.event(EventTLSDone, appendErr(attrs, err)...)
}

func (s *requestState) wroteRequest(info httptrace.WroteRequestInfo) {
	now := time.Now()
	s.mu.Lock()
	var alerts []detectors.Alert
	if !s.ended {
		s.tl.WroteRequest = now
		alerts = s.observe(now, detectors.StepWroteRequest)
	}
	s.mu.Unlock()
	s.event(EventWroteRequest, appendErr(nil, info.Err)...)
	s.raise(alerts)
}

func isNilTCPAddr(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t == nil
}

// observe shows the timeline to the detectors, records their alerts on the
// timeline and the span, and arms the timer they ask for. s.mu must be held:
// holding it while the alert events are added means finish cannot end the
// span between an alert and its event.
func (s *requestState) observe(now time.Time, step detectors.Step) []detectors.Alert {
	alerts, wake := s.t.detector.Observe(now, step, &s.tl)
	s.tl.Alerts = append(s.tl.Alerts, alerts...)
	if s.events {
		for _, a := range alerts {
			s.span.AddEvent(EventAlert, trace.WithTimestamp(a.Time), trace.WithAttributes(alertAttrs(a)...))
		}
	}
	if wake > 0 && step != detectors.StepEnd {
		if s.timer == nil {
			s.timer = time.AfterFunc(wake, s.onTimer)
		} else {
			s.timer.Reset(wake)
		}
	}
	return alerts
}

// onTimer runs on the timer's goroutine, so a hang is reported while the
// request still hangs.
func (s *requestState) onTimer() {
	s.mu.Lock()
	var alerts []detectors.Alert
	if !s.ended {
		alerts = s.observe(time.Now(), detectors.StepTimer)
	}
	s.mu.Unlock()
	s.raise(alerts)
}

// response shows the detectors the returned round trip, inside RoundTrip:
// a span made outside (otelhttp's) may end as soon as RoundTrip returns.
func (s *requestState) response(req *http.Request, res *http.Response, err error) {
	now := time.Now()
	s.mu.Lock()
	var alerts []detectors.Alert
	if !s.ended {
		s.tl.Response, s.tl.Err = now, err
		noteResponse(&s.tl, req, res)
		alerts = s.observe(now, detectors.StepResponse)
	}
	s.mu.Unlock()
	s.raise(alerts)
}

// finish ends the request once: the detectors' last look, the active
// request gauge, and the span if conntrace started it. err is the round
// trip's error or the response body's read error. Later calls do nothing.
func (s *requestState) finish(err error) {
	now := time.Now()
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.tl.End = now
	alerts := s.observe(now, detectors.StepEnd)
	s.ended = true
	if s.timer != nil {
		s.timer.Stop()
	}
	resends := len(s.tl.Conns) - 1
	notReused := notReusedReason(&s.tl)
	held := s.held
	s.mu.Unlock()

	s.raise(alerts)
	s.countNotReused(notReused)
	s.flight.End()
	held.release()
	s.t.inst.activeRequests.AddSet(s.ctx, -1, s.host.set)
	if !s.ownSpan {
		return
	}
	if resends > 0 {
		s.span.SetAttributes(semconv.HTTPRequestResendCount(resends))
	}
	if err != nil {
		s.span.SetAttributes(semconv.ErrorType(err))
		s.span.SetStatus(codes.Error, err.Error())
	}
	s.span.End(trace.WithTimestamp(now))
}
