package detect

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
)

// The detector's name and outcome: the detectors package's, which says
// what each means.
const (
	PoolOverflowName = detectors.PoolOverflowName
	OutcomeChurn     = detectors.OutcomeChurn
)

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
// It sees many requests, so it keeps state per host: each refusal
// ([StepPoolFull]) and each new connection ([StepGotConn], not reused) of a
// request to it and, from the host's first refusal on, the requests in
// flight to it ([StepStart] to [StepEnd]), to suggest a pool size. When,
// within Window, a host has had at least MinOverflows refusals and as many
// dials, it raises an alert, at most once per host and window.
//
// While no host has overflowed, StepStart costs a request one atomic load;
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
	// watched is a copy of hosts for StepStart to read without mu; nil
	// while no host has overflowed.
	watched atomic.Pointer[map[poolKey]*poolHost]
}

type poolKey struct {
	host string
	port int
}

// poolHost is one host's state. The counters are atomic, for StepStart and
// StepEnd; the rest is guarded by PoolOverflow.mu.
type poolHost struct {
	inFlight atomic.Int64
	peak     atomic.Int64 // the most in flight at once in this window
	since    time.Time    // when it was first watched: requests started later are counted in flight

	windowStart time.Time
	overflows   int
	dials       int
	alerted     bool
}

// Name returns [PoolOverflowName].
func (*PoolOverflow) Name() string { return PoolOverflowName }

// Steps returns [StepStart], [StepGotConn], [StepPoolFull] and [StepEnd].
func (*PoolOverflow) Steps() StepSet {
	return StepsOf(StepStart, StepGotConn, StepPoolFull, StepEnd)
}

// Observe implements [Detector].
func (d *PoolOverflow) Observe(now time.Time, step Step, t *Timeline) ([]Alert, time.Duration) {
	switch step {
	case StepStart:
		d.begin(t.Host, t.Port)
	case StepGotConn:
		if c := t.Conn(); c != nil && !c.Reused {
			d.dialed(now, t.Host, t.Port)
		}
	case StepPoolFull:
		if a, ok := d.overflowed(now, t.Host, t.Port); ok {
			return []Alert{a}, 0
		}
	case StepEnd:
		d.end(t.Start, t.Host, t.Port)
	}
	return nil, 0
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

// begin counts a request to host:port in flight, if the host has overflowed
// before.
func (d *PoolOverflow) begin(host string, port int) {
	h := d.watching(host, port)
	if h == nil {
		return
	}
	n := h.inFlight.Add(1)
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			break
		}
	}
}

// end counts a request to host:port, started at start, out of flight, if it
// was counted in: the host was watched when it started.
func (d *PoolOverflow) end(start time.Time, host string, port int) {
	h := d.watching(host, port)
	if h == nil || start.Before(h.since) {
		return
	}
	for {
		// Never below zero: a request that started just as its host came to
		// be watched may not have been counted in.
		n := h.inFlight.Load()
		if n <= 0 || h.inFlight.CompareAndSwap(n, n-1) {
			return
		}
	}
}

// watching returns host:port's state if it is watched, else nil, at one
// atomic load while no host is.
func (d *PoolOverflow) watching(host string, port int) *poolHost {
	m := d.watched.Load()
	if m == nil {
		return nil
	}
	return (*m)[poolKey{host, port}]
}

// dialed records a new connection dialled to host:port at now. Hosts that
// have never overflowed are not tracked.
func (d *PoolOverflow) dialed(now time.Time, host string, port int) {
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

// overflowed records, at now, that the pool refused a connection to
// host:port because it held MaxIdleConnsPerHost idle ones already. It
// returns an alert when the host churns, as described on [PoolOverflow].
func (d *PoolOverflow) overflowed(now time.Time, host string, port int) (Alert, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := poolKey{host, port}
	h := d.hosts[k]
	if h == nil {
		h = &poolHost{windowStart: now, since: now}
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
// new set for StepStart. d.mu must be held.
func (d *PoolOverflow) add(now time.Time, k poolKey, h *poolHost) {
	if d.hosts == nil {
		d.hosts = make(map[poolKey]*poolHost)
	}
	max := d.MaxHosts
	if max <= 0 {
		max = DefaultLimiterKeys
	}
	evict(d.hosts, max, func(old *poolHost) bool { return now.Sub(old.windowStart) >= d.window() })
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
	switch {
	case peak == 1:
		concurrency = "only 1 request to it was in flight at a time"
	case peak > 1:
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
		Summary: fmt.Sprintf("%s/%s: the pool refused %d idle connections in %s at MaxIdleConnsPerHost %d; %d dialled again",
			PoolOverflowName, OutcomeChurn, h.overflows, advice.Short(now.Sub(h.windowStart)), limit, h.dials),
		Message: fmt.Sprintf("%s: the idle pool refused %d connections in %s because it already held %s idle connections "+
			"to this host, while %d new connections were dialled to it: connections are closed after each burst and dialled "+
			"again, because the pool is smaller than the concurrency; %s",
			advice.HostPort(host, port), h.overflows, advice.Round(now.Sub(h.windowStart)), setting, h.dials, concurrency),
		Advice: advice.PoolSize(fmt.Sprintf("%d, the peak concurrency seen", suggest)) + ".",
	}
}
