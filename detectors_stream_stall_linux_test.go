package conntrace

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/vocab"
)

// TestStreamStallAliveOnLoopback: on a real socket whose path never
// forgets (loopback), a stream silent past a short configured NAT idle
// timeout is judged with a keep-alive probe: the probe is answered, so no
// alert is raised, the stream completes, and the socket's keep-alive is
// put back as the dialer left it (off). With WithNATKeepAlive, the socket
// has keep-alive on below the timeout during the pause, and off again
// after the end.
func TestStreamStallAliveOnLoopback(t *testing.T) {
	const natIdle = 2 * time.Second
	pause := natIdle + 2*time.Second
	for _, c := range []struct {
		name string
		opts []Option
	}{
		{"detection only", nil},
		{"with WithNATKeepAlive", []Option{WithNATKeepAlive(), WithCloseDeadConnections()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "data: first\n\n")
				w.(http.Flusher).Flush()
				select {
				case <-time.After(pause):
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "data: last\n\n")
			})
			tel := newTelemetry(t)
			base := &http.Transport{DialContext: (&net.Dialer{KeepAlive: -1}).DialContext}
			t.Cleanup(base.CloseIdleConnections)
			client := &http.Client{Transport: NewTransport(base, tel.options(append([]Option{WithNATIdleTimeout(natIdle)}, c.opts...)...)...)}

			var (
				mu   sync.Mutex
				conn net.Conn
			)
			ctx, cancel := context.WithTimeout(context.Background(), 3*pause)
			defer cancel()
			ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
				mu.Lock()
				conn = ci.Conn
				mu.Unlock()
			}})
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			// Read back the socket's keep-alive, and the kernel's probes,
			// while the stream is silent.
			var (
				during  detect.SocketOptions
				sampled bool
			)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				tick := time.NewTicker(100 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					mu.Lock()
					// The reading that probes soonest: one taken while
					// conntrace changes the options mixes old and new
					// values (they are set one at a time) and never
					// beats a whole one.
					if o := sockopt.Options(conn); o.KeepAlive && (!during.KeepAlive || max(o.Idle, o.Interval) < max(during.Idle, during.Interval)) {
						during = o
					}
					sampled = true
					mu.Unlock()
				}
			})
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			close(stop)
			wg.Wait()
			if err != nil || string(body) != "data: first\n\ndata: last\n\n" {
				t.Fatalf("stream: %q, %v; want both events", body, err)
			}
			if got := tel.handledBy(detectors.StreamStallName); len(got) != 0 {
				t.Errorf("got %d stream_stall alerts on a live loopback stream; want none: %+v", len(got), got)
			}
			after := sockopt.Options(conn)
			if !after.Known || after.KeepAlive {
				t.Errorf("socket after the end: %+v; want keep-alive off again, as the dialer left it", after)
			}
			if !sampled {
				t.Fatal("the socket was never read during the pause")
			}
			// Detection alone turns keep-alive on for the probe (1 s), a
			// quarter second; the cure keeps it on below the timeout.
			if !during.KeepAlive || during.Idle >= natIdle || during.Interval >= natIdle {
				t.Errorf("socket during the pause: %+v; want keep-alive seen on below %v (the probe, or the cure's)", during, natIdle)
			}
			if n := tel.Collect(t).Total(vocab.MetricClosedDead); n != 0 {
				t.Errorf("%s: %v; want 0", vocab.MetricClosedDead, n)
			}
		})
	}
}
