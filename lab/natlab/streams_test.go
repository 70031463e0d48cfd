//go:build linux

package natlab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
	"github.com/conntrace/conntrace/internal/sockopt"
	"github.com/conntrace/conntrace/vocab"
)

// Streams and long waits behind the kernel's NAT: a stream (SSE) that
// pauses, or a long poll whose answer comes late, on a connection the
// conntrack forgets while nothing crosses it. Keep-alive is off unless a
// case says otherwise.

// serveStream answers /stream and /longpoll for the lab's server; it
// reports whether it answered. /stream?pause=6s: three events 200 ms
// apart, flushed, a pause, three more, then the end. /longpoll?after=6s:
// headers and one event after the wait.
func serveStream(w http.ResponseWriter, r *http.Request) bool {
	wait := func(d time.Duration) bool {
		select {
		case <-time.After(d):
			return true
		case <-r.Context().Done():
			return false
		}
	}
	if serveWatch(w, r) {
		return true
	}
	switch r.URL.Path {
	case "/stream":
		pause, _ := time.ParseDuration(r.URL.Query().Get("pause"))
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 6 {
			switch {
			case i == 3 && !wait(pause):
				return true
			case i > 0 && i != 3 && !wait(200*time.Millisecond):
				return true
			}
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
		}
		return true
	case "/longpoll":
		after, _ := time.ParseDuration(r.URL.Query().Get("after"))
		if !wait(after) {
			return true
		}
		io.WriteString(w, "data: answer\n\n")
		return true
	}
	return false
}

// streamRun is what one stream or long poll did, seen from the client.
type streamRun struct {
	err      error
	lastByte time.Time // when the last byte before the silence came (a long poll: when the request was written)
	ended    time.Time
	events   int
	conn     net.Conn // the connection it was handed
	// socket read back while it waited: the keep-alive conntrace set on it
	during detect.SocketOptions
	after  detect.SocketOptions // and once the stream ended
	probes int                  // tcpi_probes... the highest seen
}

// readStream sends GET path and reads the body, an event at a time, to its
// end or its deadline. With watch, it reads the socket's options back one
// second into the silence and after the end.
func readStream(c *http.Client, u string, deadline time.Duration, watch bool) *streamRun {
	s := &streamRun{}
	var mu sync.Mutex
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) { mu.Lock(); s.conn = ci.Conn; mu.Unlock() },
		WroteRequest: func(httptrace.WroteRequestInfo) {
			mu.Lock()
			s.lastByte = time.Now()
			mu.Unlock()
		},
	})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	res, err := c.Do(req)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		s.err, s.ended = err, time.Now()
		return s
	}
	defer res.Body.Close()
	stop := make(chan struct{})
	defer close(stop)
	if watch && s.conn != nil {
		conn := s.conn
		go func() {
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				o := sockopt.Options(conn)
				ti := sockopt.TCPInfo(conn, time.Now())
				mu.Lock()
				// The reading that probes soonest: one taken while
				// conntrace changes the options mixes old and new values
				// (they are set one at a time) and never beats a whole one.
				if o.KeepAlive && (!s.during.KeepAlive || max(o.Idle, o.Interval) < max(s.during.Idle, s.during.Interval)) {
					s.during = o
				}
				if ti != nil && ti.Probes > s.probes {
					s.probes = ti.Probes
				}
				mu.Unlock()
			}
		}()
	}
	buf := make([]byte, 256)
	for {
		mu.Unlock()
		n, err := res.Body.Read(buf)
		now := time.Now()
		mu.Lock()
		if n > 0 {
			s.lastByte = now
			s.events += strings.Count(string(buf[:n]), "data:")
		}
		if err != nil {
			if err != io.EOF {
				s.err = err
			}
			s.ended = now
			if watch && s.conn != nil {
				s.after = sockopt.Options(s.conn)
			}
			return s
		}
	}
}

// streamCase is one case of TestNATLabStreams: the request, the client's
// options, and what is expected.
type streamCase struct {
	name    string
	path    string // with its query
	dialer  *net.Dialer
	h2      bool
	opts    []conntrace.Option
	stall   bool // the path forgets the connection: an alert is expected
	cure    bool // ... and the wait fails at once with ErrDeadConnection
	resumes bool // the stream must complete
	watch   bool // read the socket's keep-alive back (d)
	pingT   time.Duration

	run    *streamRun
	alerts []detectors.Alert
	o      *observed
	ct     time.Duration
}

// TestNATLabStreams runs the stream and long-wait cases against the
// kernel's conntrack (timeout T), in parallel, each on its own connection,
// and prints their precision and recall in a STREAMS line.
func TestNATLabStreams(t *testing.T) {
	l := newLab(t)
	// The lab tests run before this one (the cure, the fault matrix with
	// its loss case, the scenarios) hold no stream: any stream_stall alert
	// they raised was false.
	otherFalse := unexpectedStreamAlerts.Load()
	if otherFalse != 0 {
		t.Errorf("%d stream_stall alerts in the other lab tests (cure, matrix, scenarios); want none", otherFalse)
	}
	T := l.ctTimeout
	long := T + 3*time.Second // a pause the NAT entry does not survive (6 s at T = 3 s)
	short := T - 1500*time.Millisecond
	deadline := long + 5*time.Second
	probes := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 5}}
	cases := []*streamCase{
		{name: "a_stream_paused_past_timeout", path: fmt.Sprintf("/stream?pause=%v", long), dialer: keepAliveOff, stall: true},
		{name: "a_cure_fails_fast_and_reconnects", path: fmt.Sprintf("/stream?pause=%v", long), dialer: keepAliveOff, stall: true, cure: true,
			opts: []conntrace.Option{conntrace.WithCloseDeadConnections()}},
		{name: "b_stream_paused_below_timeout", path: fmt.Sprintf("/stream?pause=%v", short), dialer: keepAliveOff, resumes: true},
		{name: "c_keepalive_below_timeout", path: fmt.Sprintf("/stream?pause=%v", long), dialer: probes, resumes: true},
		{name: "d_cure_keepalive_keeps_it", path: fmt.Sprintf("/stream?pause=%v", long), dialer: keepAliveOff, resumes: true, watch: true,
			opts: []conntrace.Option{conntrace.WithNATKeepAlive(), conntrace.WithCloseDeadConnections()}},
		{name: "e_long_poll_answered_past_timeout", path: fmt.Sprintf("/longpoll?after=%v", long), dialer: keepAliveOff, stall: true},
		{name: "e_cure_long_poll_fails_fast", path: fmt.Sprintf("/longpoll?after=%v", long), dialer: keepAliveOff, stall: true, cure: true,
			opts: []conntrace.Option{conntrace.WithCloseDeadConnections()}},
		{name: "e_long_poll_answered_below_timeout", path: fmt.Sprintf("/longpoll?after=%v", short), dialer: keepAliveOff, resumes: true},
	}
	if h2 := l.h2Server(); h2 != "" {
		cases = append(cases,
			&streamCase{name: "f_http2_stream_paused_past_timeout", path: fmt.Sprintf("/stream?pause=%v", long), dialer: keepAliveOff, h2: true, stall: true},
			&streamCase{name: "f_http2_pings_below_timeout", path: fmt.Sprintf("/stream?pause=%v", long), dialer: keepAliveOff, h2: true, resumes: true,
				pingT: time.Second})
	}
	var mu sync.Mutex
	t.Run("cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				c.ct = T
				base := &http.Transport{DialContext: c.dialer.DialContext}
				u := "http://" + l.server + c.path
				if c.h2 {
					base.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
					base.ForceAttemptHTTP2 = true
					if c.pingT > 0 {
						base.HTTP2 = &http.HTTP2Config{SendPingTimeout: c.pingT, PingTimeout: time.Second}
					}
					u = "https://" + l.h2Server() + c.path
				}
				c.o = newObserved(base, append([]conntrace.Option{conntrace.WithNATIdleTimeout(T), conntrace.WithHangTimeout(time.Second)}, c.opts...)...)
				c.o.expectStreams = true
				defer c.o.close()
				c.run = readStream(c.o.Client, u, deadline, c.watch)
				c.alerts = c.o.streamAlerts()
				mu.Lock()
				defer mu.Unlock()
				c.check(t, deadline)
				if c.cure && t.Failed() == false {
					// The caller's retry: a new stream, which the NAT keeps.
					again := readStream(c.o.Client, "http://"+l.server+fmt.Sprintf("/stream?pause=%v", short), deadline, false)
					if again.err != nil || again.events != 6 {
						t.Errorf("reconnect: %d events, %v; want the whole stream", again.events, again.err)
					}
					t.Logf("MEASURED streams %s: reconnect %d events, err %v", c.name, again.events, again.err)
				}
			})
		}
	})
	// Precision and recall over the cases, beside the matrix's.
	var tp, fp, fn, tn int
	var worst, worstFail time.Duration
	for _, c := range cases {
		raised := false
		for _, a := range c.alerts {
			if a.Level >= slog.LevelWarn {
				raised = true
			}
		}
		switch {
		case c.stall && raised:
			tp++
			if d := c.verdictAfter(); d > worst {
				worst = d
			}
			if c.cure && c.run != nil {
				if d := c.run.ended.Sub(c.forgot()); d > worstFail {
					worstFail = d
				}
			}
		case c.stall:
			fn++
		case raised:
			fp++
		default:
			tn++
		}
	}
	ratio := func(a, b int) float64 {
		if b == 0 {
			return 1
		}
		return float64(a) / float64(b)
	}
	t.Logf("STREAMS precision=%.2f recall=%.2f cases=%d tp=%d fp=%d fn=%d tn=%d verdict_after_forget_max=%v cure_error_after_forget_max=%v other_lab_false_alerts=%d (conntrack %v)",
		ratio(tp, tp+fp), ratio(tp, tp+fn), len(cases), tp, fp, fn, tn, worst.Round(time.Millisecond), worstFail.Round(time.Millisecond), otherFalse, T)
	if fp != 0 || fn != 0 {
		t.Errorf("precision and recall must be 1.00: %d false alerts, %d missed", fp, fn)
	}
}

// forgot is when the NAT forgot the connection: its timeout after the
// last byte crossed it (conntrack's garbage collection adds up to 0.26 s).
func (c *streamCase) forgot() time.Time {
	return c.run.lastByte.Add(c.ct)
}

// verdictAfter is the time from the NAT forgetting to the alert.
func (c *streamCase) verdictAfter() time.Duration {
	for _, a := range c.alerts {
		if a.Level >= slog.LevelWarn {
			return a.Time.Sub(c.forgot())
		}
	}
	return -1
}

func (c *streamCase) check(t *testing.T, deadline time.Duration) {
	r := c.run
	var levels []string
	for _, a := range c.alerts {
		levels = append(levels, fmt.Sprintf("%s/%s %s evidence=%s", a.Detector, a.Outcome, a.Level, a.Evidence))
	}
	timing := ""
	if c.stall {
		timing = fmt.Sprintf(", alert %v after the NAT forgot, the wait ended %v after", c.verdictAfter().Round(time.Millisecond), r.ended.Sub(c.forgot()).Round(time.Millisecond))
	}
	t.Logf("MEASURED streams %s: %d events, err %v, alerts %v%s", c.name, r.events, r.err, levels, timing)
	for _, a := range c.alerts {
		t.Logf("alert: %s | advice: %s", a.Message, a.Advice)
	}
	switch {
	case c.stall:
		if len(c.alerts) != 1 {
			t.Fatalf("got %d stream_stall alerts; want 1", len(c.alerts))
		}
		a := c.alerts[0]
		if a.Outcome != detectors.OutcomeDead || a.Level != slog.LevelError || a.Evidence != detectors.EvidenceKernel || a.TCP == nil || a.TCP.Probes < 1 {
			t.Errorf("alert %s %s evidence %q kernel %v; want dead ERROR with kernel evidence of an unanswered probe", a.Outcome, a.Level, a.Evidence, a.TCP)
		}
		if d := c.verdictAfter(); d > 1500*time.Millisecond+300*time.Millisecond || d < 0 {
			// 1.5 s, plus conntrack's garbage collection lag (measured up to 0.26 s)
			t.Errorf("alert %v after the NAT's timeout; want within 1.5s of the moment it forgot", d)
		}
		if c.cure {
			if !errors.Is(r.err, conntrace.ErrDeadConnection) {
				t.Errorf("wait ended with %v; want an error that wraps conntrace.ErrDeadConnection", r.err)
			}
			if d := r.ended.Sub(c.forgot()); d > 2*time.Second+300*time.Millisecond {
				t.Errorf("wait failed %v after the NAT forgot; want within 2s", d)
			}
			if n := sum(t, c.o.reader, vocab.MetricClosedDead); n != 1 {
				t.Errorf("%s: %d; want 1", vocab.MetricClosedDead, n)
			}
		} else if !errors.Is(r.err, context.DeadlineExceeded) {
			t.Errorf("wait ended with %v; want it to hang to its deadline (%v) without the cure", r.err, deadline)
		}
	default:
		if len(c.alerts) != 0 {
			t.Errorf("got %d stream_stall alerts; want none", len(c.alerts))
		}
	}
	if c.resumes && (r.err != nil || (strings.HasPrefix(c.path, "/stream") && r.events != 6)) {
		t.Errorf("got %d events, %v; want the whole stream", r.events, r.err)
	}
	if c.watch {
		t.Logf("MEASURED streams %s: keep-alive read back during the pause %+v, highest tcpi_probes %d; after the end %+v",
			c.name, r.during, r.probes, r.after)
		if !r.during.KeepAlive || r.during.Idle >= c.ct || r.during.Interval >= c.ct {
			t.Errorf("socket during the pause: %+v; want keep-alive on below %v", r.during, c.ct)
		}
		if r.after.Known && r.after.KeepAlive {
			t.Errorf("socket after the end: %+v; want keep-alive off again, as the dialer set it", r.after)
		}
	}
}

// streamAlerts returns the stream_stall alerts of WARN and above.
func (o *observed) streamAlerts() []detectors.Alert {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []detectors.Alert
	for _, a := range o.alerts {
		if a.Detector == detectors.StreamStallName {
			out = append(out, a)
		}
	}
	return out
}

// h2Server is the lab's HTTP/2 listener, if the script started one.
func (l lab) h2Server() string { return os.Getenv(envServerH2) }

// serveWatch is a small Kubernetes API server's watch, for
// TestNATLabWatch: GET /api/v1/namespaces/pause-6s/configmaps?watch=true
// answers JSON watch events, one per line, flushed: three ADDED events
// 200 ms apart, a pause (the namespace's name says how long), three more.
// It answers JSON, which client-go accepts after protobuf.
func serveWatch(w http.ResponseWriter, r *http.Request) bool {
	rest, ok := strings.CutPrefix(r.URL.Path, "/api/v1/namespaces/")
	ns, _, ok2 := strings.Cut(rest, "/configmaps")
	if !ok || !ok2 || r.URL.Query().Get("watch") == "" {
		return false
	}
	pause, _ := time.ParseDuration(strings.TrimPrefix(ns, "pause-"))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Transfer-Encoding", "chunked")
	for i := range 6 {
		d := 200 * time.Millisecond
		if i == 3 {
			d = pause
		}
		if i > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return true
			}
		}
		fmt.Fprintf(w, `{"type":"ADDED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cm-%d","namespace":%q,"resourceVersion":"%d"}}}`+"\n", i, ns, 10+i)
		w.(http.Flusher).Flush()
	}
	return true
}
