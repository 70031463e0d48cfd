package natsim

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/conntrace/conntrace/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// server is a TCP server on 127.0.0.1:0 for the tests. It records every
// byte it receives; Cleanup closes it and waits for its goroutines.
type server struct {
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
	got   testkit.SyncBuffer // every byte received
}

// startServer runs handle on a goroutine for every accepted conn; handle
// should read through s.record so the test can see what arrived.
func startServer(t *testing.T, handle func(s *server, c net.Conn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Go(func() {
				defer c.Close()
				handle(s, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) record(p []byte) { s.got.Write(p) }

func (s *server) received() string { return s.got.String() }

// echo writes back everything it reads.
func echo(s *server, c net.Conn) {
	buf := make([]byte, 1024)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			s.record(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func listen(t *testing.T, target string, idle time.Duration) *Proxy {
	t.Helper()
	p, err := Listen(target, idle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes msg and reads len(msg) bytes back.
func roundTrip(c net.Conn, msg string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	n, err := io.ReadFull(c, buf)
	return string(buf[:n]), err
}

func TestProxyForwardsWhileActive(t *testing.T) {
	tests := []struct {
		name string
		msgs []string
		gap  time.Duration // pause before each message, well within idle
	}{
		{"one message", []string{"hello"}, 0},
		{"several messages", []string{"a", "bb", "ccc"}, 20 * time.Millisecond},
		{"large message", []string{strings.Repeat("x", 3*bufSize+7)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, echo)
			p := listen(t, srv.addr(), 5*time.Second)
			c := dial(t, p.Addr())
			for _, msg := range tt.msgs {
				// Wall clock on purpose: Proxy is natsim over real sockets (Flow's rule has fake-time tests below).
				time.Sleep(tt.gap)
				got, err := roundTrip(c, msg)
				if err != nil {
					t.Fatalf("round trip: %v", err)
				}
				if got != msg {
					t.Errorf("got %q; want %q", short(got), short(msg))
				}
			}
			if got, want := srv.received(), strings.Join(tt.msgs, ""); got != want {
				t.Errorf("server received %q; want %q", short(got), short(want))
			}
			if got, want := p.Dropped(), 0; got != want {
				t.Errorf("Dropped() = %d; want %d", got, want)
			}
		})
	}
}

func short(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

func TestProxyBlackHolesIdleFlow(t *testing.T) {
	srv := startServer(t, echo)
	p := listen(t, srv.addr(), 100*time.Millisecond)
	c := dial(t, p.Addr())
	if got, err := roundTrip(c, "ping"); err != nil || got != "ping" {
		t.Fatalf("first round trip: got %q, %v; want %q, nil", got, err, "ping")
	}

	// Wall clock on purpose: Proxy's idle rule over real sockets; TestFlowIdleBoundary checks it exactly.
	time.Sleep(250 * time.Millisecond)
	if _, err := io.WriteString(c, "late"); err != nil {
		t.Fatalf("write after idle: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	n, err := c.Read(make([]byte, 16))
	// A timeout, not EOF or a reset: the NAT says nothing.
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read after idle: got %d bytes, err %v; want %v", n, err, os.ErrDeadlineExceeded)
	}
	if got, want := srv.received(), "ping"; got != want {
		t.Errorf("server received %q; want %q", got, want)
	}
	if got, want := p.Dropped(), 1; got != want {
		t.Errorf("Dropped() = %d; want %d", got, want)
	}
}

func TestProxyPassesFIN(t *testing.T) {
	tests := []struct {
		name   string
		handle func(s *server, c net.Conn)
		send   string // written by the client, which then half-closes
		want   string // everything the client reads before EOF
	}{
		{
			name: "server closes",
			handle: func(s *server, c net.Conn) {
				io.WriteString(c, "bye")
			},
			want: "bye",
		},
		{
			name: "client half-closes, server answers",
			handle: func(s *server, c net.Conn) {
				b, _ := io.ReadAll(c) // returns at the client's FIN
				s.record(b)
				io.WriteString(c, "got "+string(b))
			},
			send: "question",
			want: "got question",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := startServer(t, tt.handle)
			p := listen(t, srv.addr(), 5*time.Second)
			c := dial(t, p.Addr())
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if tt.send != "" {
				if _, err := io.WriteString(c, tt.send); err != nil {
					t.Fatal(err)
				}
				if err := c.(*net.TCPConn).CloseWrite(); err != nil {
					t.Fatal(err)
				}
			}
			got, err := io.ReadAll(c) // nil error means EOF arrived
			if err != nil {
				t.Fatalf("read: %v; want EOF", err)
			}
			if string(got) != tt.want {
				t.Errorf("got %q; want %q", got, tt.want)
			}
		})
	}
}

func TestListenRejectsNonPositiveIdle(t *testing.T) {
	for _, idle := range []time.Duration{0, -time.Second} {
		p, err := Listen("127.0.0.1:1", idle)
		if err == nil {
			p.Close()
			t.Errorf("Listen(idle=%v): got nil error; want one", idle)
			continue
		}
		if !strings.Contains(err.Error(), idle.String()) {
			t.Errorf("Listen(idle=%v): got %q; want it to name %q", idle, err, idle)
		}
	}
}

func TestProxyCloseWithOpenFlows(t *testing.T) {
	srv := startServer(t, echo)
	p, err := Listen(srv.addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var clients []net.Conn
	for range 3 {
		c := dial(t, p.Addr())
		if _, err := roundTrip(c, "x"); err != nil { // the flow now exists
			t.Fatal(err)
		}
		clients = append(clients, c)
	}

	start := time.Now()
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v; want it prompt", d)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("client %d read after Close: got %v; want %v", i, err, io.EOF)
		}
	}
	p.mu.Lock()
	n := len(p.flows)
	p.mu.Unlock()
	if n != 0 {
		t.Errorf("flows after Close: got %d; want 0", n)
	}
	// The server's conns end when the proxy closes its side.
	srv.ln.Close()
	srv.wg.Wait()
	goleak.VerifyNone(t)
}

func TestProxyForgetsFinishedFlows(t *testing.T) {
	srv := startServer(t, echo)
	p := listen(t, srv.addr(), 5*time.Second)
	c := dial(t, p.Addr())
	if _, err := roundTrip(c, "x"); err != nil {
		t.Fatal(err)
	}
	c.Close() // echo sees EOF and closes too, so both directions end
	// Wall clock on purpose: the proxy's goroutines end on real sockets' EOFs.
	var flows, active int
	if !testkit.Eventually(5*time.Second, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		flows, active = len(p.flows), p.active
		return flows == 0 && active == 0
	}) {
		t.Fatalf("got %d flows, %d active; want 0, 0", flows, active)
	}
}

// TestFlowIdleBoundary checks the rule at fake-time precision: a gap of
// exactly idle keeps the flow, one nanosecond more black-holes it, including
// the EOF from a later close.
func TestFlowIdleBoundary(t *testing.T) {
	const idle = 10 * time.Second
	tests := []struct {
		name        string
		gap         time.Duration
		wantDropped bool
	}{
		{"gap equal to idle", idle, false},
		{"gap one ns over idle", idle + time.Nanosecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client, natA := net.Pipe()
				natB, srv := net.Pipe()
				f := Join(natA, natB, idle)

				// read returns what arrives on c within a fake second.
				read := func(c net.Conn) (string, error) {
					c.SetReadDeadline(time.Now().Add(time.Second))
					buf := make([]byte, 16)
					n, err := c.Read(buf)
					return string(buf[:n]), err
				}
				send := func(c net.Conn, msg string) {
					if _, err := io.WriteString(c, msg); err != nil {
						t.Errorf("write %q: %v", msg, err)
					}
				}

				go send(client, "one")
				if got, err := read(srv); got != "one" {
					t.Fatalf("first message: got %q, %v; want %q", got, err, "one")
				}
				time.Sleep(tt.gap)
				send(client, "two") // returns once the NAT has read it
				send(srv, "back")
				gotSrv, _ := read(srv)
				gotClient, _ := read(client)
				client.Close()
				_, errEOF := read(srv) // EOF if the FIN passes, a timeout if not

				wantSrv, wantClient, wantErr := "", "", os.ErrDeadlineExceeded
				if !tt.wantDropped {
					// "back" waits until the NAT's write of "two" is read, so no
					// concurrent read mixes them up.
					wantSrv, wantClient, wantErr = "two", "back", io.EOF
				}
				if gotSrv != wantSrv {
					t.Errorf("server got %q; want %q", gotSrv, wantSrv)
				}
				if gotClient != wantClient {
					t.Errorf("client got %q; want %q", gotClient, wantClient)
				}
				if !errors.Is(errEOF, wantErr) {
					t.Errorf("server read after client close: got %v; want %v", errEOF, wantErr)
				}
				if got := f.Dropped(); got != tt.wantDropped {
					t.Errorf("Dropped() = %t; want %t", got, tt.wantDropped)
				}

				srv.Close()
				for range 2 { // idempotent
					if err := f.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				}
				select {
				case <-f.Done():
				default:
					t.Errorf("Done not closed after Close")
				}
			})
		})
	}
}

// TestNetworkHTTPReuse is the scenario the package exists for: an HTTP client
// reuses a keep-alive connection after the NAT forgot it.
func TestNetworkHTTPReuse(t *testing.T) {
	const idle = 350 * time.Second
	tests := []struct {
		name        string
		sleep       time.Duration
		wantErr     error
		wantDropped int
	}{
		{"reuse after NAT timeout hangs", 351 * time.Second, context.DeadlineExceeded, 1},
		{"reuse within NAT timeout works", 100 * time.Second, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// Everything in the bubble must end before it returns: the
				// cleanups close the client's pool, the server, then the
				// network.
				n := NewNetwork(idle)
				t.Cleanup(func() { n.Close() })
				testkit.Serve(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "ok")
				})}, n.Listener())
				tr := &http.Transport{DialContext: n.DialContext}
				t.Cleanup(tr.CloseIdleConnections)
				client := &http.Client{Transport: tr}

				// get does one request with a 30s deadline and reports whether
				// it reused a connection.
				get := func() (reused bool, err error) {
					ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
					defer cancel()
					ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
						GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
					})
					req, err := http.NewRequestWithContext(ctx, "GET", "http://backend.test/", nil)
					if err != nil {
						return false, err
					}
					resp, err := client.Do(req)
					if err != nil {
						return reused, err
					}
					defer resp.Body.Close()
					body, err := io.ReadAll(resp.Body)
					if err == nil && string(body) != "ok" {
						err = errors.New("unexpected body " + string(body))
					}
					return reused, err
				}

				if _, err := get(); err != nil {
					t.Fatalf("first request: %v", err)
				}
				time.Sleep(tt.sleep)
				start := time.Now()
				reused, err := get()
				if !reused {
					t.Errorf("second request did not reuse the connection")
				}
				if tt.wantErr == nil && err != nil {
					t.Errorf("second request: %v", err)
				}
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Errorf("second request: got %v; want %v", err, tt.wantErr)
					}
					if got, want := time.Since(start), 30*time.Second; got != want {
						t.Errorf("second request failed after %v; want %v", got, want)
					}
				}
				if got := n.Dropped(); got != tt.wantDropped {
					t.Errorf("Dropped() = %d; want %d", got, tt.wantDropped)
				}
			})
		})
	}
}

func TestNetworkClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewNetwork(time.Minute)
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := n.Listener().Accept()
			if err != nil {
				t.Errorf("Accept: %v", err)
			}
			accepted <- c
		}()
		c, err := n.DialContext(t.Context(), "tcp", "anything:80")
		if err != nil {
			t.Fatal(err)
		}
		s := <-accepted

		n.Close()
		n.Close()
		// Both ends see EOF: the NAT in between is gone.
		for name, conn := range map[string]net.Conn{"client": c, "server": s} {
			if _, err := conn.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("%s read after Close: got %v; want %v", name, err, io.EOF)
			}
			conn.Close()
		}
		if _, err := n.Listener().Accept(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: got %v; want %v", err, net.ErrClosed)
		}
		if _, err := n.DialContext(t.Context(), "tcp", "anything:80"); !errors.Is(err, net.ErrClosed) {
			t.Errorf("DialContext after Close: got %v; want %v", err, net.ErrClosed)
		}
	})
}

func TestNetworkDialWaitsForAccept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewNetwork(time.Minute)
		defer n.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start := time.Now()
		// Nobody calls Accept, so the dial waits for its context.
		c, err := n.DialContext(ctx, "tcp", "anything:80")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("DialContext: got %v, %v; want %v", c, err, context.DeadlineExceeded)
		}
		if got, want := time.Since(start), 5*time.Second; got != want {
			t.Errorf("DialContext failed after %v; want %v", got, want)
		}
		n.mu.Lock()
		flows := len(n.flows)
		n.mu.Unlock()
		if flows != 0 {
			t.Errorf("flows after failed dial: got %d; want 0", flows)
		}
	})
}
