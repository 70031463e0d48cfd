package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/conntrace/conntrace"
)

// The churn: connections through one Transport, to hosts that come and go
// as pods of a scaled service do: each host gets churnConns/churnHosts
// connections in a row, then is never seen again; a new host comes every
// churnHostEvery, in the fake time of a synctest bubble.
const (
	churnConns = 100_000
	churnHosts = 10_000
	// churnHostEvery: 100 new hosts a minute, 10k over 100 minutes, so
	// that the hosts conntrace keeps (those used in the last five to ten
	// minutes: hostSweepEvery in the root package) are a few hundred.
	churnHostEvery = 600 * time.Millisecond
	// churnCheckpoints is how many times the heap is measured along the way,
	// after every churnConns/churnCheckpoints connections (1000 new hosts).
	churnCheckpoints = 10
	// churnCapsFull is the checkpoint from which every cap on per-host state
	// is reached: 5000 hosts, 50 minutes, beyond the sweeps of conntrace's
	// hosts (a host unused for ten minutes is gone), its alert limiter
	// (4096 keys) and the SDK's cardinality limit (2000 series per
	// instrument). From there to the end, 5000 more hosts arrive.
	churnCapsFull = 5
	// churnPlateauSlack is how much the floor of the heap may still grow
	// from churnCapsFull to the end: GC noise. Per-host state without a
	// cap exceeds it from about 25 bytes per host, per-connection state
	// from 3 bytes per connection.
	churnPlateauSlack = 64 << 10
	// churnOwnCap bounds what conntrace keeps in all, with capped per-host
	// state: the hosts in use (at most some 1000 here, about 1.5 KB each
	// with their attribute sets and options), the alert limiter (4096
	// keys, about 470 KB), the observable counts (1999 hosts, about 300 B
	// each) and the SDK's state for those observable series: 3.9 MB
	// measured. Hosts kept without a sweep would take about 15 MB for 10k
	// hosts.
	churnOwnCap = 5 << 20
)

var churnProfile = flag.String("churn.heapprofile", "",
	"write heap profiles, taken after the churn while the Transport is still live, to `FILE`.delta and FILE.cumulative")

// TestChurnHeap sends 100k connections to 10k distinct hosts through one
// conntrace Transport in full mode, over 100 minutes of fake time (a
// synctest bubble), and measures the live heap (HeapAlloc and HeapInuse
// after two runtime.GCs) before the first request and after every 10k
// connections. No socket is opened: a fake base transport plays the
// httptrace hooks net/http would call (churnBase), so every per-host path
// of conntrace runs: host attributes, every metric, span events, and a
// stale-reuse alert (retried) on every tenth connection, through the alert
// limiter, keyed by host.
//
// It fails if the heap grows once every cap is reached (state kept per
// host or per connection without bound), or if conntrace keeps more than
// churnOwnCap in all. Two metric set-ups, because the OTel SDK keeps a
// series per attribute set and every conntrace metric carries
// server.address:
//   - delta: a delta-temporality reader collected after each 10k, as a
//     periodic delta exporter does; what stays is conntrace's own state.
//   - cumulative: the SDK default (Prometheus, and OTLP unless told
//     otherwise); the SDK also keeps up to its cardinality limit (2000)
//     series per instrument, a cap of its own that conntrace cannot lift.
//
// Run with -v to see the figures; -churn.heapprofile=FILE for where they
// are (go tool pprof -sample_index=inuse_space FILE.delta).
func TestChurnHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("the churn sends 100k requests; skipped with -short")
	}
	delta := sdkmetric.WithTemporalitySelector(func(sdkmetric.InstrumentKind) metricdata.Temporality {
		return metricdata.DeltaTemporality
	})
	t.Run("delta", func(t *testing.T) {
		heap := churn(t, sdkmetric.NewManualReader(delta), profileName("delta"))
		if grew := heap.grown(); grew > churnOwnCap {
			t.Errorf("after %d connections to %d hosts the heap grew %s, more than the %s conntrace's capped per-host state may take",
				churnConns, churnHosts, kib(grew), kib(churnOwnCap))
		}
		heap.checkPlateau(t)
	})
	t.Run("cumulative", func(t *testing.T) {
		heap := churn(t, sdkmetric.NewManualReader(), profileName("cumulative"))
		heap.checkPlateau(t)
	})
}

// profileName is where the heap profile of the named set-up goes: none
// without -churn.heapprofile, else that name with the set-up's appended.
func profileName(setup string) string {
	if *churnProfile == "" {
		return ""
	}
	return *churnProfile + "." + setup
}

// heapSeries is HeapAlloc and HeapInuse at the start and at each checkpoint.
type heapSeries struct {
	alloc, inuse []uint64
}

func (h *heapSeries) measure() {
	// Two collections: the first moves sync.Pool contents to the victim
	// cache, the second frees them.
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h.alloc = append(h.alloc, ms.HeapAlloc)
	h.inuse = append(h.inuse, ms.HeapInuse)
}

// grown is how much the live heap grew from the start to the end.
func (h *heapSeries) grown() int64 {
	return int64(h.alloc[len(h.alloc)-1]) - int64(h.alloc[0])
}

// checkPlateau fails t if the heap still grew once every cap was reached.
// Caps that drop their stale entries all at once when full (the
// pool-overflow detector's hosts) make the heap a sawtooth over the fake
// minutes, some 600 KB high with a period of four checkpoints; state kept
// without a cap raises its floor. So the lowest heap of the last three
// checkpoints is compared with the lowest of the three from churnCapsFull.
func (h *heapSeries) checkPlateau(t *testing.T) {
	t.Helper()
	n := len(h.alloc)
	full, last := slices.Min(h.alloc[churnCapsFull:churnCapsFull+3]), slices.Min(h.alloc[n-3:])
	if grew := int64(last) - int64(full); grew > churnPlateauSlack {
		perHost := churnHosts * (churnCheckpoints - churnCapsFull) / churnCheckpoints
		t.Errorf("the heap grew %s while the last %d hosts came and went, after every cap was reached: state kept per host or per connection without bound",
			kib(grew), perHost)
	}
}

func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/1024) }

// churn runs the churn through a new Transport reporting to reader and
// returns the heap figures, which it also logs.
func churn(t *testing.T, reader *sdkmetric.ManualReader, profile string) (heap *heapSeries) {
	synctest.Test(t, func(t *testing.T) { heap = churnInBubble(t, reader, profile) })
	return heap
}

func churnInBubble(t *testing.T, reader *sdkmetric.ManualReader, profile string) *heapSeries {
	if profile != "" {
		defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1 // every allocation, so the profile adds up
	}
	ctx := context.Background()
	tp := sdktrace.NewTracerProvider() // sampled, recorded, ended, dropped
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() {
		if err := errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx)); err != nil {
			t.Error(err)
		}
	}()
	base := &churnBase{}
	rt := conntrace.NewTransport(base,
		conntrace.WithTracerProvider(tp),
		conntrace.WithMeterProvider(mp),
		conntrace.WithPropagators(propagation.TraceContext{}),
		conntrace.WithLogger(slog.New(slog.DiscardHandler)),
		// Over the 100 fake minutes every alert key stays live, so the
		// limiter stays at its cap: with the default minute, a full
		// limiter drops every stale key at once and fills again, a
		// sawtooth of some 400 KB that would hide what the plateau checks.
		conntrace.WithAlertInterval(24*time.Hour))

	heap := &heapSeries{}
	heap.measure()
	start := time.Now()
	for i := range churnConns {
		if err := base.send(rt, i); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if (i+1)%(churnConns/churnHosts) == 0 {
			time.Sleep(churnHostEvery)
		}
		if (i+1)%(churnConns/churnCheckpoints) == 0 {
			// As an exporter does: what a collection returns is gone once
			// exported, so it is not kept for the measurement.
			if err := reader.Collect(ctx, &metricdata.ResourceMetrics{}); err != nil {
				t.Fatal(err)
			}
			heap.measure()
		}
	}
	elapsed := time.Since(start)
	if want := churnConns / 10; base.alerts != want {
		t.Errorf("%d stale reuses were retried, want %d", base.alerts, want)
	}
	if profile != "" {
		if err := writeHeapProfile(profile); err != nil {
			t.Error(err)
		}
	}
	runtime.KeepAlive(rt)

	var b strings.Builder
	fmt.Fprintf(&b, "%d connections to %d hosts over %v of fake time\n", churnConns, churnHosts, elapsed.Round(time.Second))
	fmt.Fprintf(&b, "%12s %14s %14s\n", "connections", "HeapAlloc", "HeapInuse")
	for i := range heap.alloc {
		fmt.Fprintf(&b, "%12d %14d %14d\n", i*churnConns/churnCheckpoints, heap.alloc[i], heap.inuse[i])
	}
	fmt.Fprintf(&b, "grown: HeapAlloc %+d B, HeapInuse %+d B",
		heap.grown(), int64(heap.inuse[len(heap.inuse)-1])-int64(heap.inuse[0]))
	t.Log(b.String())
	return heap
}

func writeHeapProfile(name string) error {
	runtime.GC()
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	return errors.Join(pprof.WriteHeapProfile(f), f.Close())
}

// churnBase is a fake base transport. For the i-th request it calls the
// request's httptrace hooks in the order net/http calls them for a
// connection dialled to the request's host, and returns a response whose
// body, at EOF, reports the connection back to the pool (PutIdleConn).
// Every tenth request is first handed a pooled connection idle past the
// NAT idle timeout that fails, then retried on a new one: a stale_reuse
// alert ("retried") for that host. Every fifth connection is refused by a
// full pool. It is used from one goroutine.
type churnBase struct {
	i      int // the request being sent
	alerts int // stale reuses sent
}

// churnHost is the host of connection i.
func churnHost(i int) int { return i / (churnConns / churnHosts) }

func (f *churnBase) send(rt http.RoundTripper, i int) error {
	f.i = i
	host := "h" + strconv.Itoa(churnHost(i)) + ".invalid"
	req, err := http.NewRequest(http.MethodGet, "http://"+host+":8080/", nil)
	if err != nil {
		return err
	}
	res, err := rt.RoundTrip(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, res.Body)
	return errors.Join(err, res.Body.Close())
}

func (f *churnBase) RoundTrip(req *http.Request) (*http.Response, error) {
	ct := httptrace.ContextClientTrace(req.Context())
	if ct == nil {
		return nil, errors.New("churnBase: the request carries no ClientTrace")
	}
	hostIndex := churnHost(f.i)
	// Loopback addresses only as data: no packet is ever sent.
	ip := net.IPv4(127, 1, byte(hostIndex>>8), byte(hostIndex))
	hostPort := req.URL.Host
	if ct.GetConn != nil {
		ct.GetConn(hostPort)
	}
	if f.i%10 == 9 {
		f.alerts++
		stale := newFakeConn(ip, f.i)
		if ct.GotConn != nil {
			ct.GotConn(httptrace.GotConnInfo{Conn: stale, Reused: true, WasIdle: true, IdleTime: 400 * time.Second})
		}
		if ct.WroteRequest != nil {
			ct.WroteRequest(httptrace.WroteRequestInfo{})
		}
		// The read fails and net/http retries the GET on a new connection.
		if ct.GetConn != nil {
			ct.GetConn(hostPort)
		}
	}
	if ct.DNSStart != nil {
		ct.DNSStart(httptrace.DNSStartInfo{Host: req.URL.Hostname()})
	}
	if ct.DNSDone != nil {
		ct.DNSDone(httptrace.DNSDoneInfo{Addrs: []net.IPAddr{{IP: ip}}})
	}
	addr := net.JoinHostPort(ip.String(), req.URL.Port())
	if ct.ConnectStart != nil {
		ct.ConnectStart("tcp", addr)
	}
	if ct.ConnectDone != nil {
		ct.ConnectDone("tcp", addr, nil)
	}
	if ct.GotConn != nil {
		ct.GotConn(httptrace.GotConnInfo{Conn: newFakeConn(ip, f.i)})
	}
	if ct.WroteHeaders != nil {
		ct.WroteHeaders()
	}
	if ct.WroteRequest != nil {
		ct.WroteRequest(httptrace.WroteRequestInfo{})
	}
	if ct.GotFirstResponseByte != nil {
		ct.GotFirstResponseByte()
	}
	var putErr error
	if f.i%5 == 0 {
		putErr = errTooManyIdle
	}
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Length": {"5"}},
		ContentLength: 5,
		Body:          &churnBody{r: strings.NewReader("hello"), trace: ct, putErr: putErr},
		Request:       req,
	}, nil
}

// errTooManyIdle has the text of net/http's error for a full per-host pool.
var errTooManyIdle = errors.New("http: putIdleConn: too many idle connections for host")

// churnBody calls PutIdleConn at EOF, as net/http's body does.
type churnBody struct {
	r      io.Reader
	trace  *httptrace.ClientTrace
	putErr error
	done   bool
}

func (b *churnBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		if b.trace.PutIdleConn != nil {
			b.trace.PutIdleConn(b.putErr)
		}
	}
	return n, err
}

func (b *churnBody) Close() error { return nil }

// fakeConn is a net.Conn that only has addresses.
type fakeConn struct {
	net.Conn // nil: any I/O would panic, and none is done
	local    *net.TCPAddr
	remote   *net.TCPAddr
}

func newFakeConn(ip net.IP, i int) *fakeConn {
	return &fakeConn{
		local:  &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10000 + i%50000},
		remote: &net.TCPAddr{IP: ip, Port: 8080},
	}
}

func (c *fakeConn) LocalAddr() net.Addr  { return c.local }
func (c *fakeConn) RemoteAddr() net.Addr { return c.remote }
