package probe

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

func TestClassify(t *testing.T) {
	const timeout = 10 * time.Second
	reused := httptrace.GotConnInfo{Reused: true, WasIdle: true, IdleTime: 95 * time.Second}
	fresh := httptrace.GotConnInfo{}
	alert := func(outcome string) detectors.Alert {
		return detectors.Alert{Detector: detectors.StaleReuseName, Outcome: outcome}
	}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	// What the watched connection's reads ended with: a FIN or a reset.
	closedFIN := func(s seen) seen { s.ended = io.EOF; return s }
	closedReset := func(s seen) seen { s.ended = reset; return s }
	tests := []struct {
		name       string
		got        seen
		err        error
		want       Result
		wantHow    string
		wantAlert  string
		wantDetail string
		wantEnd    End
	}{
		{"answered on the same connection", seen{conns: []httptrace.GotConnInfo{reused}}, nil,
			ReusedOK, HowReused, "", "same connection", EndUnknown},
		{"hang alert: silent drop", seen{conns: []httptrace.GotConnInfo{reused}, alerts: []detectors.Alert{alert(detectors.OutcomeHang)}}, context.Canceled,
			SilentDrop, HowNoResponse, detectors.OutcomeHang, "no answer and no reset within 10s", EndUnknown},
		{"hang alert from the kernel: silent drop, in about a second", seen{conns: []httptrace.GotConnInfo{reused}, alerts: []detectors.Alert{{
			Detector: detectors.StaleReuseName, Outcome: detectors.OutcomeHang, Evidence: detectors.EvidenceKernel,
			Waited: 916 * time.Millisecond, TCP: &detectors.TCPInfo{Retransmits: 2}}}}, context.Canceled,
			SilentDrop, HowNoResponse, detectors.OutcomeHang, "unacknowledged through 2 retransmission timeouts in 916ms, no reset (kernel", EndUnknown},
		{"no alert but deadline: silent drop", seen{conns: []httptrace.GotConnInfo{reused}}, context.DeadlineExceeded,
			SilentDrop, HowNoResponse, "", "no answer and no reset", EndUnknown},
		{"closed while idle: a new dial", seen{conns: []httptrace.GotConnInfo{fresh}}, nil,
			ClosedByPeer, HowClosedIdle, "", "closed while idle (a FIN or reset)", EndUnknown},
		{"FIN while idle", closedFIN(seen{conns: []httptrace.GotConnInfo{fresh}}), nil,
			ClosedByPeer, HowClosedIdle, "", "closed while idle by a FIN", EndFIN},
		{"reset while idle", closedReset(seen{conns: []httptrace.GotConnInfo{fresh}}), nil,
			ClosedByPeer, HowClosedIdle, "", "reset while idle", EndReset},
		{"closed on reuse, retried", seen{conns: []httptrace.GotConnInfo{reused, fresh}, alerts: []detectors.Alert{alert(detectors.OutcomeRetried)}}, nil,
			ClosedByPeer, HowClosedOnReuse, detectors.OutcomeRetried, "stale_reuse/retried", EndUnknown},
		{"FIN on reuse, retried", closedFIN(seen{conns: []httptrace.GotConnInfo{reused, fresh}}), nil,
			ClosedByPeer, HowClosedOnReuse, "", "with a FIN, no response", EndFIN},
		{"reset on reuse, retried", closedReset(seen{conns: []httptrace.GotConnInfo{reused, fresh}, alerts: []detectors.Alert{alert(detectors.OutcomeRetried)}}), nil,
			ClosedByPeer, HowClosedOnReuse, detectors.OutcomeRetried, "reset at once", EndReset},
		{"reset on reuse, failed: the error tells", seen{conns: []httptrace.GotConnInfo{reused}, alerts: []detectors.Alert{alert(detectors.OutcomeFailed)}}, reset,
			ClosedByPeer, HowClosedOnReuse, detectors.OutcomeFailed, "connection reset by peer", EndReset},
		{"closed while idle, and the new dial failed", seen{conns: []httptrace.GotConnInfo{fresh}}, errors.New("connection refused"),
			Failed, "", "", "a new one failed: connection refused", EndUnknown},
		{"no connection at all", seen{}, errors.New("dial tcp: no route to host"),
			Failed, "", "", "no route to host", EndUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := classify(tt.got, tt.err, timeout)
			if v.result != tt.want || v.how != tt.wantHow || v.end != tt.wantEnd {
				t.Errorf("got %s/%s/%q; want %s/%s/%q", v.result, v.how, v.end, tt.want, tt.wantHow, tt.wantEnd)
			}
			gotAlert := ""
			if v.alert != nil {
				gotAlert = v.alert.Outcome
			}
			if gotAlert != tt.wantAlert {
				t.Errorf("alert %q; want %q", gotAlert, tt.wantAlert)
			}
			if !strings.Contains(v.detail, tt.wantDetail) {
				t.Errorf("detail %q; want it to contain %q", v.detail, tt.wantDetail)
			}
			if tt.want == ReusedOK && v.idleTime != reused.IdleTime {
				t.Errorf("idle time %v; want net/http's %v", v.idleTime, reused.IdleTime)
			}
		})
	}
}

// TestRunServerClosesIdleRealSockets is TestRunServerClosesIdle over
// loopback TCP with the probe's own dialer: the server's FIN reaches the
// client's pool while the connection is idle.
func TestRunServerClosesIdleRealSockets(t *testing.T) {
	const serverIdle = time.Second
	srv := httptest.NewUnstartedServer(hello)
	srv.Config.IdleTimeout = serverIdle
	srv.Start()
	defer srv.Close()
	// Rungs 500ms and 2s, then 800ms, 1.1s, 1.4s and 1.7s: 100 ms and more
	// clear of the server's timeout, for a loaded machine.
	rep, err := Run(t.Context(), Config{
		URL:        srv.URL,
		Ladder:     []time.Duration{500 * time.Millisecond, 2 * time.Second},
		Max:        2 * time.Second,
		Resolution: 500 * time.Millisecond,
		Timeout:    2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	b := rep.Bracket
	if b == nil {
		t.Fatalf("no bracket; rungs:\n%s", rungTable(rep))
	}
	if b.Kind != ClosedByPeer || b.How != HowClosedIdle || b.End != EndFIN || !(b.Low < serverIdle && serverIdle <= b.High) {
		t.Errorf("bracket (%v, %v] %s/%s/%q; want one holding %v, %s/%s/%q; rungs:\n%s",
			b.Low, b.High, b.Kind, b.How, b.End, serverIdle, ClosedByPeer, HowClosedIdle, EndFIN, rungTable(rep))
	}
	if !strings.Contains(rep.Target, "200 OK, HTTP/1.1, from 127.0.0.1:") {
		t.Errorf("target %q; want the first answer described", rep.Target)
	}
}

// TestRunHTTPS: over TLS the probe speaks HTTP/1.1 (one request per
// connection at a time, so the pool's reuse is the connection's reuse).
func TestRunHTTPS(t *testing.T) {
	srv := httptest.NewUnstartedServer(hello)
	srv.EnableHTTP2 = true // offered by the server, declined by the probe
	srv.StartTLS()
	defer srv.Close()
	rep, err := Run(t.Context(), Config{
		URL:             srv.URL,
		TLSClientConfig: srv.Client().Transport.(*http.Transport).TLSClientConfig,
		Ladder:          []time.Duration{100 * time.Millisecond},
		Max:             100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rungs) != 1 || rep.Rungs[0].Result != ReusedOK || !strings.Contains(rep.Target, "HTTP/1.1") {
		t.Errorf("target %q, rungs:\n%s; want one reused ok over HTTP/1.1", rep.Target, rungTable(rep))
	}
}

func TestRunBadTarget(t *testing.T) {
	closing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye\n")
	}))
	defer closing.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String() + "/"
	ln.Close()

	tests := []struct {
		name string
		url  string
		want string
	}{
		{"connection refused", refused, "cannot reach " + refused},
		{"Connection: close", closing.URL, "did not keep the connection open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := Run(t.Context(), Config{URL: tt.url, Timeout: 2 * time.Second})
			var ie *InputError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run: report %v, error %v; want an InputError containing %q", rep, err, tt.want)
			}
		})
	}
}
