package probe

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// timerServer is an HTTP/1.1 server over loopback TCP with an idle timer
// of its own, ended the way the test asks: with a FIN (close) or a reset
// (SO_LINGER 0, then close), either while the connection idles, as nginx,
// HAProxy and Caddy do, or only when a request arrives after the timer, as
// lighttpd does (it answers that request with a FIN instead of a response).
type timerServer struct {
	idle    time.Duration
	reset   bool // end with a reset, not a FIN
	onReuse bool // end when a late request arrives, not while idle

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startTimerServer(t *testing.T, idle time.Duration, reset, onReuse bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &timerServer{idle: idle, reset: reset, onReuse: onReuse, ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Go(s.accept)
	t.Cleanup(s.close)
	return "http://" + ln.Addr().String() + "/"
}

func (s *timerServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Go(func() { s.serve(c) })
	}
}

func (s *timerServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *timerServer) end(c net.Conn) {
	if s.reset {
		c.(*net.TCPConn).SetLinger(0)
	}
	c.Close()
}

func (s *timerServer) serve(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	br := bufio.NewReader(c)
	var answered time.Time
	for {
		if !s.onReuse && !answered.IsZero() {
			c.SetReadDeadline(answered.Add(s.idle))
		}
		req, err := http.ReadRequest(br)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			s.end(c) // the idle timer, while idle
			return
		case err != nil:
			c.Close()
			return
		}
		io.Copy(io.Discard, req.Body)
		if s.onReuse && !answered.IsZero() && time.Since(answered) > s.idle {
			s.end(c) // a request after the timer: no answer
			return
		}
		c.SetReadDeadline(time.Time{})
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"); err != nil {
			c.Close()
			return
		}
		answered = time.Now()
	}
}

// TestRunTellsFINFromReset: a server's own idle timer (a FIN) and a reset
// (a firewall or load balancer that forgets flows) are both "closed by
// peer", but they read differently, and only the reset gets TCP
// keep-alive advice: probes cannot beat a server's timer. On real sockets,
// over loopback; the cases run in parallel, in about 2 s. The idle periods
// are above a second, or the kernel's whole seconds rule keep-alive out.
func TestRunTellsFINFromReset(t *testing.T) {
	const serverIdle = 1500 * time.Millisecond
	tests := []struct {
		name      string
		reset     bool
		onReuse   bool
		wantHow   string
		wantEnd   End
		wantKind  string
		keepAlive bool // keep-alive advised
	}{
		{"FIN while idle (nginx, HAProxy, Caddy)", false, false, HowClosedIdle, EndFIN,
			"Kind: closed by peer (FIN while idle). The server, or an HTTP proxy", false},
		{"FIN on reuse (lighttpd)", false, true, HowClosedOnReuse, EndFIN,
			"Kind: closed by peer (FIN on reuse). The server, or an HTTP proxy", false},
		{"reset while idle", true, false, HowClosedIdle, EndReset,
			"Kind: closed by peer (reset while idle). A reset ends connections", true},
		{"reset on reuse (a firewall that forgot the flow)", true, true, HowClosedOnReuse, EndReset,
			"Kind: closed by peer (reset on reuse). A connection reused after this long is reset", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			url := startTimerServer(t, serverIdle, tt.reset, tt.onReuse)
			rep, err := Run(t.Context(), Config{
				URL:        url,
				Ladder:     []time.Duration{1200 * time.Millisecond, 2 * time.Second},
				Max:        2 * time.Second,
				Resolution: time.Second, // the ladder's bracket is enough
				Timeout:    2 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			rep.WriteText(&text)
			b := rep.Bracket
			if b == nil || b.Kind != ClosedByPeer || b.Low != 1200*time.Millisecond || b.High != 2*time.Second {
				t.Fatalf("bracket %+v; want (1.2s, 2s], closed by peer; report:\n%s", b, text.String())
			}
			if b.How != tt.wantHow || b.End != tt.wantEnd {
				t.Errorf("bracket how %q, end %q; want %q, %q", b.How, b.End, tt.wantHow, tt.wantEnd)
			}
			var j struct {
				Bracket struct{ How, End string }
			}
			if raw, err := json.Marshal(rep); err != nil || json.Unmarshal(raw, &j) != nil ||
				j.Bracket.How != tt.wantHow || j.Bracket.End != string(tt.wantEnd) {
				t.Errorf("JSON bracket %+v (%v); want how %q, end %q", j.Bracket, err, tt.wantHow, tt.wantEnd)
			}
			if !strings.Contains(text.String(), "\n"+tt.wantKind) {
				t.Errorf("report lacks %q:\n%s", tt.wantKind, text.String())
			}
			a := rep.Advice
			if a == nil || a.IdleConnTimeout >= serverIdle {
				t.Fatalf("advice %+v; want an IdleConnTimeout below %v", a, serverIdle)
			}
			advised := strings.Contains(text.String(), "dialer.KeepAliveConfig")
			if (a.KeepAliveIdle > 0) != tt.keepAlive || advised != tt.keepAlive {
				t.Errorf("keep-alive advised: %v (KeepAliveIdle %v); want %v; report:\n%s", advised, a.KeepAliveIdle, tt.keepAlive, text.String())
			}
			if !tt.keepAlive && !strings.Contains(text.String(), "// TCP keep-alive does not help here: a FIN is the server's") {
				t.Errorf("report does not say why keep-alive cannot help against a FIN:\n%s", text.String())
			}
			if tt.keepAlive != (a.NATIdleTimeout > 0) {
				t.Errorf("NATIdleTimeout %v; want it set only for a reset", a.NATIdleTimeout)
			}
		})
	}
}

// TestRunHTTPSServerClosesIdle: over TLS a server's orderly close is a
// close_notify, which *tls.Conn reads in place of the FIN behind it; it is
// still a FIN, the server's own timer.
func TestRunHTTPSServerClosesIdle(t *testing.T) {
	srv := httptest.NewUnstartedServer(hello)
	srv.Config.IdleTimeout = time.Second
	srv.StartTLS()
	defer srv.Close()
	rep, err := Run(t.Context(), Config{
		URL:             srv.URL,
		TLSClientConfig: srv.Client().Transport.(*http.Transport).TLSClientConfig,
		Ladder:          []time.Duration{500 * time.Millisecond, 2 * time.Second},
		Max:             2 * time.Second,
		Resolution:      2 * time.Second, // the ladder's bracket is enough
	})
	if err != nil {
		t.Fatal(err)
	}
	if b := rep.Bracket; b == nil || b.Kind != ClosedByPeer || b.How != HowClosedIdle || b.End != EndFIN {
		t.Errorf("bracket %+v; want closed by peer, while idle, with a FIN; rungs:\n%s", b, rungTable(rep))
	}
	if a := rep.Advice; a == nil || a.KeepAliveIdle != 0 || a.NoKeepAlive != finNoKeepAlive {
		t.Errorf("advice %+v; want no keep-alive, for a FIN", a)
	}
}
