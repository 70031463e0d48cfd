package detect_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// allowCall is one Allow call and what it must answer.
type allowCall struct {
	at             time.Duration // since base
	key            string
	wantOK         bool
	wantSuppressed int
}

func runCalls(t *testing.T, l *detect.Limiter, calls []allowCall) {
	t.Helper()
	for i, c := range calls {
		ok, suppressed := l.Allow(at(c.at), c.key)
		if ok != c.wantOK || suppressed != c.wantSuppressed {
			t.Errorf("call %d: Allow(+%v, %q): got (%v, %v); want (%v, %v)",
				i, c.at, c.key, ok, suppressed, c.wantOK, c.wantSuppressed)
		}
	}
}

func TestLimiterAllow(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		calls    []allowCall
	}{
		{
			name:     "first passes, rest of interval held, next reports held count",
			interval: 10 * time.Second,
			calls: []allowCall{
				{at: 0, key: "a", wantOK: true, wantSuppressed: 0},
				{at: time.Second, key: "a", wantOK: false},
				{at: 5 * time.Second, key: "a", wantOK: false},
				{at: 10*time.Second - time.Nanosecond, key: "a", wantOK: false},
				{at: 10 * time.Second, key: "a", wantOK: true, wantSuppressed: 3},
				{at: 11 * time.Second, key: "a", wantOK: false},
				{at: 20 * time.Second, key: "a", wantOK: true, wantSuppressed: 1},
				{at: 45 * time.Second, key: "a", wantOK: true, wantSuppressed: 0},
			},
		},
		{
			name:     "held alerts do not extend the interval",
			interval: 10 * time.Second,
			calls: []allowCall{
				{at: 0, key: "a", wantOK: true},
				{at: 9 * time.Second, key: "a", wantOK: false},
				{at: 10 * time.Second, key: "a", wantOK: true, wantSuppressed: 1},
			},
		},
		{
			name:     "keys are independent",
			interval: 10 * time.Second,
			calls: []allowCall{
				{at: 0, key: "stale_reuse/a.example", wantOK: true},
				{at: time.Second, key: "stale_reuse/b.example", wantOK: true},
				{at: 2 * time.Second, key: "stale_reuse/a.example", wantOK: false},
				{at: 3 * time.Second, key: "stale_reuse/b.example", wantOK: false},
				{at: 4 * time.Second, key: "stale_reuse/b.example", wantOK: false},
				{at: 5 * time.Second, key: "other/a.example", wantOK: true},
				{at: 10 * time.Second, key: "stale_reuse/a.example", wantOK: true, wantSuppressed: 1},
				{at: 10 * time.Second, key: "stale_reuse/b.example", wantOK: false},
				{at: 11 * time.Second, key: "stale_reuse/b.example", wantOK: true, wantSuppressed: 3},
			},
		},
		{
			name:     "zero interval uses one minute",
			interval: 0,
			calls: []allowCall{
				{at: 0, key: "a", wantOK: true},
				{at: 30 * time.Second, key: "a", wantOK: false},
				{at: time.Minute - time.Nanosecond, key: "a", wantOK: false},
				{at: time.Minute, key: "a", wantOK: true, wantSuppressed: 2},
				{at: time.Minute + time.Second, key: "a", wantOK: false},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runCalls(t, &detect.Limiter{Interval: tt.interval}, tt.calls)
		})
	}
}

func TestDefaultConstants(t *testing.T) {
	tests := []struct {
		name  string
		value time.Duration
		want  time.Duration
	}{
		{name: "DefaultAlertInterval", value: detect.DefaultAlertInterval, want: time.Minute},
		{name: "DefaultNATIdleTimeout", value: detect.DefaultNATIdleTimeout, want: 350 * time.Second},
		{name: "DefaultHangTimeout", value: detect.DefaultHangTimeout, want: 10 * time.Second},
	}
	for _, tt := range tests {
		if tt.value != tt.want {
			t.Errorf("%s: got %v; want %v", tt.name, tt.value, tt.want)
		}
	}
}

func TestLimiterMaxKeys(t *testing.T) {
	tests := []struct {
		name    string
		maxKeys int
		keys    int
		spacing time.Duration // between keys; the interval is a minute
		wantLen int
	}{
		{name: "3 keys, 10 at once", maxKeys: 3, keys: 10, spacing: 0, wantLen: 3},
		{name: "3 keys, 10 over time", maxKeys: 3, keys: 10, spacing: 15 * time.Second, wantLen: 3},
		{name: "1 key", maxKeys: 1, keys: 5, spacing: time.Second, wantLen: 1},
		{name: "under the bound", maxKeys: 3, keys: 2, spacing: 0, wantLen: 2},
		{name: "zero uses the default bound", maxKeys: 0, keys: detect.DefaultLimiterKeys + 10, spacing: 0, wantLen: detect.DefaultLimiterKeys},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &detect.Limiter{MaxKeys: tt.maxKeys}
			bound := tt.maxKeys
			if bound == 0 {
				bound = detect.DefaultLimiterKeys
			}
			for i := range tt.keys {
				key := "k" + strconv.Itoa(i)
				// A key the limiter does not remember lets its alert through.
				if ok, suppressed := l.Allow(at(time.Duration(i)*tt.spacing), key); !ok || suppressed != 0 {
					t.Fatalf("Allow(%q): got (%v, %v); want (%v, %v)", key, ok, suppressed, true, 0)
				}
				if n := l.Len(); n > bound {
					t.Fatalf("Len after %d keys: got %v; want <= %v", i+1, n, bound)
				}
			}
			if got := l.Len(); got != tt.wantLen {
				t.Errorf("Len: got %v; want %v", got, tt.wantLen)
			}
		})
	}
}

// TestLimiterEvictsExpiredFirst fills a limiter with one key whose interval
// has passed and several that still limit, then adds one more: the expired
// key must make room, so the live keys keep limiting and keep their counts.
// Were an arbitrary key evicted, a live one would go (4 chances in 5 per
// run, and the test runs with -count).
func TestLimiterEvictsExpiredFirst(t *testing.T) {
	tests := []struct {
		name    string
		maxKeys int
		live    int
	}{
		{name: "1 expired, 4 live", maxKeys: 5, live: 4},
		{name: "1 expired, 2 live", maxKeys: 3, live: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &detect.Limiter{Interval: time.Minute, MaxKeys: tt.maxKeys}
			if ok, _ := l.Allow(at(0), "expired"); !ok {
				t.Fatalf("Allow(expired): got %v; want %v", ok, true)
			}
			live := make([]string, tt.live)
			for i := range live {
				live[i] = "live" + strconv.Itoa(i)
				if ok, _ := l.Allow(at(40*time.Second), live[i]); !ok {
					t.Fatalf("Allow(%s): got %v; want %v", live[i], ok, true)
				}
				// One held alert each, to be reported later.
				if ok, _ := l.Allow(at(41*time.Second), live[i]); ok {
					t.Fatalf("second Allow(%s): got %v; want %v", live[i], ok, false)
				}
			}
			if got := l.Len(); got != tt.maxKeys {
				t.Fatalf("Len when full: got %v; want %v", got, tt.maxKeys)
			}
			// "expired" last passed at 0; at 70s its interval is over.
			if ok, _ := l.Allow(at(70*time.Second), "new"); !ok {
				t.Fatalf("Allow(new): got %v; want %v", ok, true)
			}
			if got := l.Len(); got > tt.maxKeys {
				t.Errorf("Len: got %v; want <= %v", got, tt.maxKeys)
			}
			for _, k := range live {
				if ok, _ := l.Allow(at(75*time.Second), k); ok {
					t.Errorf("Allow(%s) within its interval after eviction: got %v; want %v", k, ok, false)
				}
			}
			if ok, _ := l.Allow(at(80*time.Second), "new"); ok {
				t.Errorf("Allow(new) within its interval: got %v; want %v", ok, false)
			}
			// The live keys' held counts survived: 41s and 75s.
			for _, k := range live {
				if ok, suppressed := l.Allow(at(100*time.Second), k); !ok || suppressed != 2 {
					t.Errorf("Allow(%s) after its interval: got (%v, %v); want (%v, %v)", k, ok, suppressed, true, 2)
				}
			}
		})
	}
}

func TestLimiterConcurrentAllow(t *testing.T) {
	tests := []struct {
		name       string
		goroutines int
	}{
		{name: "8 goroutines", goroutines: 8},
		{name: "32 goroutines", goroutines: 32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &detect.Limiter{Interval: time.Minute}
			var (
				wg     sync.WaitGroup
				start  = make(chan struct{})
				mu     sync.Mutex
				passed int
			)
			for i := range tt.goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					// All within the one interval.
					ok, _ := l.Allow(at(time.Duration(i)*time.Millisecond), "stale_reuse/api.example.com")
					if ok {
						mu.Lock()
						passed++
						mu.Unlock()
					}
				}()
			}
			close(start)
			wg.Wait()
			if passed != 1 {
				t.Errorf("alerts let through: got %v; want %v", passed, 1)
			}
			ok, suppressed := l.Allow(at(2*time.Minute), "stale_reuse/api.example.com")
			if !ok || suppressed != tt.goroutines-1 {
				t.Errorf("next interval: got (%v, %v); want (%v, %v)", ok, suppressed, true, tt.goroutines-1)
			}
		})
	}
}
