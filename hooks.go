package conntrace

import (
	"context"
	"crypto/tls"
	"net"
	"net/http/httptrace"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/vocab"
)

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
	switch {
	case !info.Reused:
		c.Socket = sockopt.Options(info.Conn) // keepalive_gap: once per new connection
	case info.WasIdle && info.IdleTime >= detect.KernelIdleGate && info.Conn != nil:
		// stale_reuse: the kernel's view of a connection idle long enough
		// to have been forgotten. A hot reuse costs no system call.
		if c.TCP = sockopt.TCPInfo(info.Conn, now); c.TCP != nil {
			watched = info.Conn
		}
	}
	tc := trackedOf(info.Conn)

	prev := tc
	req.step(now, detect.StepGotConn, func(tl *detect.Timeline) {
		tl.Conns = append(tl.Conns, c)
		tl.TCP, req.watched = nil, watched
		prev, req.held = req.held, tc
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

// putIdleConn: net/http returned the connection to its idle pool, or the
// pool refused it. A full pool is not the request's failure: no error
// status, no error.type; pool_overflow hears of it.
func (req *request) putIdleConn(err error) {
	if err == nil {
		req.host.counts.putIdle[0].Add(1)
		if req.events {
			req.span.AddEvent(vocab.EventPutIdleConn, pooledEvent...)
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

var pooledEvent = []trace.EventOption{trace.WithAttributes(vocab.AttrOutcome.String(vocab.OutcomePooled))}

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

// The hooks below are bound only for a recording span: they add its events.

func (req *request) getConn(hostPort string) {
	if !req.events {
		return
	}
	if hostPort == req.host.hostPort {
		req.span.AddEvent(vocab.EventGetConn, req.host.getConn...)
		return
	}
	req.event(vocab.EventGetConn, vocab.AttrHostPort.String(hostPort))
}

// wroteRequest: the request was written (net/http has yet to flush it).
func (req *request) wroteRequest(info httptrace.WroteRequestInfo) {
	now := req.now()
	req.mu.Lock()
	if !req.ended.Load() {
		req.tl.WroteRequest = now
	}
	req.mu.Unlock()
	req.event(vocab.EventWroteRequest, req.appendErr(nil, info.Err)...)
}

func (req *request) gotFirstResponseByte() {
	req.event(vocab.EventFirstByte)
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

// count adds one to c, in ctx (for its exemplar), with the host
// attributes and extra.
func (req *request) count(ctx context.Context, c metric.Int64Counter, extra ...attribute.KeyValue) {
	if len(extra) == 0 {
		c.Add(ctx, 1, req.host.add...)
		return
	}
	c.Add(ctx, 1, metric.WithAttributeSet(req.host.with(extra...)))
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
