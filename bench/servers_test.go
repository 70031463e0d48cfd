package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A service that calls many servers: GETs spread round-robin over n host
// names (s0.test, s1.test, ...), every one dialled to the one benchmark
// server, so that each name has a pooled connection of its own, as n real
// servers would. Before any GET is counted, each name has been sent one, so
// its connection is pooled and whatever an instrumentation keeps per server
// is built: what is measured is the cost of a request to a server in use.

// serverCounts are the numbers of servers BenchmarkServers and
// TestServersFlat spread GETs over.
var serverCounts = []int{10, 1_000, 10_000}

// spreadVariants are the variants measured over many servers: the bare
// transport, each conntrace mode, and otelhttp.
var spreadVariants = []string{"bare", "conntrace", "conntrace-unsampled", "conntrace-metrics-only", "otelhttp"}

// spreadClient sends GETs through one variant, in turn to each of its
// servers.
type spreadClient struct {
	*client
	reqs []*http.Request
	next int
}

// newSpreadClient is newClient over n servers named sI.test at the port of
// the server at serverURL, all dialled to that server. Its base transport
// keeps every connection pooled however long a round takes (no idle
// timeout, no limit on idle connections in all).
func newSpreadClient(p *providers, v variant, serverURL string, n int) (*spreadClient, error) {
	if err := raiseFileLimit(n); err != nil {
		return nil, err
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return nil, err
	}
	c, err := newClient(p, v, serverURL)
	if err != nil {
		return nil, err
	}
	c.base.MaxIdleConns = 0
	c.base.IdleConnTimeout = 0
	addr := u.Host
	dialer := &net.Dialer{}
	c.base.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		c.dials.Add(1)
		return dialer.DialContext(ctx, network, addr)
	}
	s := &spreadClient{client: c, reqs: make([]*http.Request, n)}
	for i := range s.reqs {
		s.reqs[i] = c.req.Clone(c.req.Context())
		s.reqs[i].URL.Host = "s" + strconv.Itoa(i) + ".test:" + u.Port()
		s.reqs[i].Host = ""
	}
	return s, nil
}

// get sends one GET to the next server.
func (s *spreadClient) get() error {
	err := s.getReq(s.reqs[s.next])
	s.next = (s.next + 1) % len(s.reqs)
	return err
}

// warm sends one GET to each server, so that every one has its connection
// pooled and its state built.
func (s *spreadClient) warm() error {
	for range s.reqs {
		if err := s.get(); err != nil {
			return err
		}
	}
	return nil
}

// raiseFileLimit raises this process's limit on open files to its hard
// limit, and fails if that leaves no room for n connections (the server's
// process needs as many: serve raises its own).
func raiseFileLimit(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return err
		}
	}
	if want := uint64(n) + 256; lim.Cur < want {
		return fmt.Errorf("open files limited to %d; %d servers need %d (raise the hard limit: ulimit -Hn)", lim.Cur, n, want)
	}
	return nil
}

// spreadName is how BenchmarkServers and callgrind.sh name variant v over
// n servers.
func spreadName(v string, n int) string { return v + "@" + strconv.Itoa(n) }

// BenchmarkServers measures the spread variants over 10, 1,000 and 10,000
// servers, one GET per op, round-robin; use a -benchtime that is a multiple
// of 10,000 GETs (-benchtime=20000x) so that every server gets as many:
//
//	go test -run=NONE -bench=Servers -benchtime=20000x
func BenchmarkServers(b *testing.B) {
	for _, n := range serverCounts {
		for _, name := range spreadVariants {
			v, err := lookupVariant(name)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(spreadName(name, n), func(b *testing.B) {
				p := newProviders()
				b.Cleanup(func() {
					if err := p.shutdown(); err != nil {
						b.Error(err)
					}
				})
				c, err := newSpreadClient(p, v, serverURL(b), n)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(c.close)
				if err := c.warm(); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					if err := c.get(); err != nil {
						b.Fatal(err)
					}
				}
				if err := c.checkReused(int64(n) + maxDials(b.N) - 1); err != nil {
					b.Error(err)
				}
			})
		}
	}
}

// TestServersFlat measures, in one run, the exact allocations per GET of
// each spread variant over 10, 1,000 and 10,000 servers, and fails if any
// conntrace mode's allocations per GET over more servers are more than 5%
// above or below its own over 10: what conntrace keeps per server must be
// found again, not rebuilt, however many servers a client calls.
//
// Round-robin, a server's connection sits idle for a whole round. Where
// that is a second or more (detect.KernelIdleGate: 10,000 servers here,
// 1,000 on a slow machine), stale_reuse reads the kernel's TCP_INFO on
// every reuse and arms a timer to look again, as it does for any
// connection idle that long, with one server or many. That must stay
// within the 5% too: the timer, stopped unfired, is pooled, and the path
// table takes a forgotten server's place; the reading itself (net's
// RawConn, and the reading kept for the verdict) is two allocations. The
// table logs each round's length (idle). Run with -v for the table.
func TestServersFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("dials 10,000 connections per variant; skipped with -short")
	}
	url := serverURL(t)
	allocs := map[string]float64{}
	idle := map[string]time.Duration{} // the longest round of a variant
	for _, n := range serverCounts {
		for _, name := range spreadVariants {
			allocs[spreadName(name, n)], idle[spreadName(name, n)] = spreadAllocs(t, name, url, n)
		}
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-24s", "allocs per GET")
	for _, n := range serverCounts {
		fmt.Fprintf(&table, " %10s %8s %7s", strconv.Itoa(n)+" srv", "vs bare", "idle")
	}
	for _, name := range spreadVariants {
		fmt.Fprintf(&table, "\n%-24s", name)
		for _, n := range serverCounts {
			a, bare := allocs[spreadName(name, n)], allocs[spreadName("bare", n)]
			fmt.Fprintf(&table, " %10.2f %+8.2f %7s", a, a-bare, idle[spreadName(name, n)].Round(time.Millisecond))
		}
	}
	t.Log("\n" + table.String())
	first := serverCounts[0]
	for _, name := range spreadVariants {
		if name == "bare" || name == "otelhttp" {
			continue
		}
		want := allocs[spreadName(name, first)]
		for _, n := range serverCounts[1:] {
			got := allocs[spreadName(name, n)]
			if got > want*1.05 || got < want*0.95 {
				t.Errorf("%s: %.2f allocations per GET over %d servers, %.2f over %d: more than 5%% apart",
					name, got, n, want, first)
			}
		}
	}
}

// spreadAllocs returns the allocations per GET of variant name over n
// servers (all goroutines of the process, GOMAXPROCS=1), over at least
// 2,000 GETs and a whole number of rounds, after a round of warm-up; and
// the longest round, that is the longest a connection sat idle.
func spreadAllocs(t *testing.T, name, url string, n int) (float64, time.Duration) {
	t.Helper()
	v, err := lookupVariant(name)
	if err != nil {
		t.Fatal(err)
	}
	p := newProviders()
	defer func() {
		if err := p.shutdown(); err != nil {
			t.Error(err)
		}
	}()
	c, err := newSpreadClient(p, v, url, n)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if err := c.warm(); err != nil {
		t.Fatalf("%s over %d servers: %v", name, n, err)
	}
	gets := n * ((2000 + n - 1) / n)
	var getErr error
	var longest time.Duration
	roundStart := time.Now()
	total := testing.AllocsPerRun(1, func() {
		for range gets {
			if err := c.get(); err != nil && getErr == nil {
				getErr = err
			}
			if c.next == 0 {
				longest = max(longest, time.Since(roundStart))
				roundStart = time.Now()
			}
		}
	})
	if getErr != nil {
		t.Fatalf("%s over %d servers: %v", name, n, getErr)
	}
	// AllocsPerRun runs f once more to warm up: 2*gets GETs after the
	// first round, one dial per server before them.
	if err := c.checkReused(int64(n) + maxDials(2*gets) - 1); err != nil {
		t.Errorf("%s over %d servers: %v", name, n, err)
	}
	return total / float64(gets), longest
}
