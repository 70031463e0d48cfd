package conntrace

import (
	"context"
	"hash/maphash"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestHostCache: the same host gets the same attributes; every one of
// many more hosts than any fixed table holds is kept, looked up again
// without being built again, and never mixed up with another.
func TestHostCache(t *testing.T) {
	c := newTestHostCache()
	if a, b := c.get(mustURL("https://a.test"), epoch), c.get(mustURL("https://a.test"), epoch); a != b {
		t.Errorf("a host's attributes were built twice; want them cached")
	}
	if a, b := c.get(mustURL("https://a.test"), epoch), c.get(mustURL("http://a.test"), epoch); a == b {
		t.Errorf("two ports share attributes; want one entry per host and port")
	}
	const goroutines, perGoroutine = 4, 5000
	first := make([][]*hostAttrs, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for round := range 2 {
				for i := range perGoroutine {
					host := "h" + strconv.Itoa(g*perGoroutine+i) + ".test"
					h := c.get(mustURL("http://"+host+":8080"), epoch)
					if h.host != host || h.port != 8080 || h.kvs[0].Value.AsString() != host {
						t.Errorf("got %s:%d (server.address %q); want %s:8080", h.host, h.port, h.kvs[0].Value.AsString(), host)
						return
					}
					if round == 0 {
						first[g] = append(first[g], h)
					} else if first[g][i] != h {
						t.Errorf("%s: built again on its second request; want it kept", host)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if got, want := c.size.Load(), int64(2+goroutines*perGoroutine); got != want {
		t.Errorf("hosts kept: got %d; want %d", got, want)
	}
}

// epoch is the time of the requests of tests that do not let time pass.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// TestHostSweep: a host used in every sweep period is never built again,
// however long the client runs and however many other hosts come and go;
// a host not used for two sweep periods is dropped, and built again if it
// comes back; the shards give back the room their maps took.
func TestHostSweep(t *testing.T) {
	c := newTestHostCache()
	steady := mustURL("https://steady.test")
	kept := c.get(steady, epoch)
	once := c.get(mustURL("https://once.test"), epoch)
	now := epoch
	for minute := range 120 {
		now = epoch.Add(time.Duration(minute) * time.Minute)
		if c.get(steady, now) != kept {
			t.Fatalf("minute %d: the host in constant use was built again", minute)
		}
		// A thousand hosts a minute, each used once: misses that sweep.
		for i := range 1000 {
			c.get(mustURL("https://m"+strconv.Itoa(minute)+"-"+strconv.Itoa(i)+".test"), now)
		}
	}
	// Hosts of about the last two or three sweep periods remain, not the
	// 120,000 seen.
	if got, most := c.size.Load(), int64(3*hostSweepEvery/time.Minute*1000+2); got > most {
		t.Errorf("hosts kept after 120 minutes of 1,000 new ones a minute: got %d; want at most %d", got, most)
	}
	if c.get(mustURL("https://once.test"), now) == once {
		t.Errorf("a host unused for two hours was still kept; want it dropped and built again")
	}
	var kept0 int
	for i := range c.shards {
		kept0 += len(c.shards[i].hosts)
	}
	if kept0 != int(c.size.Load()) {
		t.Errorf("hosts in the shards: %d; size says %d", kept0, c.size.Load())
	}
}

// TestHostDroppedCounts: when a host's entry is dropped while one of its
// requests is in flight and made again for the next, the counts go on from
// where they were (a cumulative count never goes back) and the in-flight
// request's end brings active requests back to zero.
func TestHostDroppedCounts(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	c := newTestHostCache()
	c.counts, _ = newCounts(mp.Meter("test"))
	u := mustURL("https://a.test")

	long := c.get(u, epoch) // a request that streams for an hour
	long.counts.active.Add(1)
	long.counts.reuses[1].Add(1)
	// An hour of other hosts' requests sweeps a.test away.
	for minute := range 60 {
		for i := range 100 {
			c.get(mustURL("https://b"+strconv.Itoa(minute)+"-"+strconv.Itoa(i)+".test"), epoch.Add(time.Duration(minute)*time.Minute))
		}
	}
	next := c.get(u, epoch.Add(time.Hour))
	if next == long {
		t.Fatalf("a.test was not dropped in an hour without a new request; the test proves nothing")
	}
	next.counts.active.Add(1)
	next.counts.reuses[1].Add(1)
	host := semconv.ServerAddress("a.test")
	points := testkit.Collect(t, reader)
	if got := points.Total(vocab.MetricReuses, host); got != 2 {
		t.Errorf("reuses of a.test across its two entries: got %v; want 2", got)
	}
	if got := points.Total("http.client.active_requests", host); got != 2 {
		t.Errorf("active requests of a.test: got %v; want 2", got)
	}
	long.counts.active.Add(-1)
	next.counts.active.Add(-1)
	if got := testkit.Collect(t, reader).Total("http.client.active_requests", host); got != 0 {
		t.Errorf("active requests of a.test once both ended: got %v; want 0", got)
	}
}

// TestHostLookupAllocs: looking up a host in use allocates nothing, among
// 10 hosts or 10,000.
func TestHostLookupAllocs(t *testing.T) {
	for _, n := range []int{10, 10_000} {
		c := newTestHostCache()
		urls := make([]*url.URL, n)
		for i := range urls {
			urls[i] = mustURL("http://s" + strconv.Itoa(i) + ".test:8080/")
			c.get(urls[i], epoch)
		}
		i := 0
		if a := testing.AllocsPerRun(1000, func() {
			c.get(urls[i%n], epoch)
			i++
		}); a != 0 {
			t.Errorf("%d hosts: %v allocations per lookup; want 0", n, a)
		}
	}
}

// TestHostMemory: a host in use, with what its requests build (span start
// options, one set of request-duration options, its peer address), takes
// less than hostBytes of the heap, the figure the docs give.
func TestHostMemory(t *testing.T) {
	const n = 20_000
	c := newTestHostCache()
	urls := make([]*url.URL, n)
	for i := range urls {
		urls[i] = mustURL("http://s" + strconv.Itoa(i) + ".example.com:8080/path")
	}
	ip := net.IPv4(10, 0, 0, 1)
	key := durationKey{method: "GET", scheme: "http", proto: "1.1", status: 200}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, u := range urls {
		h := c.get(u, epoch)
		h.spanStartOptions("GET")
		h.durationOptions(key)
		h.peerAddress(ip)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perHost := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d B per host", perHost)
	if perHost > hostBytes {
		t.Errorf("a host in use takes %d B of heap; want at most hostBytes (%d)", perHost, hostBytes)
	}
	runtime.KeepAlive(c)
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
		h := c.get(mustURL(tt.url), epoch)
		if h.host != tt.host || h.port != tt.port {
			t.Errorf("%s: got %s, %d; want %s, %d", tt.url, h.host, h.port, tt.host, tt.port)
		}
	}
	if c.get(mustURL("https://a.test/y"), epoch) != c.get(mustURL("wss://a.test/z"), epoch) {
		t.Errorf("https and wss to one authority: two entries; want one")
	}
}

func newTestHostCache() *hostCache {
	counts, _ := newCounts(noop.Meter{})
	return &hostCache{seed: maphash.MakeSeed(), counts: counts}
}

// TestHostCacheFull: once maxHosts hosts are kept, a new host gets correct
// attributes for its request, and is not kept: memory stays bounded even
// if hosts come faster than sweeps take them away.
func TestHostCacheFull(t *testing.T) {
	c := newTestHostCache()
	c.size.Store(maxHosts)
	h := c.get(mustURL("https://new.test"), epoch)
	if h.host != "new.test" || h.port != 443 {
		t.Errorf("got %s:%d; want new.test:443", h.host, h.port)
	}
	if c.get(mustURL("https://new.test"), epoch) == h {
		t.Errorf("a host beyond maxHosts was kept")
	}
	if got := c.size.Load(); got != maxHosts {
		t.Errorf("hosts kept: got %d; want maxHosts (%d)", got, maxHosts)
	}
}
