package bench

import (
	"runtime"
	"testing"
	"time"
)

// setup returns the providers and one warmed-up client per variant in vs:
// each has made its connection, so every timed GET reuses it.
func setup(b *testing.B, vs []variant) []*client {
	b.Helper()
	url := serverURL(b)
	p := newProviders()
	b.Cleanup(func() {
		if err := p.shutdown(); err != nil {
			b.Error(err)
		}
	})
	clients := make([]*client, len(vs))
	for i, v := range vs {
		c, err := newClient(p, v, url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.close)
		if err := c.get(); err != nil {
			b.Fatalf("%s: %v", v.name, err)
		}
		clients[i] = c
	}
	return clients
}

// BenchmarkRoundTrip measures each variant on its own, one after the other:
//
//	go test -run=NONE -bench=RoundTrip -benchmem
func BenchmarkRoundTrip(b *testing.B) {
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			c := setup(b, []variant{v})[0]
			b.ReportAllocs()
			for b.Loop() {
				if err := c.get(); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.checkReused(maxDials(b.N)); err != nil {
				b.Error(err)
			}
		})
	}
}

// interleaveChunk is how many GETs one variant sends before the next
// variant takes over: long enough that the switch costs nothing measurable,
// short enough that a burst of noise from another process hits every
// variant alike.
const interleaveChunk = 100

// BenchmarkInterleaved measures every variant within one run: b.N GETs per
// variant, sent in chunks, the variants' order rotating from chunk to
// chunk. It reports, per variant, ns/op, allocs/op and B/op (from
// runtime.MemStats, read between chunks) and the ratio of its ns/op to the
// bare transport's. The built-in ns/op, which would be the sum of all
// variants, is left out.
//
//	go test -run=NONE -bench=Interleaved -benchtime=20000x
func BenchmarkInterleaved(b *testing.B) {
	clients := setup(b, variants)
	type totals struct {
		elapsed         time.Duration
		mallocs, allocd uint64
	}
	sums := make([]totals, len(variants))
	var before, after runtime.MemStats
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(interleaveChunk, b.N-done)
		for j := range variants {
			i := (round + j) % len(variants)
			runtime.ReadMemStats(&before)
			start := time.Now()
			for range n {
				if err := clients[i].get(); err != nil {
					b.Fatalf("%s: %v", variants[i].name, err)
				}
			}
			sums[i].elapsed += time.Since(start)
			runtime.ReadMemStats(&after)
			sums[i].mallocs += after.Mallocs - before.Mallocs
			sums[i].allocd += after.TotalAlloc - before.TotalAlloc
		}
		done += n
	}
	b.StopTimer()
	bareNs := float64(sums[0].elapsed.Nanoseconds()) / float64(b.N)
	for i, v := range variants {
		ns := float64(sums[i].elapsed.Nanoseconds()) / float64(b.N)
		b.ReportMetric(ns, v.name+"-ns/op")
		b.ReportMetric(float64(sums[i].mallocs)/float64(b.N), v.name+"-allocs/op")
		b.ReportMetric(float64(sums[i].allocd)/float64(b.N), v.name+"-B/op")
		if i > 0 {
			b.ReportMetric(ns/bareNs, v.name+"-x-bare")
		}
		if err := clients[i].checkReused(maxDials(b.N)); err != nil {
			b.Errorf("%s: %v", v.name, err)
		}
	}
	b.ReportMetric(0, "ns/op")
}

// BenchmarkParallel measures throughput with several goroutines sharing one
// Transport, to show conntrace takes no lock or other resource that
// requests contend for: run with -cpu=1,2 and compare how each variant
// scales with the bare transport's.
//
//	go test -run=NONE -bench=Parallel -cpu=1,2
func BenchmarkParallel(b *testing.B) {
	for _, name := range []string{"bare", "conntrace", "conntrace-metrics-only"} {
		v, err := lookupVariant(name)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(v.name, func(b *testing.B) {
			c := setup(b, []variant{v})[0]
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				// A request of its own per goroutine, as separate callers have.
				req := c.req.Clone(c.req.Context())
				for pb.Next() {
					if err := c.getReq(req); err != nil {
						b.Error(err)
						return
					}
				}
			})
			// Connections are reused: a few more than one per goroutine,
			// because a request can start a dial while another goroutine's
			// connection is on its way back to the pool, but not one per
			// hundred requests.
			if err := c.checkReused(int64(max(2*runtime.GOMAXPROCS(0), b.N/100))); err != nil {
				b.Error(err)
			}
		})
	}
}
