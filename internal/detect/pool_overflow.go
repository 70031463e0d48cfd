package detect

import (
	"fmt"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// PoolOverflowName is the name of the [PoolOverflow] detector.
const PoolOverflowName = detectors.PoolOverflowName

// OutcomeChurn is the Alert.Outcome of [PoolOverflow]: the pool keeps
// refusing connections to a host while new ones are dialled to it.
const OutcomeChurn = detectors.OutcomeChurn

// Defaults of [PoolOverflow].
const (
	DefaultOverflowWindow = time.Minute
	DefaultMinOverflows   = 5
	// DefaultMaxIdleConnsPerHost is net/http's default idle pool size per
	// host (http.DefaultMaxIdleConnsPerHost).
	DefaultMaxIdleConnsPerHost = 2
)

// PoolOverflow detects pool churn: net/http's idle pool refusing to keep a
// connection to a host because it already holds MaxIdleConnsPerHost idle
// ones (PutIdleConn fails with "too many idle connections for host"), while
// new connections to that host keep being dialled. Each refused connection
// is closed, and the next burst of requests dials (and handshakes) again:
// the pool is smaller than the concurrency.
//
// Unlike a [Detector] it sees many requests, so it keeps state per host.
// The transport reports every refusal ([PoolOverflow.Overflowed]) and every
// dial ([PoolOverflow.Dialed]). From a host's first refusal on, it also
// counts the requests in flight to that host ([PoolOverflow.Begin]), to
// suggest a pool size. When, within Window, a host has had at least
// MinOverflows refusals and as many dials, Overflowed returns an alert, at
// most once per host and window.
//
// While no host has overflowed, Begin costs a request one atomic load;
// after that, a lookup in an immutable map, and for a watched host two
// atomic adds. Its memory is bounded: beyond MaxHosts hosts it forgets
// those whose window has passed, then arbitrary ones.
//
// The zero value is ready to use with the defaults. Settings must not be
// changed after first use. A PoolOverflow is safe for concurrent use.
type PoolOverflow struct {
	Window       time.Duration // zero means DefaultOverflowWindow
	MinOverflows int           // zero means DefaultMinOverflows
	// MaxIdleConnsPerHost is the pool's per-host limit, as set in
	// http.Transport.MaxIdleConnsPerHost; zero means net/http's default, 2.
	MaxIdleConnsPerHost int
	MaxHosts            int // zero means DefaultLimiterKeys

	mu    sync.Mutex
	hosts map[poolKey]*poolHost
	// watched is a copy of hosts for Begin to read without mu; nil while
	// no host has overflowed.
	watched atomic.Pointer[map[poolKey]*poolHost]
}

type poolKey struct {
	host string
	port int
}

// poolHost is one host's state. The counters are atomic, for Begin and
// Flight.End; the rest is guarded by PoolOverflow.mu.
type poolHost struct {
	inFlight atomic.Int64
	peak     atomic.Int64 // the most in flight at once in this window

	windowStart time.Time
	overflows   int
	dials       int
	alerted     bool
}

// Flight is one request in flight to a watched host; see
// [PoolOverflow.Begin].
type Flight poolHost

// End ends the request's flight. It is safe to call on a nil *Flight.
func (f *Flight) End() {
	if f != nil {
		f.inFlight.Add(-1)
	}
}

func (d *PoolOverflow) window() time.Duration {
	if d.Window > 0 {
		return d.Window
	}
	return DefaultOverflowWindow
}

func (d *PoolOverflow) minOverflows() int {
	if d.MinOverflows > 0 {
		return d.MinOverflows
	}
	return DefaultMinOverflows
}

func (d *PoolOverflow) maxIdle() int {
	if d.MaxIdleConnsPerHost > 0 {
		return d.MaxIdleConnsPerHost
	}
	return DefaultMaxIdleConnsPerHost
}

// Begin counts a request to host:port in flight, if the host has
// overflowed before, and returns its Flight, whose End the caller must call
// when the request ends; otherwise it returns nil.
func (d *PoolOverflow) Begin(host string, port int) *Flight {
	m := d.watched.Load()
	if m == nil {
		return nil
	}
	h := (*m)[poolKey{host, port}]
	if h == nil {
		return nil
	}
	n := h.inFlight.Add(1)
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return (*Flight)(h)
}

// Dialed records a new connection dialled to host:port at now. Hosts that
// have never overflowed are not tracked.
func (d *PoolOverflow) Dialed(now time.Time, host string, port int) {
	m := d.watched.Load()
	if m == nil || (*m)[poolKey{host, port}] == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if h := d.hosts[poolKey{host, port}]; h != nil {
		d.roll(now, h)
		h.dials++
	}
}

// Overflowed records, at now, that the pool refused a connection to
// host:port because it held MaxIdleConnsPerHost idle ones already. It
// returns an alert when the host churns, as described on [PoolOverflow].
func (d *PoolOverflow) Overflowed(now time.Time, host string, port int) (Alert, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := poolKey{host, port}
	h := d.hosts[k]
	if h == nil {
		h = &poolHost{windowStart: now}
		d.add(now, k, h)
	}
	d.roll(now, h)
	h.overflows++
	min := d.minOverflows()
	if h.alerted || h.overflows < min || h.dials < min {
		return Alert{}, false
	}
	h.alerted = true
	return d.alert(now, host, port, h), true
}

// roll starts a new window for h if its current one has passed. d.mu must
// be held.
func (d *PoolOverflow) roll(now time.Time, h *poolHost) {
	if now.Sub(h.windowStart) < d.window() {
		return
	}
	h.windowStart, h.overflows, h.dials, h.alerted = now, 0, 0, false
	h.peak.Store(h.inFlight.Load())
}

// add starts watching k, evicting hosts beyond MaxHosts, and publishes the
// new set for Begin. d.mu must be held.
func (d *PoolOverflow) add(now time.Time, k poolKey, h *poolHost) {
	if d.hosts == nil {
		d.hosts = make(map[poolKey]*poolHost)
	}
	max := d.MaxHosts
	if max <= 0 {
		max = DefaultLimiterKeys
	}
	if len(d.hosts) >= max {
		for key, old := range d.hosts {
			if now.Sub(old.windowStart) >= d.window() {
				delete(d.hosts, key)
			}
		}
		for key := range d.hosts {
			if len(d.hosts) < max {
				break
			}
			delete(d.hosts, key)
		}
	}
	d.hosts[k] = h
	snapshot := make(map[poolKey]*poolHost, len(d.hosts))
	for key, v := range d.hosts {
		snapshot[key] = v
	}
	d.watched.Store(&snapshot)
}

// Hosts returns the number of hosts being watched.
func (d *PoolOverflow) Hosts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.hosts)
}

func (d *PoolOverflow) alert(now time.Time, host string, port int, h *poolHost) Alert {
	limit := d.maxIdle()
	peak := int(h.peak.Load())
	suggest := max(peak, limit+1)
	concurrency := "the number of requests in flight was not measured yet"
	if peak > 0 {
		concurrency = fmt.Sprintf("up to %d requests to it were in flight at once", peak)
	}
	setting := fmt.Sprintf("MaxIdleConnsPerHost (%d)", limit)
	if d.MaxIdleConnsPerHost == 0 {
		setting = fmt.Sprintf("MaxIdleConnsPerHost (%d, net/http's default)", limit)
	}
	return Alert{
		Detector: PoolOverflowName,
		Outcome:  OutcomeChurn,
		Level:    slog.LevelWarn,
		Time:     now,
		Host:     host,
		Port:     port,
		Message: fmt.Sprintf("%s: the idle pool refused %d connections in %s because it already held %s idle connections "+
			"to this host, while %d new connections were dialled to it: connections are closed after each burst and dialled "+
			"again, because the pool is smaller than the concurrency; %s",
			advice.HostPort(host, port), h.overflows, advice.Round(now.Sub(h.windowStart)), setting, h.dials, concurrency),
		Advice: fmt.Sprintf("Set http.Transport.MaxIdleConnsPerHost to at least %d, the peak concurrency seen, and keep "+
			"http.Transport.MaxIdleConns (0: no limit) at least the sum over all hosts.", suggest),
	}
}
