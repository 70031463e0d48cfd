package conntrace

import (
	"hash/maphash"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// hostAttrs is what conntrace keeps per server (host and port): the
// server.address and server.port attributes that every metric of a request
// to it carries, and the measurement options built from them. Building an
// attribute set or boxing an option costs allocations; built once per host,
// counting a request costs none.
type hostAttrs struct {
	key    hostKey
	host   string // server.address
	port   int    // server.port
	kvs    [2]attribute.KeyValue
	set    attribute.Set
	add    []metric.AddOption    // server.address, server.port
	rec    []metric.RecordOption // the same, for histograms
	counts *hostCounts           // active requests, reuses, put-idle outcomes (metrics.go)

	hostPort string // host:port, as GetConn reports it
	// spanStart holds, per request method, the options that start a span:
	// client kind, method, server.address and server.port.
	spanStart [len(methods)]atomic.Pointer[[]trace.SpanStartOption]
	peer      atomic.Pointer[peerName] // the last peer address seen

	// durations caches the options of http.client.request.duration, whose
	// attributes vary with the response; a handful of slots covers the
	// usual few (method, status) pairs of one host.
	durations [8]atomic.Pointer[durationOpts]
}

// hostKey identifies a server as a request's URL names it: its authority
// (host[:port]) and whether the scheme's default port is 443. Looking it up
// this way spares each request the parsing of host and port.
type hostKey struct {
	authority string
	secure    bool
}

func keyOf(u *url.URL) hostKey {
	return hostKey{u.Host, u.Scheme == "https" || u.Scheme == "wss"}
}

func newHostAttrs(k hostKey, host string, port int) *hostAttrs {
	h := &hostAttrs{
		key:  k,
		host: host,
		port: port,
		kvs:  [2]attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(port)},
	}
	h.set = attribute.NewSet(h.kvs[:]...)
	opt := metric.WithAttributeSet(h.set)
	h.add, h.rec = []metric.AddOption{opt}, []metric.RecordOption{opt}
	h.hostPort = net.JoinHostPort(host, strconv.Itoa(port))
	return h
}

// methods are the values of http.request.method, indexed by methodIndex.
var methods = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace, "_OTHER",
}

// method returns the http.request.method value of m: m when semconv knows
// it, else "_OTHER".
func method(m string) string {
	return methods[methodIndex(m)]
}

func methodIndex(m string) int {
	if m == "" {
		return 0 // net/http sends GET
	}
	for i, k := range methods[:len(methods)-1] {
		if m == k {
			return i
		}
	}
	return len(methods) - 1
}

// spanStartOptions returns the options that start the span of a request
// with method m (a methods value) to h.
func (h *hostAttrs) spanStartOptions(m string) []trace.SpanStartOption {
	slot := &h.spanStart[methodIndex(m)]
	if opts := slot.Load(); opts != nil {
		return *opts
	}
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(semconv.HTTPRequestMethodKey.String(m), h.kvs[0], h.kvs[1]),
	}
	slot.Store(&opts)
	return opts
}

type peerName struct {
	ip   net.IP
	name string
}

// peerAddress returns ip.String(), without allocating when ip is the
// address seen last: a host's connections usually go to one or a few.
func (h *hostAttrs) peerAddress(ip net.IP) string {
	if p := h.peer.Load(); p != nil && p.ip.Equal(ip) {
		return p.name
	}
	p := &peerName{ip: slices.Clone(ip), name: ip.String()}
	h.peer.Store(p)
	return p.name
}

// with returns the host's attributes followed by extra.
func (h *hostAttrs) with(extra ...attribute.KeyValue) attribute.Set {
	return attribute.NewSet(append(h.kvs[:], extra...)...)
}

// durationKey is what the attributes of http.client.request.duration
// depend on besides the host, for a round trip that returned a response.
type durationKey struct {
	method, scheme, proto string
	status                int
}

type durationOpts struct {
	key  durationKey
	opts []metric.RecordOption
}

// durationOptions returns the options of a request duration with k's
// attributes, from the cache when k was seen before.
func (h *hostAttrs) durationOptions(k durationKey) []metric.RecordOption {
	slot := &h.durations[(uint(k.status)+uint(len(k.method))+uint(len(k.scheme)))%uint(len(h.durations))]
	if d := slot.Load(); d != nil && d.key == k {
		return d.opts
	}
	attrs := make([]attribute.KeyValue, 0, 6)
	attrs = append(attrs, semconv.HTTPRequestMethodKey.String(k.method), semconv.URLScheme(k.scheme),
		semconv.HTTPResponseStatusCode(k.status))
	if k.status >= 400 {
		// For a client, every 4xx and 5xx is an error (semconv).
		attrs = append(attrs, semconv.ErrorTypeKey.String(strconv.Itoa(k.status)))
	}
	if k.proto != "" {
		attrs = append(attrs, semconv.NetworkProtocolVersion(k.proto))
	}
	d := &durationOpts{key: k, opts: []metric.RecordOption{metric.WithAttributeSet(h.with(attrs...))}}
	slot.Store(d)
	return d.opts
}

// hostCacheSets is the number of sets of hostCache; each holds two hosts.
const hostCacheSets = 256

// hostCache maps hosts to their attributes in a fixed number of slots, so
// that its memory is bounded however many hosts a client talks to. It is a
// two-way set-associative cache, as in a CPU: a host hashes to one set of
// two slots, and a new host takes a free slot of its set or, when both are
// taken, one of them in turn. Lookups
// take no lock and allocate nothing; a miss builds the host's attributes,
// so a client that talks to more hosts than fit pays for that, and stays
// correct.
type hostCache struct {
	seed   maphash.Seed // set by NewTransport
	counts *counts      // set by NewTransport: where a host's counts live
	slots  [2 * hostCacheSets]atomic.Pointer[hostAttrs]
	evict  atomic.Uint32 // which slot of a full set a miss replaces
}

func (c *hostCache) get(u *url.URL) *hostAttrs {
	k := keyOf(u)
	i := 2 * (c.hash(k) % hostCacheSets)
	for j := range 2 {
		if h := c.slots[i+uint64(j)].Load(); h != nil && h.key == k {
			return h
		}
	}
	// url.Parse slices the strings of a URL out of the whole URL; cloned,
	// the cache keeps only the host, never a long URL's path and query.
	k.authority = strings.Clone(k.authority)
	host, port := hostAndPort(u)
	h := newHostAttrs(k, strings.Clone(host), port)
	h.counts = c.counts.get(h.host, h.port)
	for j := range 2 {
		if c.slots[i+uint64(j)].CompareAndSwap(nil, h) {
			return h
		}
	}
	c.slots[i+uint64(c.evict.Add(1)%2)].Store(h)
	return h
}

func (c *hostCache) hash(k hostKey) uint64 {
	return maphash.String(c.seed, k.authority) + uint64(b2i(k.secure))
}

func hostAndPort(u *url.URL) (string, int) {
	host := u.Hostname()
	if p, err := strconv.Atoi(u.Port()); err == nil {
		return host, p
	}
	switch u.Scheme {
	case "https", "wss":
		return host, 443
	default:
		return host, 80
	}
}
