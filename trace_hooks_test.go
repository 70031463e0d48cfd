package conntrace

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// fakeConn is the connection handed to GotConn in the network-free tests.
type fakeConn struct {
	net.Conn // nil: only the addresses are used
	local    net.Addr
	remote   net.Addr
}

func (c fakeConn) LocalAddr() net.Addr  { return c.local }
func (c fakeConn) RemoteAddr() net.Addr { return c.remote }

var testConn = fakeConn{
	local:  &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
	remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 8080},
}

type metricWant struct {
	name  string
	attrs []attribute.KeyValue
	want  float64
}

// TestHooks calls each httptrace hook directly, with no network, and checks
// the span event and the metrics it produces.
func TestHooks(t *testing.T) {
	host := []attribute.KeyValue{semconv.ServerAddress("example.test"), semconv.ServerPort(8080)}
	dialErr := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	tests := []struct {
		name       string
		hooks      func(ct *httptrace.ClientTrace)
		wantEvents []string
		wantAttrs  map[string][]attribute.KeyValue // event name -> attributes it must have; an empty list: none at all
		wantTotals []metricWant                    // totals, all with the host attributes too
		wantSpan   []attribute.Key                 // attributes the span must have
	}{
		{
			// The wait is got_conn's: GetConn alone adds nothing.
			name:  "GetConn",
			hooks: func(ct *httptrace.ClientTrace) { ct.GetConn("example.test:8080") },
		},
		{
			// Behind a proxy, the connection is wanted for the proxy.
			name: "GetConn through a proxy",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.GetConn("proxy.test:3128")
				ct.GotConn(httptrace.GotConnInfo{Conn: testConn})
			},
			wantEvents: []string{vocab.EventGotConn},
			wantAttrs:  map[string][]attribute.KeyValue{vocab.EventGotConn: {vocab.AttrHostPort.String("proxy.test:3128")}},
		},
		{
			name: "GotConn reused after idle",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.GotConn(httptrace.GotConnInfo{Conn: testConn, Reused: true, WasIdle: true, IdleTime: 42 * time.Second})
			},
			wantEvents: []string{vocab.EventGotConn},
			wantAttrs: map[string][]attribute.KeyValue{vocab.EventGotConn: {
				vocab.AttrReused.Bool(true), vocab.AttrWasIdle.Bool(true), vocab.AttrIdleTime.Float64(42),
				semconv.NetworkPeerAddress("127.0.0.2"), semconv.NetworkPeerPort(8080), semconv.NetworkLocalPort(40000),
			}},
			wantTotals: []metricWant{{vocab.MetricReuses, []attribute.KeyValue{vocab.AttrWasIdle.Bool(true)}, 1}, {vocab.MetricIdleTime, nil, 1}},
		},
		{
			name:       "GotConn new",
			hooks:      func(ct *httptrace.ClientTrace) { ct.GotConn(httptrace.GotConnInfo{Conn: testConn}) },
			wantEvents: []string{vocab.EventGotConn},
			wantAttrs: map[string][]attribute.KeyValue{vocab.EventGotConn: {
				vocab.AttrReused.Bool(false), vocab.AttrWasIdle.Bool(false), vocab.AttrIdleTime.Float64(0),
			}},
			wantTotals: []metricWant{{vocab.MetricReuses, nil, 0}, {vocab.MetricIdleTime, nil, 0}},
		},
		{
			// A custom net.Conn may return typed nil addresses.
			name: "GotConn nil addresses",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.GotConn(httptrace.GotConnInfo{Conn: fakeConn{local: (*net.TCPAddr)(nil), remote: (*net.TCPAddr)(nil)}})
			},
			wantEvents: []string{vocab.EventGotConn},
		},
		{
			name:       "PutIdleConn pooled",
			hooks:      func(ct *httptrace.ClientTrace) { ct.PutIdleConn(nil) },
			wantEvents: []string{vocab.EventPutIdleConn},
			wantAttrs:  map[string][]attribute.KeyValue{vocab.EventPutIdleConn: {}},
			wantTotals: []metricWant{{vocab.MetricPutIdle, []attribute.KeyValue{vocab.AttrOutcome.String(vocab.OutcomePooled)}, 1}},
		},
		{
			name: "PutIdleConn rejected",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.PutIdleConn(errors.New("http: putIdleConn: too many idle connections for host"))
			},
			wantEvents: []string{vocab.EventPutIdleConn},
			wantAttrs: map[string][]attribute.KeyValue{vocab.EventPutIdleConn: {
				vocab.AttrOutcome.String(vocab.OutcomeRejected), vocab.AttrReason.String(vocab.ReasonTooManyIdleForHost),
			}},
			wantTotals: []metricWant{{vocab.MetricPutIdle, []attribute.KeyValue{vocab.AttrOutcome.String(vocab.OutcomeRejected), vocab.AttrReason.String(vocab.ReasonTooManyIdleForHost)}, 1}},
		},
		{
			// Behind a proxy the name looked up is the proxy's, not the URL's.
			name: "DNS",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.DNSStart(httptrace.DNSStartInfo{Host: "proxy.test"})
				ct.DNSDone(httptrace.DNSDoneInfo{Addrs: []net.IPAddr{{IP: net.IPv4(127, 0, 0, 2)}}})
			},
			wantEvents: []string{vocab.EventDNSStart, vocab.EventDNSDone},
			wantAttrs: map[string][]attribute.KeyValue{
				vocab.EventDNSStart: {semconv.DNSQuestionName("proxy.test")},
				vocab.EventDNSDone:  {vocab.AttrDNSAddresses.StringSlice([]string{"127.0.0.2"})},
			},
			wantTotals: []metricWant{{"dns.lookup.duration", []attribute.KeyValue{semconv.DNSQuestionName("proxy.test")}, 1}},
		},
		{
			name: "DNS error",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.DNSStart(httptrace.DNSStartInfo{Host: "example.test"})
				ct.DNSDone(httptrace.DNSDoneInfo{Err: &net.DNSError{Err: "no such host", Name: "example.test", IsNotFound: true}})
			},
			wantEvents: []string{vocab.EventDNSStart, vocab.EventDNSDone},
			wantAttrs:  map[string][]attribute.KeyValue{vocab.EventDNSDone: {semconv.ErrorTypeKey.String(vocab.ErrorTypeHostNotFound)}},
			wantTotals: []metricWant{{"dns.lookup.duration", []attribute.KeyValue{semconv.ErrorTypeKey.String(vocab.ErrorTypeHostNotFound)}, 1}},
		},
		{
			name: "Connect",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.ConnectStart("tcp", "127.0.0.2:8080")
				ct.ConnectDone("tcp", "127.0.0.2:8080", nil)
			},
			wantEvents: []string{vocab.EventConnectStart, vocab.EventConnectDone},
			wantAttrs: map[string][]attribute.KeyValue{
				vocab.EventConnectStart: {semconv.NetworkTransportTCP, semconv.NetworkPeerAddress("127.0.0.2"), semconv.NetworkPeerPort(8080)},
				vocab.EventConnectDone:  {semconv.NetworkPeerAddress("127.0.0.2"), semconv.NetworkPeerPort(8080)},
			},
			wantTotals: []metricWant{{vocab.MetricDials, nil, 1}, {vocab.MetricDials, []attribute.KeyValue{semconv.ErrorTypeKey.String(vocab.ErrorTypeConnectionRefused)}, 0}},
		},
		{
			name: "Connect error",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.ConnectStart("tcp", "127.0.0.2:8080")
				ct.ConnectDone("tcp", "127.0.0.2:8080", dialErr)
			},
			wantEvents: []string{vocab.EventConnectStart, vocab.EventConnectDone},
			wantAttrs: map[string][]attribute.KeyValue{vocab.EventConnectDone: {
				semconv.ErrorTypeKey.String(vocab.ErrorTypeConnectionRefused), vocab.AttrError.String(dialErr.Error()),
			}},
			wantTotals: []metricWant{{vocab.MetricDials, []attribute.KeyValue{semconv.ErrorTypeKey.String(vocab.ErrorTypeConnectionRefused)}, 1}},
		},
		{
			name: "TLS",
			hooks: func(ct *httptrace.ClientTrace) {
				ct.TLSHandshakeStart()
				ct.TLSHandshakeDone(tls.ConnectionState{Version: tls.VersionTLS13, DidResume: true}, nil)
			},
			wantEvents: []string{vocab.EventTLSStart, vocab.EventTLSDone},
			wantAttrs: map[string][]attribute.KeyValue{vocab.EventTLSDone: {
				semconv.TLSProtocolVersion("1.3"), semconv.TLSResumed(true),
			}},
		},
		{
			name:     "WroteRequest",
			hooks:    func(ct *httptrace.ClientTrace) { ct.WroteRequest(httptrace.WroteRequestInfo{}) },
			wantSpan: []attribute.Key{vocab.AttrWroteAt},
		},
		{
			// A failed write is a moment to see, with its error.
			name:       "WroteRequest error",
			hooks:      func(ct *httptrace.ClientTrace) { ct.WroteRequest(httptrace.WroteRequestInfo{Err: syscall.EPIPE}) },
			wantEvents: []string{vocab.EventWroteRequest},
			wantAttrs: map[string][]attribute.KeyValue{vocab.EventWroteRequest: {
				semconv.ErrorTypeKey.String(vocab.ErrorTypeConnectionReset), vocab.AttrError.String(syscall.EPIPE.Error()),
			}},
			wantSpan: []attribute.Key{vocab.AttrWroteAt},
		},
		{
			name:     "GotFirstResponseByte",
			hooks:    func(ct *httptrace.ClientTrace) { ct.GotFirstResponseByte() },
			wantSpan: []attribute.Key{vocab.AttrFirstByteAt},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			tr := NewTransport(nil, tel.options()...)
			req, _ := http.NewRequest(http.MethodGet, "http://example.test:8080/x", nil)
			r := tr.newRequest(req)
			r.begin()
			tt.hooks(hooksOf(r))
			r.end(detect.BodyNone, 0, nil)

			ended := tel.Spans.Ended()
			if len(ended) != 1 {
				t.Fatalf("got %d ended spans; want 1", len(ended))
			}
			span := ended[0]
			if got := testkit.EventNames(span); !slices.Equal(got, tt.wantEvents) {
				t.Errorf("events: got %q; want %q", got, tt.wantEvents)
			}
			for name, want := range tt.wantAttrs {
				got, ok := testkit.Event(span, name)
				if !ok {
					t.Errorf("no %s event", name)
					continue
				}
				if len(want) == 0 && got.Len() > 0 {
					t.Errorf("%s: attributes %v; want none", name, got.ToSlice())
				}
				for _, kv := range want {
					if v, ok := got.Value(kv.Key); !ok || v != kv.Value {
						t.Errorf("%s: %s = %v; want %v", name, kv.Key, v.Emit(), kv.Value.Emit())
					}
				}
			}
			attrs := attribute.NewSet(span.Attributes()...)
			for _, k := range tt.wantSpan {
				if v, ok := attrs.Value(k); !ok || v.AsFloat64() < 0 {
					t.Errorf("span attribute %s = %v; want a moment, seconds from the span's start", k, v.Emit())
				}
			}
			if span.Status().Code == codes.Error {
				t.Errorf("span status: got Error %q; want Unset (no hook here is a request error)", span.Status().Description)
			}
			points := tel.Collect(t)
			for _, w := range tt.wantTotals {
				attrs := append(w.attrs, host...)
				if got := points.Total(w.name, attrs...); got != w.want {
					t.Errorf("%s%v: got %v; want %v", w.name, attrs, got, w.want)
				}
			}
		})
	}
}

func TestPutIdleReason(t *testing.T) {
	tests := []struct{ msg, want string }{
		{"http: putIdleConn: too many idle connections for host", vocab.ReasonTooManyIdleForHost},
		{"http: putIdleConn: too many idle connections", vocab.ReasonTooManyIdle},
		{"http: putIdleConn: connection is in bad state", vocab.ReasonBroken},
		{"http: putIdleConn: CloseIdleConnections was called", vocab.ReasonClosing},
		{"http: persistConn.readLoop exiting", vocab.ReasonClosing},
		{"something new", vocab.ReasonOther},
	}
	for _, tt := range tests {
		if got := putIdleReason(errors.New(tt.msg)); got != tt.want {
			t.Errorf("putIdleReason(%q): got %q; want %q", tt.msg, got, tt.want)
		}
	}
}

// hooksOf returns every hook of r, bound whatever r records: the ones
// net/http calls (r.hooks) and the dial's, which net.Dialer finds through
// r's context once a dial starts.
func hooksOf(r *request) *httptrace.ClientTrace {
	ct := r.hooks
	ct.GetConn, ct.WroteRequest, ct.GotFirstResponseByte = r.getConn, r.wroteRequest, r.gotFirstResponseByte
	ct.TLSHandshakeStart, ct.TLSHandshakeDone = r.tlsHandshakeStart, r.tlsHandshakeDone
	ct.DNSStart, ct.DNSDone, ct.ConnectStart, ct.ConnectDone = r.dnsStartHook, r.dnsDone, r.connectStart, r.connectDone
	return &ct
}

// TestHooksAfterEnd: a dial may outlive its request and report later. The
// late hook must count, must not change the ended timeline, and must not
// panic or race.
func TestHooksAfterEnd(t *testing.T) {
	tel := newTelemetry(t)
	tr := NewTransport(nil, tel.options()...)
	req, _ := http.NewRequest(http.MethodGet, "http://example.test:8080/x", nil)
	r := tr.newRequest(req)
	r.begin()
	ct := hooksOf(r)
	ct.ConnectStart("tcp", "127.0.0.2:8080")
	r.end(detect.BodyNone, 0, errors.New("context canceled"))
	ct.ConnectDone("tcp", "127.0.0.2:8080", nil)
	ct.GotConn(httptrace.GotConnInfo{Conn: testConn})
	ct.WroteRequest(httptrace.WroteRequestInfo{})
	r.end(detect.BodyNone, 0, nil) // a second end is a no-op

	if got := len(r.tl.Conns); got != 0 {
		t.Errorf("timeline conns after end: got %d; want 0", got)
	}
	if got := tel.Collect(t).Total(vocab.MetricDials); got != 1 {
		t.Errorf("%s: got %v; want 1", vocab.MetricDials, got)
	}
	if got := len(tel.Spans.Ended()); got != 1 {
		t.Errorf("ended spans: got %d; want 1", got)
	}
}
