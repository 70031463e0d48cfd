package conntrace

import (
	"hash/maphash"
	"net/url"
	"strconv"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// TestHostCache: the same host gets the same attributes; many more hosts
// than fit still get correct attributes, and the cache holds no more than
// its slots.
func TestHostCache(t *testing.T) {
	c := newTestHostCache()
	if a, b := c.get(mustURL("https://a.test")), c.get(mustURL("https://a.test")); a != b {
		t.Errorf("a host's attributes were built twice; want them cached")
	}
	if a, b := c.get(mustURL("https://a.test")), c.get(mustURL("http://a.test")); a == b {
		t.Errorf("two ports share attributes; want one entry per host and port")
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 5000 {
				host := "h" + strconv.Itoa(g*5000+i) + ".test"
				h := c.get(mustURL("http://" + host + ":8080"))
				if v, _ := h.set.Value(semconv.ServerAddressKey); v.AsString() != host {
					t.Errorf("server.address: got %q; want %q", v.AsString(), host)
					return
				}
			}
		})
	}
	wg.Wait()
	cached := 0
	for i := range c.slots {
		if c.slots[i].Load() != nil {
			cached++
		}
	}
	// 20,000 hosts through the slots: nearly every slot is taken, and
	// none more exist.
	if cached < len(c.slots)*9/10 || cached > len(c.slots) {
		t.Errorf("cached hosts: got %d; want close to the %d slots, never more", cached, len(c.slots))
	}
	// A host seen again after the churn is found or rebuilt, never mixed up.
	if h := c.get(mustURL("https://a.test")); h.host != "a.test" || h.port != 443 {
		t.Errorf("after churn: got %s:%d; want a.test:443", h.host, h.port)
	}
}

// TestHostDurationOptions: the cached duration options carry the request's
// own method, status and protocol, also when two keys share a slot.
func TestHostDurationOptions(t *testing.T) {
	h := newHostAttrs(hostKey{"a.test", true}, "a.test", 443)
	keys := []durationKey{
		{method: "GET", scheme: "https", proto: "1.1", status: 200},
		{method: "PUT", scheme: "https", proto: "1.1", status: 200}, // same slot as GET
		{method: "GET", scheme: "https", proto: "2", status: 503},
	}
	for range 2 {
		for _, k := range keys {
			set := metric.NewRecordConfig(h.durationOptions(k)).Attributes()
			method, _ := set.Value(semconv.HTTPRequestMethodKey)
			status, _ := set.Value(semconv.HTTPResponseStatusCodeKey)
			proto, _ := set.Value(semconv.NetworkProtocolVersionKey)
			addr, _ := set.Value(semconv.ServerAddressKey)
			if method.AsString() != k.method || status.AsInt64() != int64(k.status) ||
				proto.AsString() != k.proto || addr.AsString() != "a.test" {
				t.Errorf("%v: got attributes %v", k, set.ToSlice())
			}
			_, hasErr := set.Value(semconv.ErrorTypeKey)
			if want := k.status >= 400; hasErr != want {
				t.Errorf("%v: error.type present %v; want %v", k, hasErr, want)
			}
		}
	}
	for _, k := range keys {
		got := h.durationOptions(k)
		again := h.durationOptions(k)
		if &got[0] != &again[0] {
			t.Errorf("%v: options rebuilt on a repeated lookup; want them cached", k)
		}
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestHostKey: URLs that name the same server share one entry, with the
// port the scheme implies.
func TestHostKey(t *testing.T) {
	c := newTestHostCache()
	tests := []struct {
		url  string
		host string
		port int
	}{
		{"http://a.test/x", "a.test", 80},
		{"https://a.test/x", "a.test", 443},
		{"wss://a.test/x", "a.test", 443},
		{"https://a.test:8443/x", "a.test", 8443},
		{"http://[::1]:8080/x", "::1", 8080},
		{"http://[::1]/x", "::1", 80},
	}
	for _, tt := range tests {
		h := c.get(mustURL(tt.url))
		if h.host != tt.host || h.port != tt.port {
			t.Errorf("%s: got %s, %d; want %s, %d", tt.url, h.host, h.port, tt.host, tt.port)
		}
	}
	if c.get(mustURL("https://a.test/y")) != c.get(mustURL("wss://a.test/z")) {
		t.Errorf("https and wss to one authority: two entries; want one")
	}
}

func newTestHostCache() *hostCache {
	counts, _ := newCounts(noop.Meter{})
	return &hostCache{seed: maphash.MakeSeed(), counts: counts}
}
