package detect

import (
	"sync"
	"time"
)

// Defaults of [Limiter].
const (
	DefaultAlertInterval = time.Minute
	DefaultLimiterKeys   = 4096
)

// Limiter lets through at most one alert per key (such as detector and host)
// per Interval, and counts the ones it holds back so the next delivered alert
// can say how many there were. Time is passed in, so it is testable without a
// clock.
//
// The zero value is ready to use with the defaults. Its memory is bounded:
// beyond MaxKeys keys it forgets the keys that are no longer limiting, then,
// if it must, arbitrary ones (an alert for a forgotten key goes through).
// A Limiter is safe for concurrent use; its lock is taken only when an alert
// is raised, never for healthy requests.
type Limiter struct {
	Interval time.Duration // zero means DefaultAlertInterval
	MaxKeys  int           // zero means DefaultLimiterKeys

	mu   sync.Mutex
	keys map[string]*limitState
}

type limitState struct {
	last       time.Time // when the last alert went through
	suppressed int       // held back since then
}

// Allow reports whether an alert for key may go through at now. When it may,
// suppressed is the number held back since the previous one for that key.
func (l *Limiter) Allow(now time.Time, key string) (ok bool, suppressed int) {
	interval := l.Interval
	if interval <= 0 {
		interval = DefaultAlertInterval
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, found := l.keys[key]; found {
		if now.Sub(s.last) < interval {
			s.suppressed++
			return false, 0
		}
		suppressed, s.suppressed, s.last = s.suppressed, 0, now
		return true, suppressed
	}
	if l.keys == nil {
		l.keys = make(map[string]*limitState)
	}
	l.evict(now, interval)
	l.keys[key] = &limitState{last: now}
	return true, 0
}

// evict makes room for one more key. Keys whose interval has passed limit
// nothing, so they go first; their held-back counts are lost with them.
func (l *Limiter) evict(now time.Time, interval time.Duration) {
	max := l.MaxKeys
	if max <= 0 {
		max = DefaultLimiterKeys
	}
	evict(l.keys, max, func(s *limitState) bool { return now.Sub(s.last) >= interval })
}

// evict makes room in m for one more entry, m holding at most max: it
// drops the entries that stale says are stale (stale may be nil), then
// arbitrary ones.
func evict[K comparable, V any](m map[K]V, max int, stale func(V) bool) {
	if len(m) < max {
		return
	}
	if stale != nil {
		for k, v := range m {
			if stale(v) {
				delete(m, k)
			}
		}
	}
	for k := range m {
		if len(m) < max {
			break
		}
		delete(m, k)
	}
}

// Len returns the number of keys the limiter currently remembers.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
