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
	"sync/atomic"
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
//
// States are pooled (statePool): their hooks are method values bound to the
// state, and building them costs an allocation each, so they are built once
// per state, not per request. A state goes back to the pool only when no hook
// can fire for its request any more (see recyclable).
type requestState struct {
	mu sync.Mutex
	requestData

	// hooks are bound to this state once, and never changed: a request
	// whose context holds another ClientTrace gets a copy to compose.
	hooks httptrace.ClientTrace
	// traced holds hooks as context values, as httptrace.WithClientTrace
	// puts them in a context; a hookCtx lends them to one request.
	traced context.Context
}

// requestData is the part of a requestState that belongs to one request; it
// is zeroed when the state is taken from the pool.
type requestData struct {
	t       *Transport
	ctx     context.Context // the request's context, holding its span
	span    trace.Span      // nil WithoutSpans
	ownSpan bool            // conntrace started span (else it annotates someone else's)
	events  bool            // span is recording: worth building events for
	host    *hostAttrs      // server.address and server.port: on every metric
	hctx    *hookCtx        // the context the request is sent with; nil when composed

	tl       detectors.Timeline
	conns    [2]detectors.Conn // backing array of tl.Conns: most requests get one
	timer    *time.Timer       // armed only when a detector asks to be woken
	ended    bool
	fromIdle bool // the first connection came straight from the idle pool
	wrote    bool // WroteRequest fired
	putIdle  bool // PutIdleConn fired
	dnsStart time.Time
	dnsName  string // the name looked up: the proxy's, behind a proxy
	tlsStart time.Time
	dials    []dialStart // concurrent dial attempts (happy eyeballs)

	flight *detectors.Flight // pool_overflow: counts this request in flight to an overflowing host; may be nil
	held   *trackedConn      // connection metrics: the connection this request uses, if dialled through WrapDialContext
	// watched is the current connection when the kernel is read for it
	// (a reuse after detectors.KernelIdleGate of idle, on Linux): the
	// timer reads its TCP_INFO again for stale_reuse.
	watched net.Conn
	closed  *deadClose // WithCloseDeadConnections: the connection closed as dead, and why (cure.go)

	// Buffers for attributes the SDK copies: got_conn's (under mu) and the
	// span's at the end of the round trip (on RoundTrip's goroutine).
	connAttrs [12]attribute.KeyValue
	eventOpt  [1]trace.EventOption
	spanAttrs [4]attribute.KeyValue
}

type dialStart struct {
	addr string
	at   time.Time
}

var statePool = sync.Pool{New: func() any {
	s := new(requestState)
	s.hooks = httptrace.ClientTrace{
		GetConn:              s.getConn,
		GotConn:              s.gotConn,
		PutIdleConn:          s.putIdleConn,
		GotFirstResponseByte: s.gotFirstResponseByte,
		DNSStart:             s.dnsStartHook,
		DNSDone:              s.dnsDone,
		ConnectStart:         s.connectStart,
		ConnectDone:          s.connectDone,
		TLSHandshakeStart:    s.tlsHandshakeStart,
		TLSHandshakeDone:     s.tlsHandshakeDone,
		WroteRequest:         s.wroteRequest,
	}
	s.traced = httptrace.WithClientTrace(context.Background(), &s.hooks)
	return s
}}

// withHooks returns the context to send the request with: s.ctx with s's
// hooks in it. When s.ctx holds no ClientTrace yet (the usual case), that
// is a hookCtx; otherwise httptrace.WithClientTrace composes a copy of the
// hooks with the ones already there.
func (s *requestState) withHooks() context.Context {
	if httptrace.ContextClientTrace(s.ctx) == nil {
		s.hctx = &hookCtx{Context: s.ctx, traced: s.traced}
		return s.hctx
	}
	ct := new(httptrace.ClientTrace)
	*ct = s.hooks
	return httptrace.WithClientTrace(s.ctx, ct)
}

// hookCtx is a request's context with conntrace's ClientTrace in it: what
// httptrace.WithClientTrace(ctx, hooks) returns, for one allocation instead
// of five. Once the request has ended it hides the hooks, so a context kept
// past its request (res.Request.Context()) never reaches a state that was
// pooled and serves another request.
type hookCtx struct {
	context.Context                 // the request's own context
	traced          context.Context // the hooks, as context values
	ended           atomic.Bool
}

func (c *hookCtx) Value(key any) any {
	if !c.ended.Load() {
		if v := c.traced.Value(key); v != nil {
			return v
		}
	}
	return c.Context.Value(key)
}

// recyclable reports whether no hook can fire for s's request any more, so
// that s can serve another. s.mu must be held, after the request ended.
//
// net/http calls a request's hooks from its own goroutines until it is done
// with it, and a dial it started can report even later. A request that was
// handed an idle connection straight from the pool started no dial
// (Transport.getConn dials only when queueForIdleConn found none, and only
// such a connection has an idle time), and once its request was written and
// the connection went back to the pool (PutIdleConn), net/http is done with
// it. Anything else (a dial, a retry, a hang timer, HTTP/2, a body closed
// early, hooks composed into someone else's ClientTrace) leaves s to the
// garbage collector.
func (s *requestState) recyclable() bool {
	return s.hctx != nil && s.fromIdle && len(s.tl.Conns) == 1 && s.wrote && s.putIdle && s.timer == nil
}

func (s *requestState) event(name string, attrs ...attribute.KeyValue) {
	switch {
	case !s.events:
	case len(attrs) == 0:
		s.span.AddEvent(name) // options cost an allocation, even empty ones
	default:
		s.span.AddEvent(name, trace.WithAttributes(attrs...))
	}
}

// count adds one to c with the host attributes and extra.
func (s *requestState) count(c metric.Int64Counter, extra ...attribute.KeyValue) {
	if len(extra) == 0 {
		c.Add(s.ctx, 1, s.host.add...)
		return
	}
	c.Add(s.ctx, 1, metric.WithAttributeSet(s.host.with(extra...)))
}

func (s *requestState) getConn(hostPort string) {
	if !s.events {
		return
	}
	if hostPort == s.host.hostPort {
		s.span.AddEvent(EventGetConn, s.host.getConn...)
		return
	}
	s.event(EventGetConn, AttrHostPort.String(hostPort))
}

func (s *requestState) gotConn(info httptrace.GotConnInfo) {
	now := s.now()
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
	} else if info.WasIdle && info.IdleTime >= detectors.KernelIdleGate && info.Conn != nil {
		// stale_reuse: the kernel's view of a connection idle long enough
		// to have been forgotten. A hot reuse costs no system call.
		c.TCP = readTCPInfo(info.Conn, now)
	}
	var watched net.Conn
	if c.TCP.Known {
		watched = info.Conn
	}
	tc := trackedOf(info.Conn)

	s.mu.Lock()
	var alerts []detectors.Alert
	prev := tc
	if !s.ended {
		s.fromIdle = len(s.tl.Conns) == 0 && info.Reused && info.WasIdle
		s.tl.Conns = append(s.tl.Conns, c)
		s.tl.TCP, s.watched = detectors.TCPInfo{}, watched
		alerts = s.observe(now, detectors.StepGotConn)
		if s.events {
			s.gotConnEvent(info, c)
		}
		prev, s.held = s.held, tc
	}
	s.mu.Unlock()
	if prev != tc {
		prev.release() // a retry leaves the first connection
		tc.acquire()
	}

	in := s.t.inst
	if info.Reused {
		s.host.counts.reuses[b2i(info.WasIdle)].Add(1)
	}
	if info.WasIdle {
		in.idleTime.Record(s.ctx, info.IdleTime.Seconds(), s.host.rec...)
	}
	s.raise(alerts)
}

// gotConnEvent adds the got_conn event, its attributes built in s's
// buffers: the SDK copies them. s.mu must be held.
func (s *requestState) gotConnEvent(info httptrace.GotConnInfo, c detectors.Conn) {
	attrs := append(s.connAttrs[:0], AttrReused.Bool(info.Reused), AttrWasIdle.Bool(info.WasIdle),
		AttrIdleTime.Float64(info.IdleTime.Seconds()))
	if c.TCP.Known {
		attrs = append(attrs, AttrWireIdle.Float64(c.TCP.WireIdle().Seconds()))
	}
	if !info.Reused {
		attrs = appendSocketAttrs(attrs, c.Socket)
	}
	switch peer := c.RemoteAddr.(type) {
	case nil:
	case *net.TCPAddr:
		attrs = append(attrs, semconv.NetworkPeerAddress(s.host.peerAddress(peer.IP)), semconv.NetworkPeerPort(peer.Port))
	default:
		attrs = append(attrs, semconv.NetworkPeerAddress(peer.String()))
	}
	if info.Conn != nil {
		if local, ok := info.Conn.LocalAddr().(*net.TCPAddr); ok && local != nil {
			attrs = append(attrs, semconv.NetworkLocalPort(local.Port))
		}
	}
	s.eventOpt[0] = trace.WithAttributes(attrs...)
	s.span.AddEvent(EventGotConn, s.eventOpt[:]...)
	s.eventOpt[0] = nil
}

func (s *requestState) putIdleConn(err error) {
	s.mu.Lock()
	s.putIdle = true
	s.mu.Unlock()
	if err == nil {
		s.host.counts.putIdle[0].Add(1)
		if s.events {
			s.span.AddEvent(EventPutIdleConn, pooledEvent...)
		}
		return
	}
	reason := putIdleReason(err)
	// A full pool is not the request's failure: no error status, no error.type.
	s.host.counts.putIdle[reasonIndex(reason)].Add(1)
	s.event(EventPutIdleConn, AttrOutcome.String(OutcomeRejected), AttrReason.String(reason), AttrError.String(err.Error()))
	if reason == ReasonTooManyIdleForHost {
		s.poolOverflowed()
	}
}

var pooledEvent = []trace.EventOption{trace.WithAttributes(AttrOutcome.String(OutcomePooled))}

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
		s.tl.FirstByte = s.now()
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
		attrs = append(attrs, errorTypeAttr(s.ctx, info.Err))
	}
	// Once per lookup, not per request: no need to cache its attributes.
	s.t.inst.dnsDuration.Record(s.ctx, d.Seconds(), name, attrs...)
	if s.events {
		addrs := make([]string, len(info.Addrs))
		for i, a := range info.Addrs {
			addrs[i] = a.String()
		}
		attrs = append(attrs[:0], AttrDuration.Float64(d.Seconds()), AttrDNSAddresses.StringSlice(addrs))
		s.event(EventDNSDone, s.appendErr(attrs, info.Err)...)
	}
}

// appendErr appends error.type and the error's text when err is not nil.
func (s *requestState) appendErr(attrs []attribute.KeyValue, err error) []attribute.KeyValue {
	if err == nil {
		return attrs
	}
	return append(attrs, errorTypeAttr(s.ctx, err), AttrError.String(err.Error()))
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
		s.count(s.t.inst.dials, errorTypeAttr(s.ctx, err))
	} else {
		s.count(s.t.inst.dials)
	}
	if !s.events {
		return
	}
	attrs := append(peerAttrs(network, addr), AttrDuration.Float64(d.Seconds()))
	s.event(EventConnectDone, s.appendErr(attrs, err)...)
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
	s.event(EventTLSDone, s.appendErr(attrs, err)...)
}

func (s *requestState) wroteRequest(info httptrace.WroteRequestInfo) {
	now := s.now()
	s.mu.Lock()
	var alerts []detectors.Alert
	if !s.ended {
		s.tl.WroteRequest, s.wrote = now, true
		alerts = s.observe(now, detectors.StepWroteRequest)
	}
	s.mu.Unlock()
	s.event(EventWroteRequest, s.appendErr(nil, info.Err)...)
	s.raise(alerts)
}

// now reads the monotonic clock only: time.Now reads the wall clock too,
// and the request's start already has it. s.tl.Start never changes while
// hooks can run.
func (s *requestState) now() time.Time {
	return s.tl.Start.Add(time.Since(s.tl.Start))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
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
	now := s.now()
	s.mu.Lock()
	var alerts []detectors.Alert
	if !s.ended {
		if s.watched != nil {
			s.tl.TCP = readTCPInfo(s.watched, now)
		}
		alerts = s.observe(now, detectors.StepTimer)
	}
	s.mu.Unlock()
	s.raise(alerts)
	s.closeDead(alerts) // WithCloseDeadConnections (cure.go)
}

// response shows the detectors the returned round trip, inside RoundTrip:
// a span made outside (otelhttp's) may end as soon as RoundTrip returns.
func (s *requestState) response(req *http.Request, res *http.Response, err error) {
	now := s.now()
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
	now := s.now()
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
	if s.hctx != nil {
		s.hctx.ended.Store(true)
	}
	resends := len(s.tl.Conns) - 1
	notReused := notReusedReason(&s.tl)
	held := s.held
	recycle := s.recyclable()
	s.mu.Unlock()

	s.raise(alerts)
	s.countNotReused(notReused)
	s.flight.End()
	held.release()
	s.host.counts.active.Add(-1)
	if s.ownSpan {
		if resends > 0 {
			s.span.SetAttributes(semconv.HTTPRequestResendCount(resends))
		}
		if err != nil {
			s.span.SetAttributes(errorTypeAttr(s.ctx, err))
			s.span.SetStatus(codes.Error, err.Error())
		}
		s.span.End()
	}
	if recycle {
		s.requestData = requestData{}
		statePool.Put(s)
	}
}
