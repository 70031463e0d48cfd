package detectors_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// safe is a transport with nothing to report against a 350s NAT: the pool
// closes idle connections after 90s, keep-alive (zero dialer: 15s) is on,
// both timeouts are set, HTTP/2 pings every 30s.
func safe() *http.Transport {
	return &http.Transport{
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   16,
		ResponseHeaderTimeout: 10 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ForceAttemptHTTP2:     true,
		HTTP2:                 &http.HTTP2Config{SendPingTimeout: 30 * time.Second},
	}
}

func TestAudit(t *testing.T) {
	const nat = 350 * time.Second
	custom := func(tr *http.Transport) *http.Transport {
		tr.DialContext = (&net.Dialer{KeepAlive: -1}).DialContext
		return tr
	}
	type want struct {
		name     string
		severity slog.Level
		phrases  []string // in What, Why or Advice
	}
	tests := []struct {
		name   string
		tr     func() *http.Transport
		dialer *net.Dialer // for AuditDialer
		want   []want      // exactly these findings, in any order
	}{
		{name: "safe", tr: safe},
		{name: "IdleConnTimeout zero, keep-alive in time: Info", tr: func() *http.Transport {
			tr := safe()
			tr.IdleConnTimeout = 0
			return tr
		}, want: []want{{"idle_conn_timeout", slog.LevelInfo, []string{"0 (no limit)", "on, first probe after 15s idle", "zero net.Dialer"}}}},
		{name: "IdleConnTimeout at the NAT's, keep-alive unknown: Warn + dialer Info", tr: func() *http.Transport {
			tr := custom(safe())
			tr.IdleConnTimeout = nat
			return tr
		}, want: []want{
			{"idle_conn_timeout", slog.LevelWarn, []string{"5m50s, not below", "for example 5m15s"}},
			{"dialer_keepalive", slog.LevelInfo, []string{"cannot be known", "AuditDialer", "Idle: 2m55s, Interval: 2m55s"}},
		}},
		{name: "keep-alive off via AuditDialer", tr: func() *http.Transport {
			tr := custom(safe())
			tr.IdleConnTimeout = 0
			return tr
		}, dialer: &net.Dialer{KeepAlive: -1}, want: []want{
			{"idle_conn_timeout", slog.LevelWarn, nil},
			{"dialer_keepalive", slog.LevelWarn, []string{"the given net.Dialer is off", "KeepAlive"}},
		}},
		{name: "keep-alive after the NAT's (KeepAliveConfig)", tr: func() *http.Transport {
			tr := custom(safe())
			tr.IdleConnTimeout = 0
			return tr
		}, dialer: &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 400 * time.Second}}, want: []want{
			{"idle_conn_timeout", slog.LevelWarn, nil},
			{"dialer_keepalive", slog.LevelWarn, []string{"first probe after 6m40s idle"}},
		}},
		{name: "keep-alive at the kernel's default idle time", tr: func() *http.Transport {
			tr := custom(safe())
			tr.IdleConnTimeout = 0
			return tr
		}, dialer: &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: -1}}, want: []want{
			{"idle_conn_timeout", slog.LevelWarn, nil},
			{"dialer_keepalive", slog.LevelWarn, []string{"tcp_keepalive_time"}},
		}},
		{name: "keep-alive in time via AuditDialer: Info only", tr: func() *http.Transport {
			tr := custom(safe())
			tr.IdleConnTimeout = 0
			return tr
		}, dialer: &net.Dialer{KeepAlive: 60 * time.Second}, want: []want{
			{"idle_conn_timeout", slog.LevelInfo, []string{"first probe after 1m0s idle"}},
		}},
		{name: "sub-second keep-alive rounds up to the kernel's second", tr: func() *http.Transport {
			tr := custom(safe())
			tr.IdleConnTimeout = 0
			return tr
		}, dialer: &net.Dialer{KeepAlive: 1500 * time.Millisecond}, want: []want{
			{"idle_conn_timeout", slog.LevelInfo, []string{"first probe after 2s idle"}},
		}},
		{name: "pool closes before the NAT: keep-alive does not matter", tr: func() *http.Transport { return custom(safe()) }},
		{name: "MaxIdleConnsPerHost default", tr: func() *http.Transport {
			tr := safe()
			tr.MaxIdleConnsPerHost = 0
			return tr
		}, want: []want{{"max_idle_conns_per_host", slog.LevelInfo, []string{"at most 2 idle connections per host"}}}},
		{name: "MaxIdleConnsPerHost negative", tr: func() *http.Transport {
			tr := safe()
			tr.MaxIdleConnsPerHost = -1
			tr.IdleConnTimeout = 0 // no pool: idle timeout does not matter
			return tr
		}, want: []want{{"max_idle_conns_per_host", slog.LevelWarn, []string{"-1", "disables the idle pool"}}}},
		{name: "DisableKeepAlives", tr: func() *http.Transport {
			tr := safe()
			tr.DisableKeepAlives = true
			tr.IdleConnTimeout = 0
			return tr
		}, want: []want{{"disable_keep_alives", slog.LevelWarn, []string{"every request dials"}}}},
		{name: "no ResponseHeaderTimeout", tr: func() *http.Transport {
			tr := safe()
			tr.ResponseHeaderTimeout = 0
			return tr
		}, want: []want{{"response_header_timeout", slog.LevelWarn, []string{"without limit"}}}},
		{name: "no TLSHandshakeTimeout", tr: func() *http.Transport {
			tr := safe()
			tr.TLSHandshakeTimeout = 0
			return tr
		}, want: []want{{"tls_handshake_timeout", slog.LevelWarn, []string{"10s"}}}},
		{name: "HTTP/2 without pings", tr: func() *http.Transport {
			tr := safe()
			tr.HTTP2 = nil
			return tr
		}, want: []want{{"http2_ping", slog.LevelWarn, []string{"SendPingTimeout is 0", "15 minutes", "SendPingTimeout: 2m55s"}}}},
		{name: "HTTP/2 pings after the NAT's timeout", tr: func() *http.Transport {
			tr := safe()
			tr.HTTP2.SendPingTimeout = nat
			return tr
		}, want: []want{{"http2_ping", slog.LevelInfo, []string{"5m50s, not below"}}}},
		{name: "HTTP/2 off: TLSClientConfig without ForceAttemptHTTP2", tr: func() *http.Transport {
			tr := safe()
			tr.HTTP2, tr.ForceAttemptHTTP2, tr.TLSClientConfig = nil, false, &tls.Config{}
			return tr
		}},
		{name: "HTTP/2 off: empty TLSNextProto", tr: func() *http.Transport {
			tr := safe()
			tr.HTTP2, tr.TLSNextProto = nil, map[string]func(string, *tls.Conn) http.RoundTripper{}
			return tr
		}},
		{name: "HTTP/2 off: Protocols without it", tr: func() *http.Transport {
			tr := safe()
			tr.HTTP2, tr.Protocols = nil, new(http.Protocols)
			tr.Protocols.SetHTTP1(true)
			return tr
		}},
		{name: "HTTP/2 on by default for a zero Transport", tr: func() *http.Transport {
			return &http.Transport{IdleConnTimeout: time.Minute, MaxIdleConnsPerHost: 4, ResponseHeaderTimeout: time.Second, TLSHandshakeTimeout: time.Second}
		}, want: []want{{"http2_ping", slog.LevelWarn, nil}}},
		{name: "a zero Transport", tr: func() *http.Transport { return &http.Transport{} }, want: []want{
			{"max_idle_conns_per_host", slog.LevelInfo, nil},
			{"idle_conn_timeout", slog.LevelInfo, []string{"first probe after 15s idle"}},
			{"response_header_timeout", slog.LevelWarn, nil},
			{"tls_handshake_timeout", slog.LevelWarn, nil},
			{"http2_ping", slog.LevelWarn, nil},
		}},
		{name: "http.DefaultTransport", tr: func() *http.Transport { return http.DefaultTransport.(*http.Transport) }, want: []want{
			{"max_idle_conns_per_host", slog.LevelInfo, nil},
			{"response_header_timeout", slog.LevelWarn, nil},
			{"http2_ping", slog.LevelWarn, nil},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []detectors.Finding
			if tt.dialer != nil {
				got = detectors.AuditDialer(tt.tr(), tt.dialer, nat)
			} else {
				got = detectors.Audit(tt.tr(), nat)
			}
			var names, wantNames []string
			for _, f := range got {
				names = append(names, f.Name)
			}
			for _, w := range tt.want {
				wantNames = append(wantNames, w.name)
			}
			slices.Sort(names)
			slices.Sort(wantNames)
			if !slices.Equal(names, wantNames) {
				t.Fatalf("got findings %q; want %q\n%v", names, wantNames, got)
			}
			for _, w := range tt.want {
				i := slices.IndexFunc(got, func(f detectors.Finding) bool { return f.Name == w.name })
				f := got[i]
				if f.Severity != w.severity {
					t.Errorf("%s: severity %v; want %v", f.Name, f.Severity, w.severity)
				}
				if f.Setting == "" || f.What == "" || f.Why == "" || f.Advice == "" {
					t.Errorf("%s: a field is empty: %+v", f.Name, f)
				}
				text := f.What + " " + f.Why + " " + f.Advice
				for _, p := range w.phrases {
					if !strings.Contains(text, p) {
						t.Errorf("%s lacks %q: %s", f.Name, p, text)
					}
				}
			}
		})
	}
}

// TestAuditDefaultTransportDialer: Audit knows http.DefaultTransport's
// dialer (KeepAlive 30s), but not a clone's, whose DialContext is a
// function it cannot look into.
func TestAuditDefaultTransportDialer(t *testing.T) {
	dt := http.DefaultTransport.(*http.Transport)
	clone := dt.Clone()
	for _, tt := range []struct {
		name string
		tr   *http.Transport
		want string
	}{
		{"DefaultTransport", dt, "first probe after 30s idle, then every 15s, from http.DefaultTransport's net.Dialer"},
		{"clone", clone, "cannot be known"},
	} {
		// A NAT of 60s: the pool (90s) outlives it.
		text := ""
		for _, f := range detectors.Audit(tt.tr, time.Minute) {
			if f.Name == "idle_conn_timeout" || f.Name == "dialer_keepalive" {
				text += f.String() + "\n"
			}
		}
		if !strings.Contains(text, tt.want) {
			t.Errorf("%s: findings lack %q:\n%s", tt.name, tt.want, text)
		}
	}
	if got := detectors.Audit(nil, time.Minute); got != nil {
		t.Errorf("Audit(nil): got %v; want nil", got)
	}
}

// TestAuditDefaultNAT: a zero natIdle means the default 350s.
func TestAuditDefaultNAT(t *testing.T) {
	tr := safe()
	tr.IdleConnTimeout = 349 * time.Second
	if got := detectors.Audit(tr, 0); len(got) != 0 {
		t.Errorf("349s pool against the default 350s NAT: got %v; want nothing", got)
	}
	tr.IdleConnTimeout = 350 * time.Second
	if got := detectors.Audit(tr, 0); len(got) != 1 || got[0].Name != "idle_conn_timeout" {
		t.Errorf("350s pool against the default 350s NAT: got %v; want idle_conn_timeout", got)
	}
}

// TestAuditKeepAliveInterval: Dialer.KeepAlive sets only the idle time;
// Go leaves the interval at 15s, and Linux sends the next probe an interval
// after the last, so against a 3s NAT (the NAT lab's conntrack timeout) a
// 1s KeepAlive does not keep a connection alive, and 1s/1s does.
func TestAuditKeepAliveInterval(t *testing.T) {
	tr := &http.Transport{DialContext: (&net.Dialer{}).DialContext, ResponseHeaderTimeout: time.Second,
		TLSHandshakeTimeout: time.Second, MaxIdleConnsPerHost: 10}
	find := func(fs []detectors.Finding) (detectors.Finding, bool) {
		for _, f := range fs {
			if f.Name == "dialer_keepalive" {
				return f, true
			}
		}
		return detectors.Finding{}, false
	}
	f, ok := find(detectors.AuditDialer(tr, &net.Dialer{KeepAlive: time.Second}, 3*time.Second))
	if !ok || f.Severity != slog.LevelWarn || !strings.Contains(f.What, "then every 15s") {
		t.Errorf("KeepAlive 1s vs 3s NAT: got %v %+v; want a Warn finding that names the 15s interval", ok, f)
	}
	good := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second}}
	if f, ok := find(detectors.AuditDialer(tr, good, 3*time.Second)); ok {
		t.Errorf("KeepAliveConfig 1s/1s vs 3s NAT: got finding %+v; want none", f)
	}
}
