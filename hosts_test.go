package conntrace

import (
	"strconv"
	"sync"
	"testing"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// TestHostCache: the same host gets the same attributes; past the bound,
// hosts still get correct attributes but the cache stops growing.
func TestHostCache(t *testing.T) {
	var c hostCache
	if a, b := c.get("a.test", 443), c.get("a.test", 443); a != b {
		t.Errorf("a host's attributes were built twice; want them cached")
	}
	if a, b := c.get("a.test", 443), c.get("a.test", 80); a == b {
		t.Errorf("two ports share attributes; want one entry per host and port")
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				host := "h" + strconv.Itoa(g*1000+i) + ".test"
				h := c.get(host, 8080)
				if v, _ := h.set.Value(semconv.ServerAddressKey); v.AsString() != host {
					t.Errorf("server.address: got %q; want %q", v.AsString(), host)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := len(*c.hosts.Load()); n != maxCachedHosts {
		t.Errorf("cached hosts: got %d; want the bound, %d", n, maxCachedHosts)
	}
}
