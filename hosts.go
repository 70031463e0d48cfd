package conntrace

import (
	"hash/maphash"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	add    []metric.AddOption    // server.address, server.port
	rec    []metric.RecordOption // the same, for histograms
	counts *hostCounts           // active requests, reuses, put-idle outcomes (metrics.go)

	hostPort string // host:port, as GetConn reports it
	// spanStarts holds, for each request method seen, the options that
	// start a span: client kind, method, server.address and server.port.
	// A list, built as methods come: most hosts see one or two of them.
	spanStarts atomic.Pointer[spanStarts]
	peer       atomic.Pointer[peerName] // the last peer address seen
	used       atomic.Bool              // since the last sweep (hostCache)

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
	opt := metric.WithAttributeSet(attribute.NewSet(h.kvs[:]...))
	h.add, h.rec = []metric.AddOption{opt}, []metric.RecordOption{opt}
	h.hostPort = net.JoinHostPort(host, strconv.Itoa(port))
	if h.hostPort == k.authority {
		h.hostPort = k.authority // one string, not two alike
	}
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

// spanStarts is one method's span start options, and the next method's.
type spanStarts struct {
	method string
	opts   []trace.SpanStartOption
	next   *spanStarts
}

// spanStartOptions returns the options that start the span of a request
// with method m (a methods value) to h.
func (h *hostAttrs) spanStartOptions(m string) []trace.SpanStartOption {
	head := h.spanStarts.Load()
	for s := head; s != nil; s = s.next {
		if s.method == m {
			return s.opts
		}
	}
	s := &spanStarts{method: m, next: head, opts: []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(semconv.HTTPRequestMethodKey.String(m), h.kvs[0], h.kvs[1]),
	}}
	// Two requests adding a method at once: one of them keeps its options
	// for itself, and the next request of that method builds them again.
	h.spanStarts.CompareAndSwap(head, s)
	return s.opts
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

// A hostCache keeps every host in use, in hostShards shards of a map, each
// behind its own RWMutex: a lookup read-locks one shard only, and
// allocates nothing, so a request costs the same however many hosts the
// client talks to. Every hostSweepEvery or more, the hosts no request has
// touched since the last sweep are dropped, and built again if they come
// back: a host in constant use is never rebuilt, one seen once an hour
// takes memory for five to ten minutes after each visit. There is no
// goroutine: the misses after a sweep is due, which build a host's
// attributes anyway, sweep a shard each.
//
// A dropped host's in-flight requests keep their *hostAttrs, and its
// counts live apart (counts, metrics.go): its next entry finds the same
// counts, so cumulative counts go on and active requests return to zero.
//
// Memory: about hostBytes per host in use (TestHostMemory). At most
// maxHosts hosts are kept; beyond them a miss builds a host's attributes
// for its request only.
type hostCache struct {
	seed   maphash.Seed // set by NewTransport
	counts *counts      // set by NewTransport: where a host's counts live
	shards [hostShards]hostShard
	size   atomic.Int64 // hosts kept, in all shards
	swept  atomic.Int64 // when the last sweep started, in Unix nanoseconds; 0: none yet
	left   atomic.Int32 // shards the sweep under way has yet to sweep
}

const (
	// hostShards spreads hosts, and the requests that look them up, over
	// this many locks.
	hostShards = 64
	// hostSweepEvery is the least time between two sweeps: a host goes
	// once it has gone unused for one to two of these.
	hostSweepEvery = 5 * time.Minute
	// maxHosts bounds the hosts kept, at about maxHosts*hostBytes of
	// memory (some 200 MB), in case hosts come faster than sweeps take
	// them away.
	maxHosts = 1 << 17
	// hostBytes is about the memory a host in use takes, measured with its
	// span options, one set of duration options and its peer address
	// (TestHostMemory).
	hostBytes = 1600
)

type hostShard struct {
	mu    sync.RWMutex
	hosts map[hostKey]*hostAttrs
	peak  int      // the most hosts held since the map was last made
	_     [64]byte // shards on cache lines of their own: a lookup writes its shard's lock
}

// get returns the attributes of u's host, found or built; now is the
// time of the request, which the sweeps go by.
func (c *hostCache) get(u *url.URL, now time.Time) *hostAttrs {
	k := keyOf(u)
	s := &c.shards[c.hash(k)%hostShards]
	s.mu.RLock()
	h := s.hosts[k]
	s.mu.RUnlock()
	if h != nil {
		// Read before written: a host in constant use is written to once
		// a sweep, not once a request.
		if !h.used.Load() {
			h.used.Store(true)
		}
		return h
	}
	return c.miss(u, k, s, now)
}

// miss builds the attributes of k and keeps them unless maxHosts are
// kept; and sweeps a shard, if a sweep is due.
func (c *hostCache) miss(u *url.URL, k hostKey, s *hostShard, now time.Time) *hostAttrs {
	// url.Parse slices the strings of a URL out of the whole URL; cloned,
	// the cache keeps only the host, never a long URL's path and query.
	k.authority = strings.Clone(k.authority)
	host, port := hostAndPort(u)
	// The host is the authority without its port and brackets: a part of
	// the clone, not a string of its own.
	if i := strings.Index(k.authority, host); i >= 0 {
		host = k.authority[i : i+len(host)]
	} else {
		host = strings.Clone(host)
	}
	h := newHostAttrs(k, host, port)
	h.counts = c.counts.get(h.host, h.port)
	h.used.Store(true)

	c.sweepIfDue(now)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.hosts[k]; old != nil {
		return old // another request built it first
	}
	if c.size.Load() < maxHosts {
		if s.hosts == nil {
			s.hosts = make(map[hostKey]*hostAttrs)
		}
		s.hosts[k] = h
		s.peak = max(s.peak, len(s.hosts))
		c.size.Add(1)
	}
	return h
}

// sweepIfDue sweeps one shard, if a sweep is under way; and starts one if
// the last started hostSweepEvery ago. A sweep drops, shard by shard, the
// hosts no request touched since that shard's last sweep. Spread over the
// misses that follow, one shard each, a sweep of 100,000 hosts holds up no
// request for more than a sixty-fourth of it (some 0.15 ms a shard, 10 ms
// in all, measured on a busy 2-core machine).
// The first call only starts the clock.
func (c *hostCache) sweepIfDue(now time.Time) {
	if c.left.Load() <= 0 {
		last := c.swept.Load()
		if last == 0 {
			c.swept.CompareAndSwap(0, now.UnixNano())
			return
		}
		if now.UnixNano()-last < int64(hostSweepEvery) || !c.swept.CompareAndSwap(last, now.UnixNano()) {
			return
		}
		c.left.Store(hostShards)
	}
	i := c.left.Add(-1)
	if i < 0 {
		return // the last shard went to another miss
	}
	s := &c.shards[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, h := range s.hosts {
		if !h.used.Swap(false) {
			delete(s.hosts, k)
			c.size.Add(-1)
		}
	}
	// A Go map keeps the room it once needed; one that held four times as
	// many hosts as it has left is made again, to give that back.
	if len(s.hosts)*4 < s.peak {
		m := make(map[hostKey]*hostAttrs, len(s.hosts))
		for k, h := range s.hosts {
			m[k] = h
		}
		s.hosts, s.peak = m, len(m)
	}
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
