// This file holds what conntrace keeps of one request (request) and the
// httptrace.ClientTrace hooks that fill its timeline, with step and
// observe, where the timeline meets the detectors.

package conntrace

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/vocab"
)

// request is what conntrace keeps of one request, from RoundTrip to the end
// of its response body: its span, its host's attributes, and the timeline
// its httptrace hooks fill for the detectors.
//
// Every request has its own, and its hooks are bound to it. A hook called
// late, by a base transport that mirrors or hedges the request with its
// context, or by code that kept the request's ClientTrace, finds its own
// request ended and changes nothing; it can never reach another request.
// That is why requests are not pooled: a pooled one would serve the next
// request while old hooks still pointed at it, and nothing a hook is given
// tells two requests apart.
//
// A request is also the context it is sent with (Value): the caller's
// context with the request's hooks in it, at no allocation more.
//
// The hooks run on several goroutines (the caller's, the transport's dialer
// and read loop, the detectors' timer), hence mu. It guards the timeline
// and the setting of ended, and is never held while user code runs (an
// alert handler, a logger) or while the span is ended.
type request struct {
	context.Context // the caller's; Value adds the hooks

	t        *Transport
	url      *url.URL // the caller's, which is sent: see errorText
	host     *hostAttrs
	spanCtx  context.Context // the caller's context with the request's span: for metrics and propagation
	span     trace.Span      // nil WithoutSpans, and for an unsampled parent WithParentBasedSampling
	own      bool            // conntrace started span; else it annotates its owner's (otelhttp's)
	filtered bool            // a WithFilter filter rejected it: no span, no injection, no request metrics (user.go)
	outer    bool            // an instrumentation outside (otelhttp) made this request's client span, and records its duration
	events   bool            // span is recording: events are worth building
	start    time.Time       // with the wall clock; later moments read only the monotonic one
	composed bool            // the caller's context had a ClientTrace: sent with httptrace's context instead

	hooks   httptrace.ClientTrace // bound to this request in newRequest, per what it records
	carrier headerCarrier         // the headers RoundTrip sends, when it injects the trace context
	dial    atomic.Pointer[dialing]

	ended atomic.Bool // set under mu, and read without it by Value

	mu        sync.Mutex
	tl        detect.Timeline
	conns     [1]detect.Conn // backing array of tl.Conns: most requests get one
	timer     *wakeTimer     // armed only when a detector asks to be woken
	woken     bool           // the timer has fired: the request outlived a detector's first look
	watched   net.Conn       // the connection the timer reads TCP_INFO of again (stale_reuse)
	closed    *deadClose     // WithCloseDeadConnections: the connection closed as dead, and why (cure.go)
	held      *trackedConn   // connection metrics: the connection in use, if dialled through WrapDialContext
	alertRoot trace.Span     // the request's first alert span, parent of later ones (alerts.go)
	moments   moments        // a recording span's: what becomes its numbers, or events (events.go)

	// The stream watcher's (streams.go).
	conn     net.Conn       // the current connection, from GotConn
	joined   uint32         // the request's slot in the watcher, + 1; 0 if none
	sock     *streamSocket  // what the watcher changed on the socket, to put back; nil if nothing
	progress streamProgress // the response body's reads (body.go)
	wait     *streamWait    // the watcher's own, from its first look
}

// dialing is what a request's dial and TLS hooks keep. Most requests, on a
// reused connection, make no dial: their request has none (dialState).
type dialing struct {
	once sync.Once
	ctx  context.Context // the DNS and connect hooks, where net.Dialer looks for them (Value)

	// Guarded by request.mu.
	dnsStart   time.Time
	dnsName    string // the name looked up: the proxy's, behind a proxy
	tlsStart   time.Time
	dialStarts []dialStart // concurrent dial attempts (happy eyeballs)
}

// dialState returns the request's dialing, made at the first call.
func (req *request) dialState() *dialing {
	if d := req.dial.Load(); d != nil {
		return d
	}
	if d := new(dialing); req.dial.CompareAndSwap(nil, d) {
		return d
	}
	return req.dial.Load()
}

type dialStart struct {
	addr string
	at   time.Time
}

// newRequest starts (or finds) r's span and binds its hooks.
func (t *Transport) newRequest(r *http.Request) *request {
	req := &request{Context: r.Context(), t: t, url: r.URL, start: time.Now()}
	req.spanCtx = req.Context
	req.host = t.hosts.get(r.URL, req.start)
	req.tl = detect.Timeline{Host: req.host.host, Port: req.host.port, Method: method(r.Method), Start: req.start}
	req.tl.Conns = req.conns[:0]
	req.observe(req.start, detect.StepStart) // not shared yet: no lock
	parent := trace.SpanFromContext(req.Context)
	switch {
	case len(t.filters) > 0 && t.filtered(r):
		// Filtered out: nothing of the request's own (WithFilter says what
		// it still feeds).
		req.filtered = true
	case t.madeOutside(parent, r.Header):
		// otelhttp (or the caller) made the client span for this request,
		// and records its duration: a second span or duration would only
		// repeat it. A recording one gets conntrace's events.
		req.outer = true
		if t.tracer != nil && parent.IsRecording() {
			req.span, req.events = parent, true
			if r.URL.RawQuery != "" && t.redact.hasSensitive(r.URL.RawQuery) {
				// otelhttp removes credentials from url.full but no query
				// value: a presigned URL's signature would stay on its span.
				parent.SetAttributes(semconv.URLFull(t.redact.url(r.URL)))
			}
		}
	case t.tracer != nil:
		req.startSpan(r)
	}

	// Only what is recorded is hooked: a span's events need every hook; the
	// detectors and metrics need GotConn and PutIdleConn, an alert span
	// (so any tracing) the timeline's WroteRequest, and, when a connection
	// is dialled, the DNS and connect hooks (bound then: Value). Each hook
	// bound costs an allocation.
	h := &req.hooks
	h.GotConn, h.PutIdleConn = req.gotConn, req.putIdleConn
	if t.tracer != nil {
		h.WroteRequest = req.wroteRequest
	}
	if req.events {
		h.GetConn, h.GotFirstResponseByte = req.getConn, req.gotFirstResponseByte
		h.TLSHandshakeStart, h.TLSHandshakeDone = req.tlsHandshakeStart, req.tlsHandshakeDone
	}
	if httptrace.ContextClientTrace(req.Context) != nil || clientTraceKey == nil {
		// Someone else's hooks are in the context (httptrace's own
		// ClientTrace, otelhttptrace): httptrace composes ours with them.
		req.composed = true
		h.DNSStart, h.DNSDone, h.ConnectStart, h.ConnectDone = req.dnsStartHook, req.dnsDone, req.connectStart, req.connectDone
	}
	return req
}

// sendCtx is the context to send the request with: the request itself,
// which holds its hooks; or, where the caller's context has hooks of its
// own, httptrace's composition of both.
func (req *request) sendCtx() context.Context {
	if req.composed {
		return httptrace.WithClientTrace(req.Context, &req.hooks)
	}
	return req
}

// Value answers the key under which net/http looks for a ClientTrace with
// the request's hooks, and the key under which net.Dialer looks for its
// own hooks with the request's DNS and connect hooks, bound at that first
// lookup: only a request that dials pays for them. Every other key is the
// caller's context's. Once the request has ended the hooks are no longer
// there: a context kept past its request (res.Request.Context()) and used
// for another carries no hooks of this one.
func (req *request) Value(key any) any {
	if key == clientTraceKey {
		if req.ended.Load() {
			return nil
		}
		return &req.hooks
	}
	if key != nil && dialTraceKeys.Value(key) != nil {
		if req.ended.Load() {
			return nil
		}
		d := req.dialState()
		d.once.Do(func() {
			d.ctx = httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				DNSStart: req.dnsStartHook, DNSDone: req.dnsDone, ConnectStart: req.connectStart, ConnectDone: req.connectDone,
			})
		})
		return d.ctx.Value(key)
	}
	return req.Context.Value(key)
}

// clientTraceKey is the key httptrace keeps a ClientTrace under, found by
// asking for one; dialTraceKeys is a context with every key
// httptrace.WithClientTrace sets for hooks with DNS and connect hooks.
// Should httptrace ever be asked differently, clientTraceKey is nil and
// every request goes the composed way (sendCtx): slower, not wrong.
var clientTraceKey, dialTraceKeys = func() (any, context.Context) {
	var rec keyRecorder
	httptrace.ContextClientTrace(&rec)
	hooks := &httptrace.ClientTrace{ConnectStart: func(string, string) {}}
	probe := httptrace.WithClientTrace(context.Background(), hooks)
	if rec.key == nil || probe.Value(rec.key) != hooks {
		return nil, probe
	}
	return rec.key, probe
}()

// keyRecorder is a context that remembers the key it was last asked for.
type keyRecorder struct {
	context.Context // nil: only Value is called
	key             any
}

func (k *keyRecorder) Value(key any) any {
	k.key = key
	return nil
}

// now reads the monotonic clock only: time.Now reads the wall clock too,
// and the request's start already has it.
func (req *request) now() time.Time {
	return req.start.Add(time.Since(req.start))
}

// step is one moment of the request's life, shown to the detectors that
// watch it. Under the lock, note records it on the timeline; the detectors'
// alerts go on the span and the timer they ask for is armed; once the lock
// is released the alerts are raised (a handler may take its time). After
// the request has ended it does nothing, the hook that calls it is late,
// except at StepPoolFull: see [detect.StepPoolFull].
func (req *request) step(now time.Time, step detect.Step, note func(tl *detect.Timeline)) {
	req.mu.Lock()
	ended := req.ended.Load()
	if ended && step != detect.StepPoolFull {
		req.mu.Unlock()
		return
	}
	if note != nil && !ended {
		note(&req.tl)
	}
	alerts := req.observe(now, step)
	req.mu.Unlock()
	req.raise(alerts)
}

// observe shows the timeline to the detectors that watch step, records
// their alerts on the timeline and the span (events, and the request's
// verdict: events.go), and arms the timer they ask for. req.mu must be
// held: holding it while the alert events are added means end cannot end
// the span between an alert and its event. Once the request has ended, the
// alerts are only returned, to be raised.
func (req *request) observe(now time.Time, step detect.Step) []detectors.Alert {
	alerts, wake := req.t.watchers[step].Observe(now, step, &req.tl)
	if req.ended.Load() {
		return alerts
	}
	arm := wake > 0 && step != detect.StepEnd
	if req.events && arm && req.woken {
		// A detector woke for the request and still suspects it: its
		// moments so far become events on its span's timeline (noteAlerts
		// does the same for an alert; showing them twice adds nothing). A
		// timer armed and stopped unfired (stale_reuse's check of every
		// reuse after a second of idle, answered in time) is no suspicion.
		req.showMoments()
	}
	req.noteAlerts(alerts)
	if arm {
		if req.timer == nil {
			req.timer = req.t.takeWakeTimer()
			req.timer.req = req
		}
		req.timer.arms++
		req.timer.t.Reset(wake)
	}
	return alerts
}

// wakeTimer wakes a request for its detectors (onTimer), and keeps the
// kernel's reading of the connection at hand-out that stale_reuse compares
// later ones with (gotConn). stale_reuse asks for both on every reuse after
// a second of idle, to read the kernel again past two retransmission
// timeouts; most such requests are answered first, and their timer is
// stopped unfired.
//
// Such a timer, armed at most once and stopped before it fired (Stop
// returned true: its function will not run), on a request with no alert,
// goes back to a pool for the next request that asks, its reading no
// longer pointed to by the timeline: a pooled timer cannot wake a request
// it was not armed for, and nothing of one request reads another's
// reading. One armed again (it may have fired, its function not yet run),
// or on a request with an alert (whose alert span may replay the
// connection later), stays with its request and goes to the garbage
// collector. The pool is the Transport's, so a timer serves only requests
// of the Transport, made where it was made (a test's synctest bubble keeps
// its own).
type wakeTimer struct {
	t    *time.Timer
	req  *request          // set before the timer is first armed, and not changed while it may fire
	arms int               // times armed for req; guarded by req.mu
	tcp  detectors.TCPInfo // the hand-out reading of req's connection (detect.Conn.TCP)
}

// takeWakeTimer returns a stopped timer bound to no request: a pooled one,
// or a new one.
func (t *Transport) takeWakeTimer() *wakeTimer {
	if w, ok := t.wakeTimers.Get().(*wakeTimer); ok {
		return w
	}
	w := new(wakeTimer)
	w.t = time.AfterFunc(time.Hour, w.fire)
	w.t.Stop()
	return w
}

func (w *wakeTimer) fire() { w.req.onTimer() }

// release stops the timer of an ending request, and pools it if it never
// fired and may serve another request (above). req.mu is held.
func (w *wakeTimer) release() {
	req := w.req
	// Never armed, or armed once and stopped before it fired: no function
	// of it runs, or will.
	unfired := w.arms == 0 || (w.arms == 1 && w.t.Stop())
	if !unfired || len(req.tl.Alerts) > 0 {
		w.t.Stop()
		return
	}
	for i := range req.tl.Conns {
		if req.tl.Conns[i].TCP == &w.tcp {
			req.tl.Conns[i].TCP = nil
		}
	}
	*w = wakeTimer{t: w.t}
	req.t.wakeTimers.Put(w)
}

// noteAlerts records alerts on the timeline and, when the span records,
// on the span: the request's moments so far as events, then an event per
// alert, and the verdict as the span's attributes, set as it is given,
// while a span made outside (otelhttp's) is still open. req.mu is held.
func (req *request) noteAlerts(alerts []detectors.Alert) {
	if len(alerts) == 0 {
		return
	}
	was := verdict(req.tl.Alerts)
	req.tl.Alerts = append(req.tl.Alerts, alerts...)
	if !req.events {
		return
	}
	req.showMoments()
	for _, a := range alerts {
		req.span.AddEvent(vocab.EventAlert, trace.WithTimestamp(a.Time), trace.WithAttributes(alertAttrs(a)...))
	}
	if v := verdict(req.tl.Alerts); v != was {
		req.span.SetAttributes(verdictAttrs(req.tl.Alerts[v])...)
	}
}

// onTimer runs on the timer's goroutine, so a hang is reported while the
// request still hangs. A connection the kernel is asked about is read
// again first.
func (req *request) onTimer() {
	now := req.now()
	req.mu.Lock()
	if req.ended.Load() {
		req.mu.Unlock()
		return
	}
	req.woken = true
	if req.watched != nil {
		req.tl.TCP = sockopt.TCPInfo(req.watched, now)
	}
	alerts := req.observe(now, detect.StepTimer)
	req.mu.Unlock()
	req.raise(alerts) // and, WithCloseDeadConnections, closes a dead connection (cure.go)
}

// The httptrace hooks of a request (newRequest binds them). Each is safe to
// call at any time, from any goroutine, any number of times: after the
// request has ended it changes nothing of its timeline, and events on an
// ended span are dropped. What a hook reports of a connection (a dial, a
// put-idle outcome) is still counted: those are facts about the connection,
// whenever they are reported.

// gotConn: the request was handed a connection. This is where the
// detectors learn which, and how it had been idle: the kernel's TCP_INFO
// for a reuse after a second or more of idle (stale_reuse), the socket's
// keep-alive options for a new one (keepalive_gap).
func (req *request) gotConn(info httptrace.GotConnInfo) {
	now := req.now()
	c := detect.Conn{At: now, Reused: info.Reused, WasIdle: info.WasIdle, IdleTime: info.IdleTime}
	if info.Conn != nil {
		if peer := info.Conn.RemoteAddr(); !isNilTCPAddr(peer) { // a custom net.Conn may return a typed nil
			c.RemoteAddr = peer
		}
	}
	var watched net.Conn
	var kernel *wakeTimer // holds the reading, and the timer stale_reuse will arm
	switch {
	case !info.Reused:
		c.Socket = sockopt.Options(info.Conn) // keepalive_gap: once per new connection
	case info.WasIdle && info.IdleTime >= detect.KernelIdleGate && info.Conn != nil:
		// stale_reuse: the kernel's view of a connection idle long enough
		// to have been forgotten. A hot reuse costs no system call.
		kernel = req.t.takeWakeTimer()
		if sockopt.ReadTCPInfo(info.Conn, now, &kernel.tcp) {
			watched = info.Conn
		} else {
			req.t.wakeTimers.Put(kernel)
			kernel = nil
		}
	}
	tc := trackedOf(info.Conn)

	prev := tc
	req.step(now, detect.StepGotConn, func(tl *detect.Timeline) {
		switch {
		case kernel == nil:
		case req.timer == nil:
			// The request's timer from here on (observe arms it).
			kernel.req, req.timer = req, kernel
			c.TCP = &kernel.tcp
		default:
			// A second connection for the request (a retry): it has its
			// timer already.
			ti := kernel.tcp
			c.TCP = &ti
			req.t.wakeTimers.Put(kernel)
		}
		tl.Conns = append(tl.Conns, c)
		tl.TCP, req.watched = nil, watched
		prev, req.held = req.held, tc
		req.conn = info.Conn
		if req.joined == 0 {
			req.joined = req.t.streams.join(req) // a wait for data is watched from here on
		}
		if req.events {
			req.gotConnEvent(info, c)
		}
	})
	if prev != tc {
		prev.release() // a retry leaves the first connection
		tc.acquire()
	}
	if info.Reused {
		req.host.counts.reuses[b2i(info.WasIdle)].Add(1)
	}
	if info.WasIdle {
		req.t.inst.idleTime.Record(req.spanCtx, info.IdleTime.Seconds(), req.host.rec...)
	}
}

// putIdleConn: net/http returned the connection to its idle pool, or the
// pool refused it. A full pool is not the request's failure: no error
// status, no error.type; pool_overflow hears of it.
func (req *request) putIdleConn(err error) {
	if err == nil {
		req.host.counts.putIdle[0].Add(1)
		if req.events {
			// Pooled: the event without attributes, which costs the SDK no
			// copy (a refusal says so, and why).
			req.span.AddEvent(vocab.EventPutIdleConn)
		}
		return
	}
	reason := putIdleReason(err)
	req.host.counts.putIdle[reasonIndex(reason)].Add(1)
	req.event(vocab.EventPutIdleConn, vocab.AttrOutcome.String(vocab.OutcomeRejected), vocab.AttrReason.String(reason), vocab.AttrError.String(req.errorText(err)))
	if reason != vocab.ReasonTooManyIdleForHost {
		return
	}
	req.step(req.now(), detect.StepPoolFull, nil)
}

// putIdleReason classifies a PutIdleConn error. net/http does not export
// these errors, so their texts (stable since Go 1.7) are matched.
func putIdleReason(err error) string {
	msg := err.Error()
	switch {
	case strings.HasSuffix(msg, "too many idle connections for host"):
		return vocab.ReasonTooManyIdleForHost
	case strings.HasSuffix(msg, "too many idle connections"):
		return vocab.ReasonTooManyIdle
	case strings.HasSuffix(msg, "connection is in bad state"):
		return vocab.ReasonBroken
	case strings.Contains(msg, "CloseIdleConnections"), strings.Contains(msg, "readLoop exiting"):
		return vocab.ReasonClosing
	default:
		return vocab.ReasonOther
	}
}

// wroteRequest: the request was written (net/http has yet to flush it).
func (req *request) wroteRequest(info httptrace.WroteRequestInfo) {
	now := req.now()
	req.mu.Lock()
	if !req.ended.Load() {
		req.tl.WroteRequest = now
		if req.events {
			req.wroteEvent(now, info.Err)
		}
	}
	req.mu.Unlock()
}

// The hooks below are bound only for a recording span.

// getConn: a connection is wanted; got_conn says how long the wait was.
func (req *request) getConn(hostPort string) {
	since := time.Since(req.start)
	req.mu.Lock()
	if !req.ended.Load() {
		m := &req.moments
		m.getConn, m.getConnFor = since, ""
		if hostPort != req.host.hostPort {
			m.getConnFor = hostPort // a proxy's
		}
	}
	req.mu.Unlock()
}

func (req *request) gotFirstResponseByte() {
	since := time.Since(req.start)
	req.mu.Lock()
	if !req.ended.Load() {
		req.moments.firstByte = since
		if req.suspected() {
			req.showMoments()
		}
	}
	req.mu.Unlock()
}

func (req *request) tlsHandshakeStart() {
	d := req.dialState()
	req.mu.Lock()
	d.tlsStart = time.Now()
	req.mu.Unlock()
	req.event(vocab.EventTLSStart)
}

func (req *request) tlsHandshakeDone(state tls.ConnectionState, err error) {
	ds := req.dialState()
	req.mu.Lock()
	d := time.Since(ds.tlsStart)
	req.mu.Unlock()
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs, vocab.AttrDuration.Float64(d.Seconds()), semconv.TLSResumed(state.DidResume))
	if state.Version != 0 {
		// tls.VersionName gives "TLS 1.3"; semconv wants "1.3".
		attrs = append(attrs, semconv.TLSProtocolVersion(strings.TrimPrefix(tls.VersionName(state.Version), "TLS ")))
	}
	req.event(vocab.EventTLSDone, req.appendErr(attrs, err)...)
}

// The hooks below are a dial's, bound when a dial first asks for them
// (request.Value): dns.lookup.duration and the dial counter, and their
// events.

func (req *request) dnsStartHook(info httptrace.DNSStartInfo) {
	ds := req.dialState()
	req.mu.Lock()
	ds.dnsStart, ds.dnsName = time.Now(), info.Host
	req.mu.Unlock()
	req.event(vocab.EventDNSStart, semconv.DNSQuestionName(info.Host))
}

func (req *request) dnsDone(info httptrace.DNSDoneInfo) {
	ds := req.dialState()
	req.mu.Lock()
	d, name := time.Since(ds.dnsStart), ds.dnsName
	req.mu.Unlock()
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, req.host.kvs[:]...)
	if info.Err != nil {
		attrs = append(attrs, errorTypeAttr(req.Context, info.Err))
	}
	// Once per lookup, not per request: no need to cache its attributes.
	req.t.inst.dnsDuration.Record(req.spanCtx, d.Seconds(), name, attrs...)
	if req.events {
		addrs := make([]string, len(info.Addrs))
		for i, a := range info.Addrs {
			addrs[i] = a.String()
		}
		attrs = append(attrs[:0], vocab.AttrDuration.Float64(d.Seconds()), vocab.AttrDNSAddresses.StringSlice(addrs))
		req.event(vocab.EventDNSDone, req.appendErr(attrs, info.Err)...)
	}
}

func (req *request) connectStart(network, addr string) {
	ds := req.dialState()
	req.mu.Lock()
	ds.dialStarts = append(ds.dialStarts, dialStart{addr: addr, at: time.Now()})
	req.mu.Unlock()
	req.event(vocab.EventConnectStart, peerAttrs(network, addr)...)
}

func (req *request) connectDone(network, addr string, err error) {
	var d time.Duration
	dl := req.dialState()
	req.mu.Lock()
	for i, ds := range dl.dialStarts {
		if ds.addr == addr {
			d = time.Since(ds.at)
			dl.dialStarts = append(dl.dialStarts[:i], dl.dialStarts[i+1:]...)
			break
		}
	}
	req.mu.Unlock()
	if err != nil {
		req.count(req.spanCtx, req.t.inst.dials, errorTypeAttr(req.Context, err))
	} else {
		req.count(req.spanCtx, req.t.inst.dials)
	}
	if req.events {
		attrs := append(peerAttrs(network, addr), vocab.AttrDuration.Float64(d.Seconds()))
		req.event(vocab.EventConnectDone, req.appendErr(attrs, err)...)
	}
}

func isNilTCPAddr(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t == nil
}
