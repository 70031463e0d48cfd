package natsim

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Network is an in-memory network of one server behind a NAT with the idle
// rule. It uses no sockets, only [net.Pipe]s, so it works inside a
// testing/synctest bubble, where fake time can advance through long idle
// periods (a goroutine blocked on a loopback socket would keep the bubble
// from ever becoming idle, so the fake clock would not move).
//
// Each dial builds client <-pipe-> NAT <-pipe-> server, joins the two NAT
// ends with a [Flow] and hands the server end to [Network.Listener].
//
// A Network is created by [NewNetwork]; the zero Network is not usable.
// Inside a synctest bubble, create and close it inside the same bubble.
// All methods are safe for concurrent use.
type Network struct {
	idle    time.Duration
	ln      *listener
	dropped atomic.Int64

	flowSet

	closeOnce sync.Once
}

// NewNetwork returns a Network whose flows are black-holed once idle for
// longer than idle. It panics if idle <= 0.
func NewNetwork(idle time.Duration) *Network {
	if idle <= 0 {
		panic("natsim: NewNetwork: idle timeout must be positive, got " + idle.String())
	}
	return &Network{
		idle: idle,
		ln: &listener{
			conns: make(chan net.Conn),
			done:  make(chan struct{}),
		},
	}
}

// DialContext connects to the Network's listener, whatever network and addr
// say, so it can be used as [net/http.Transport.DialContext]. It blocks until
// [Network.Listener]'s Accept takes the connection, ctx is done, or the
// listener is closed; the latter two return a *net.OpError.
func (n *Network) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	client, natA := net.Pipe()
	natB, server := net.Pipe()
	f := newFlow(natA, natB, n.idle)
	f.onDrop = func() { n.dropped.Add(1) }
	f.onDone = func() {
		n.mu.Lock()
		n.removeLocked(f)
		n.mu.Unlock()
	}

	var err error
	n.mu.Lock()
	if !n.addLocked(f) {
		err = net.ErrClosed
	}
	n.mu.Unlock()
	if err == nil {
		f.start()
		select {
		case n.ln.conns <- server:
			return &dialedConn{Conn: client, remote: dialedAddr{network, addr}}, nil
		case <-n.ln.done:
			err = errors.New("connection refused: natsim listener closed")
		case <-ctx.Done():
			err = ctx.Err()
		}
		f.Close()
	} else {
		natA.Close()
		natB.Close()
	}
	client.Close()
	server.Close()
	return nil, &net.OpError{Op: "dial", Net: network, Addr: n.ln.Addr(), Err: err}
}

// Listener returns the Network's listener. Its Accept returns the server ends
// of dialed connections; Close makes Accept (and later dials) fail with
// [net.ErrClosed]; Addr is a fixed pseudo address. Every call returns the
// same listener.
func (n *Network) Listener() net.Listener { return n.ln }

// Dropped returns the number of flows black-holed so far.
func (n *Network) Dropped() int { return int(n.dropped.Load()) }

// Close closes the listener and every flow, and waits for the flows'
// goroutines to return. The client and server ends of the closed flows see
// EOF. Close is idempotent and always returns nil.
func (n *Network) Close() error {
	n.closeOnce.Do(func() {
		n.ln.Close()
		n.closeAll()
	})
	return nil
}

// listener is the net.Listener of a Network.
type listener struct {
	conns chan net.Conn // unbuffered: a dial waits for Accept, like a full backlog
	done  chan struct{}
	once  sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "natsim", Addr: l.Addr(), Err: net.ErrClosed}
	}
}

func (l *listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *listener) Addr() net.Addr { return pseudoAddr{} }

// pseudoAddr is the fixed address of a Network's listener.
type pseudoAddr struct{}

func (pseudoAddr) Network() string { return "natsim" }
func (pseudoAddr) String() string  { return "natsim:0" }

// dialedConn is the client end of a flow. Its RemoteAddr is the address
// that was dialled, as a socket's would be, rather than net.Pipe's "pipe".
type dialedConn struct {
	net.Conn
	remote dialedAddr
}

func (c *dialedConn) RemoteAddr() net.Addr { return c.remote }

// dialedAddr is an address as given to DialContext.
type dialedAddr struct{ network, addr string }

func (a dialedAddr) Network() string { return a.network }
func (a dialedAddr) String() string  { return a.addr }
