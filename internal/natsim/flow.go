package natsim

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// bufSize is the size of the one copy buffer each direction of a flow owns.
const bufSize = 32 << 10

// Flow forwards bytes between two connections until it has been idle for
// longer than its idle timeout, and black-holes both directions after that.
//
// A Flow is created by [Join]; the zero Flow is not usable. All methods are
// safe for concurrent use.
type Flow struct {
	a, b net.Conn
	idle time.Duration

	// Hooks for Proxy and Network; set before start, may be nil.
	onDrop func() // called once, when the flow is black-holed
	onDone func() // called once, after both directions have ended, before done is closed

	mu      sync.Mutex
	last    time.Time // last time something was forwarded, in either direction
	dropped bool

	running   atomic.Int32 // directions still forwarding
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Join forwards bytes between a and b, two already-connected conns, until
// the flow has been idle (nothing forwarded in either direction) for longer
// than idle; from then on everything from both sides is read and discarded.
//
// Join returns at once; forwarding runs on two goroutines until [Flow.Close]
// is called or both directions have ended, and then both conns are closed.
// Join takes ownership of a and b: the caller must not read from or write to
// them any more. Join panics if a or b is nil or if idle <= 0.
func Join(a, b net.Conn, idle time.Duration) *Flow {
	f := newFlow(a, b, idle)
	f.start()
	return f
}

func newFlow(a, b net.Conn, idle time.Duration) *Flow {
	if a == nil || b == nil {
		panic("natsim: Join with a nil net.Conn")
	}
	if idle <= 0 {
		panic(fmt.Sprintf("natsim: idle timeout must be positive, got %v", idle))
	}
	return &Flow{a: a, b: b, idle: idle, last: time.Now(), done: make(chan struct{})}
}

func (f *Flow) start() {
	f.running.Store(2)
	go f.pump(f.a, f.b)
	go f.pump(f.b, f.a)
}

// Dropped reports whether the flow has been black-holed. Once true it stays
// true.
func (f *Flow) Dropped() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped
}

// Done returns a channel that is closed once both forwarding goroutines have
// returned and both conns are closed.
func (f *Flow) Done() <-chan struct{} { return f.done }

// Close closes both conns and waits for the forwarding goroutines to return.
// It is idempotent: later calls wait the same way and return the first
// call's error. Closing a conn that the flow had already closed is not an
// error.
func (f *Flow) Close() error {
	f.closeOnce.Do(func() {
		f.closeErr = errors.Join(ignoreClosed(f.a.Close()), ignoreClosed(f.b.Close()))
	})
	<-f.done
	return f.closeErr
}

// pass applies the idle rule to something (bytes or end-of-stream) that just
// arrived. It reports whether it may be forwarded, and marks the flow
// dropped when it is the first arrival after an idle period > f.idle.
// A gap of exactly f.idle is still alive.
func (f *Flow) pass() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dropped {
		return false
	}
	now := time.Now()
	if now.Sub(f.last) > f.idle {
		f.dropped = true
		if f.onDrop != nil {
			f.onDrop()
		}
		return false
	}
	f.last = now
	return true
}

// pump copies src to dst like io.CopyBuffer, applying the idle rule to each
// read, and then ends the direction according to how src ended.
func (f *Flow) pump(src, dst net.Conn) {
	defer f.pumpDone()
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 && f.pass() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				// dst is gone (reset, or closed by Close or by the other
				// direction). While alive, a real NAT would pass dst's RST on to
				// src; closing both is the nearest userspace equivalent.
				dst.Close()
				if !f.Dropped() {
					src.Close()
					return
				}
				// Dropped meanwhile: src must learn nothing, so keep
				// swallowing what it sends until it ends or Close.
			}
		}
		if err != nil {
			f.end(src, dst, err)
			return
		}
	}
}

// end handles the read error that ended the src->dst direction.
func (f *Flow) end(src, dst net.Conn, err error) {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
		// src was closed on our side (Close, or the other direction shutting
		// down); nothing arrived from src's peer, so there is nothing to pass on.
		return
	}
	// EOF (a FIN) or a reset from src's peer. These are packets too, so they
	// obey the idle rule: a NAT that forgot the flow swallows them, and the
	// other side learns nothing.
	if !f.pass() {
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == io.EOF {
		// Half-close, so that dst's peer sees the FIN but can still answer.
		cw.CloseWrite()
		return
	}
	// No half-close (net.Pipe) or a reset: closing is the nearest equivalent.
	dst.Close()
}

// pumpDone runs when one direction ends; the last one releases the conns
// (half-closed TCP conns still hold file descriptors) and reports done.
func (f *Flow) pumpDone() {
	if f.running.Add(-1) > 0 {
		return
	}
	f.a.Close()
	f.b.Close()
	if f.onDone != nil {
		f.onDone()
	}
	close(f.done)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
		return nil
	}
	return err
}
