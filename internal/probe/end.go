package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// End is how the peer ended a connection that it closed: the values of
// Rung.End and Bracket.End.
type End string

// Ends of a connection closed by the peer. Only a reset (or silence) points
// at a middlebox: a FIN is an orderly close by the other end's own idle
// timer, which TCP keep-alive cannot reset.
const (
	// EndFIN: a read returned io.EOF. The server, or an HTTP proxy or load
	// balancer in front of it, closed the connection in order: its own
	// keep-alive idle timeout.
	EndFIN End = "fin"
	// EndReset: a read failed with a reset (ECONNRESET). A firewall or load
	// balancer that forgot the flow, or a server that aborts its idle
	// connections (SO_LINGER 0).
	EndReset End = "reset"
	// EndUnknown: the connection ended, but its reads saw neither a FIN nor
	// a reset (another error, or none: the end was not seen).
	EndUnknown End = ""
)

// Label is e for people: "FIN", "reset", or "" when unknown.
func (e End) Label() string {
	if e == EndFIN {
		return "FIN"
	}
	return string(e)
}

// endOf tells a FIN from a reset by the error a read returned.
func endOf(err error) End {
	switch {
	case err == nil:
		return EndUnknown
	case errors.Is(err, io.EOF):
		return EndFIN
	}
	for _, r := range resetErrors {
		if errors.Is(err, r) {
			return EndReset
		}
	}
	return EndUnknown
}

// watchedConn is a rung's connection; it keeps the first error its reads
// returned. net/http reads an HTTP/1 connection from its own goroutine
// (persistConn.readLoop) all along, also while the connection idles in the
// pool, so that error is how the peer ended it, whenever it did: while idle
// (net/http then drops it from the pool and dials anew) or in answer to the
// reused request (net/http then retries an idempotent one). Either way
// net/http keeps the difference to itself (its errServerClosedIdle and
// transportReadFromServerError are unexported, and a retry returns no
// error at all), so the probe looks below it.
type watchedConn struct {
	net.Conn
	mu      sync.Mutex
	readErr error
}

type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// watch wraps the connections dial returns in a watchedConn.
func watch(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil || c == nil {
			return c, err
		}
		return &watchedConn{Conn: c}, nil
	}
}

// watchTLS dials with dial, makes the TLS handshake, and watches the
// *tls.Conn: a peer that closes a TLS connection in order sends a
// close_notify alert before its FIN (Go's servers do), and *tls.Conn
// returns io.EOF for it without reading the FIN, so only above TLS is the
// close seen. A box on the path cannot forge a close_notify.
func watchTLS(dial dialFunc, cfg *tls.Config, timeout time.Duration) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := cfg.Clone()
		if c == nil {
			c = &tls.Config{}
		}
		if c.ServerName == "" {
			// As net/http does: the host of the address dialled.
			if host, _, err := net.SplitHostPort(addr); err == nil {
				c.ServerName = host
			}
		}
		c.NextProtos = []string{"http/1.1"}
		hctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		tc := tls.Client(raw, c)
		if err := tc.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, err
		}
		return &watchedConn{Conn: tc}, nil
	}
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		if c.readErr == nil {
			c.readErr = err
		}
		c.mu.Unlock()
	}
	return n, err
}

// ended returns the first error the connection's reads returned, or nil.
func (c *watchedConn) ended() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// NetConn returns the dialled connection: conntrace reads the socket's
// state through it.
func (c *watchedConn) NetConn() net.Conn { return c.Conn }
