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
	if h, full := c.lookup(k); h != nil || full {
		if h == nil {
			h = newHostAttrs(host, port)
		}
		return h
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Again under mu: another request may have added it, or filled the cache.
	h, full := c.lookup(k)
	if h != nil {
		return h
	}
	h = newHostAttrs(host, port)
	if full {
		return h
	}
	next := make(map[hostKey]*hostAttrs)
	if old := c.hosts.Load(); old != nil {
		for key, v := range *old {
			next[key] = v
		}
	}
	next[k] = h
	c.hosts.Store(&next)
	return h
}

// lookup returns k's cached attributes, or nil and whether the cache is full.
func (c *hostCache) lookup(k hostKey) (h *hostAttrs, full bool) {
	m := c.hosts.Load()
	if m == nil {
		return nil, false
	}
	if h, ok := (*m)[k]; ok {
		return h, false
	}
	return nil, len(*m) >= maxCachedHosts
}
