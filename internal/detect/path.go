package detect

import (
	"fmt"
	"sync"
	"time"

	"github.com/conntrace/conntrace/internal/advice"
)

// DefaultPathHosts bounds the servers a [PathTimeouts] remembers.
const DefaultPathHosts = 1024

// Bracket is what is known of the idle timeout of the path to one server:
// it lies in (Lower, Upper]. Lower is the longest wire idle time after which
// a reused connection was seen alive, Upper the shortest after which one
// was seen dead; zero means not seen yet.
type Bracket struct {
	Lower, Upper time.Duration
}

// String describes b for people: "between 3.9s and 6s", "above 3.9s",
// "6s or less", or "unknown".
func (b Bracket) String() string {
	switch {
	case b.Lower > 0 && b.Upper > 0:
		return fmt.Sprintf("between %s and %s", advice.Round(b.Lower), advice.Round(b.Upper))
	case b.Lower > 0:
		return fmt.Sprintf("above %s", advice.Round(b.Lower))
	case b.Upper > 0:
		return fmt.Sprintf("%s or less", advice.Round(b.Upper))
	}
	return "unknown"
}

// Limit is the idle time a pooled connection on the path must stay below,
// as the advice gives it: the lower bound where both are known (a
// connection survived that long; one died not much later), else the upper
// bound (one died after that idle time), else natIdle, the configured NAT
// idle timeout. A lone lower bound says nothing of a limit: natIdle holds.
func (b Bracket) Limit(natIdle time.Duration) time.Duration {
	switch {
	case b.Upper > 0 && b.Lower > 0:
		return b.Lower
	case b.Upper > 0:
		return b.Upper
	}
	return natIdle
}

// PathTimeouts learns the idle timeout of the path to each server from the
// stale-reuse verdicts on its reused connections: the wire idle time of
// every connection that carried a request (alive) and of every one that
// did not (dead, by kernel evidence, or failed or retried). When new
// evidence contradicts a bound (a connection alive at or past Upper, dead
// at or below Lower) the newest wins: the path, or its NAT, has changed.
//
// Its memory is bounded: beyond MaxHosts servers it forgets the one it
// learned of first, in constant time (a client calling more servers than
// that, each after a second of idle, gives a verdict, and so makes room,
// on nearly every request). The zero value is ready to use. A PathTimeouts is safe for
// concurrent use; it is locked when a verdict is given (at most once per
// connection per second of idle), when it is read, and while stale_reuse
// waits for a verdict, at each of its kernel readings.
type PathTimeouts struct {
	MaxHosts int // zero means DefaultPathHosts

	mu    sync.Mutex
	paths map[poolKey]*path
	// order holds the servers of paths, and their paths, in the order they
	// were learned: once the table is full, a ring whose oldest is at
	// order[next].
	order []learned
	next  int
}

type learned struct {
	key  poolKey
	path *path
}

// path is what is known of one server's path.
type path struct {
	Bracket
	lossy time.Time // when a connection to it last showed loss
}

// lossyFor is how long a path that lost packets is doubted: a dead verdict
// on it asks for stronger kernel evidence.
const lossyFor = 5 * time.Minute

// Alive records that a connection to host:port carried a request after
// sitting idle on the wire for idle.
func (p *PathTimeouts) Alive(host string, port int, idle time.Duration) {
	p.update(host, port, func(b *path) {
		b.Lower = max(b.Lower, idle)
		if b.Upper > 0 && idle >= b.Upper {
			b.Upper = 0
		}
	})
}

// Dead records that a connection to host:port idle on the wire for idle
// could no longer carry a request.
func (p *PathTimeouts) Dead(host string, port int, idle time.Duration) {
	p.update(host, port, func(b *path) {
		if b.Upper == 0 || idle < b.Upper {
			b.Upper = idle
		}
		if idle <= b.Lower {
			b.Lower = 0
		}
	})
}

// lossyAt records that a connection to host:port showed, at now, that its
// path loses packets.
func (p *PathTimeouts) lossyAt(host string, port int, now time.Time) {
	p.update(host, port, func(b *path) { b.lossy = now })
}

// lossySince reports whether a connection to host:port showed loss in the
// lossyFor before now.
func (p *PathTimeouts) lossySince(host string, port int, now time.Time) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.paths[poolKey{host, port}]
	return b != nil && !b.lossy.IsZero() && now.Sub(b.lossy) < lossyFor
}

func (p *PathTimeouts) update(host string, port int, f func(*path)) {
	if p == nil || host == "" {
		return
	}
	k := poolKey{host, port}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paths == nil {
		p.paths = make(map[poolKey]*path)
	}
	b := p.paths[k]
	if b == nil {
		b = p.makeRoom(k)
		p.paths[k] = b
	}
	f(b)
}

// makeRoom makes room for k, a server not in the table, forgetting the
// server learned of first if the table is full, and returns a zeroed path
// for k: the forgotten one's, so that a client calling more servers than
// the table holds does not allocate for each verdict. p.mu is held.
func (p *PathTimeouts) makeRoom(k poolKey) *path {
	if len(p.order) < p.maxHosts() {
		b := new(path)
		p.order = append(p.order, learned{k, b})
		return b
	}
	oldest := &p.order[p.next]
	p.next = (p.next + 1) % len(p.order)
	delete(p.paths, oldest.key)
	oldest.key = k
	*oldest.path = path{}
	return oldest.path
}

func (p *PathTimeouts) maxHosts() int {
	if p.MaxHosts > 0 {
		return p.MaxHosts
	}
	return DefaultPathHosts
}

// Get returns what is known of the path to host:port. It is safe on a nil
// *PathTimeouts, which knows nothing.
func (p *PathTimeouts) Get(host string, port int) Bracket {
	if p == nil {
		return Bracket{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.paths[poolKey{host, port}]; b != nil {
		return b.Bracket
	}
	return Bracket{}
}

// Each calls f for every server with a bracket, in no particular order,
// with p locked: f must not call p's methods.
func (p *PathTimeouts) Each(f func(host string, port int, b Bracket)) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, b := range p.paths {
		if b.Lower > 0 || b.Upper > 0 {
			f(k.host, k.port, b.Bracket)
		}
	}
}

// aliveAt reports whether the path to host:port has carried a request
// after at least idle on the wire.
func (p *PathTimeouts) aliveAt(host string, port int, idle time.Duration) bool {
	return p.Get(host, port).Lower >= idle
}
