package natsim

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxFlows bounds the connections a Proxy forwards at once (dialing or
// forwarding); connections accepted beyond it are closed at once.
const maxFlows = 1024

// Proxy is a TCP proxy on a loopback port that forwards every accepted
// connection to a target address through a [Flow] with the idle rule.
//
// A Proxy is created by [Listen]; the zero Proxy is not usable. All methods
// are safe for concurrent use.
type Proxy struct {
	ln      net.Listener
	target  string
	idle    time.Duration
	ctx     context.Context // canceled by Close, to abort dials in progress
	cancel  context.CancelFunc
	dropped atomic.Int64
	wg      sync.WaitGroup // the accept loop and dials in progress

	flowSet     // its mu also guards active
	active  int // accepted conns being dialed or forwarded, <= maxFlows

	closeOnce sync.Once
	closeErr  error
}

// Listen starts a Proxy on 127.0.0.1 at a free port. Each accepted
// connection is forwarded to target (a host:port dialed over TCP, once per
// accepted connection) and black-holed once it has been idle for longer than
// idle. Listen returns an error if idle <= 0 or if the listener cannot be
// created.
func Listen(target string, idle time.Duration) (*Proxy, error) {
	if idle <= 0 {
		return nil, fmt.Errorf("natsim: idle timeout must be positive, got %v", idle)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("natsim: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:     ln,
		target: target,
		idle:   idle,
		ctx:    ctx,
		cancel: cancel,
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the host:port clients dial to reach the target through the
// Proxy.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Dropped returns the number of flows black-holed so far.
func (p *Proxy) Dropped() int { return int(p.dropped.Load()) }

// Close stops accepting, closes every flow and waits for all the Proxy's
// goroutines to return. It is idempotent: later calls wait for the first to
// finish and return its error.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.closeErr = p.ln.Close()
		p.cancel()
		p.closeAll()
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			// Close, or a broken listener; either way stop accepting.
			// Flows already running are unaffected.
			return
		}
		if !p.reserve() {
			c.Close()
			continue
		}
		p.wg.Add(1)
		// Dial off the accept loop, so a slow target does not stall accepting.
		go p.connect(c)
	}
}

// reserve takes one of the maxFlows slots, if the Proxy is open.
func (p *Proxy) reserve() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.active >= maxFlows {
		return false
	}
	p.active++
	return true
}

// connect dials the target for the accepted conn c and joins the two.
func (p *Proxy) connect(c net.Conn) {
	defer p.wg.Done()
	var d net.Dialer
	s, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		// The target refused: closing c is what the client would see.
		c.Close()
		p.release(nil)
		return
	}
	f := newFlow(c, s, p.idle)
	f.onDrop = func() { p.dropped.Add(1) }
	f.onDone = func() { p.release(f) }
	p.mu.Lock()
	if !p.addLocked(f) {
		// Close ran while we were dialing and did not see this flow.
		p.active--
		p.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	p.mu.Unlock()
	f.start()
}

// release frees the slot of a failed dial (f == nil) or of a finished flow.
func (p *Proxy) release(f *Flow) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	if f != nil {
		p.removeLocked(f)
	}
}
