package conntrace

import (
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// maxCachedHosts bounds the host cache. Requests to hosts beyond it still
// work; they build their attributes themselves.
const maxCachedHosts = 1024

// hostAttrs are the server.address and server.port attributes that every
// metric of a request to one host carries, built once per host.
type hostAttrs struct {
	kvs [2]attribute.KeyValue
	set attribute.Set
}

func newHostAttrs(host string, port int) *hostAttrs {
	h := &hostAttrs{kvs: [2]attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(port)}}
	h.set = attribute.NewSet(h.kvs[:]...)
	return h
}

type hostKey struct {
	host string
	port int
}

// hostCache maps hosts to their attributes. Reading is a map lookup on an
// immutable snapshot: no lock, and no interface boxing of the key (which
// sync.Map would need). A new host copies the snapshot under mu, which at
// most maxCachedHosts requests ever take.
type hostCache struct {
	mu    sync.Mutex
	hosts atomic.Pointer[map[hostKey]*hostAttrs]
}

func (c *hostCache) get(host string, port int) *hostAttrs {
	k := hostKey{host, port}
	m := c.hosts.Load()
	if m != nil {
		if h, ok := (*m)[k]; ok {
			return h
		}
		if len(*m) >= maxCachedHosts {
			return newHostAttrs(host, port)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.hosts.Load()
	if old != nil {
		if h, ok := (*old)[k]; ok {
			return h
		}
	}
	h := newHostAttrs(host, port)
	next := make(map[hostKey]*hostAttrs, len(*orEmpty(old))+1)
	for key, v := range *orEmpty(old) {
		next[key] = v
	}
	next[k] = h
	c.hosts.Store(&next)
	return h
}

func orEmpty(m *map[hostKey]*hostAttrs) *map[hostKey]*hostAttrs {
	if m == nil {
		return &map[hostKey]*hostAttrs{}
	}
	return m
}
