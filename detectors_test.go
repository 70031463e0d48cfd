package conntrace

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestAuditLogged: NewTransport logs the audit of an *http.Transport base,
// each finding at its severity with its setting and advice, to the
// configured logger, once per distinct configuration however many
// Transports are made; WithoutAudit and a base it cannot inspect log
// nothing.
func TestAuditLogged(t *testing.T) {
	forgetAudits()
	tel := newTelemetry(t)
	// A configuration no other test audits: the log is process-wide.
	config := func(idle time.Duration) *http.Transport {
		return &http.Transport{IdleConnTimeout: idle}
	}
	base := config(1234 * time.Second)
	for range 3 {
		NewTransport(base, tel.options(WithNATIdleTimeout(time.Minute))...)
		NewTransport(config(1234*time.Second), tel.options(WithNATIdleTimeout(time.Minute))...)
	}
	logs := tel.logs.String()
	want := detectors.Audit(base, time.Minute)
	if len(want) == 0 {
		t.Fatal("the audit of this transport finds nothing; the test needs a finding")
	}
	if got := strings.Count(logs, "conntrace: audit:"); got != len(want) {
		t.Errorf("logged %d findings; want %d:\n%s", got, len(want), logs)
	}
	for _, f := range want {
		for _, s := range []string{"finding=" + f.Name, "level=" + f.Severity.String(), "setting=" + f.Setting} {
			if !strings.Contains(logs, s) {
				t.Errorf("log lacks %q:\n%s", s, logs)
			}
		}
	}
	if !strings.Contains(logs, "msg=\"conntrace: audit: IdleConnTimeout is 20m34s, not below") {
		t.Errorf("log lacks the IdleConnTimeout finding:\n%s", logs)
	}

	other := newTelemetry(t)
	NewTransport(config(1235*time.Second), other.options(WithNATIdleTimeout(time.Minute))...)
	if got := strings.Count(other.logs.String(), "conntrace: audit:"); got != len(want) {
		t.Errorf("another configuration: logged %d findings; want %d:\n%s", got, len(want), other.logs.String())
	}

	quiet := newTelemetry(t)
	NewTransport(&http.Transport{}, quiet.options(WithoutAudit())...)
	NewTransport(roundTripperFunc(nil), quiet.options()...)
	if logs := quiet.logs.String(); logs != "" {
		t.Errorf("WithoutAudit and a custom base: got logs %q; want none", logs)
	}
}

// forgetAudits clears the process-wide record of the audits logged, so that
// a test run again in the same process (go test -count=2) sees its
// configuration audited for the first time again.
func forgetAudits() {
	audited.mu.Lock()
	audited.seen = nil
	audited.mu.Unlock()
}

// saysWrapped is a wrapper as client-go's are (its *trackedTransport,
// its user-agent and bearer-token wrappers): it says what it wraps with
// WrappedRoundTripper, and has no CloseIdleConnections of its own.
type saysWrapped struct{ rt http.RoundTripper }

func (w saysWrapped) RoundTrip(r *http.Request) (*http.Response, error) { return w.rt.RoundTrip(r) }
func (w saysWrapped) WrappedRoundTripper() http.RoundTripper            { return w.rt }

// unwraps says what it wraps with Unwrap.
type unwraps struct{ rt http.RoundTripper }

func (w unwraps) RoundTrip(r *http.Request) (*http.Response, error) { return w.rt.RoundTrip(r) }
func (w unwraps) Unwrap() http.RoundTripper                         { return w.rt }

// TestWrappedBase: behind wrappers that say what they wrap, NewTransport
// still finds the *http.Transport: it audits it (the IdleConnTimeout
// finding, not "unknown"), reports its IdleConnTimeout as
// conntrace.config.idle_conn_timeout, and CloseIdleConnections reaches its
// pool, so the next request dials.
func TestWrappedBase(t *testing.T) {
	forgetAudits()
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	tr := &http.Transport{IdleConnTimeout: 1236 * time.Second} // a configuration no other test audits
	defer tr.CloseIdleConnections()
	ct := NewTransport(saysWrapped{unwraps{tr}}, tel.options(WithNATIdleTimeout(time.Minute))...)
	if !strings.Contains(tel.logs.String(), "IdleConnTimeout is 20m36s, not below") {
		t.Errorf("the audit did not reach the wrapped *http.Transport:\n%s", tel.logs.String())
	}
	client := &http.Client{Transport: ct}
	testkit.Get(t, client, srv.URL)
	ct.CloseIdleConnections()
	testkit.Get(t, client, srv.URL)
	points := tel.Collect(t)
	if got := points.Total(vocab.MetricConfigIdleConnTimeout); got != 1236 {
		t.Errorf("%s: got %v; want 1236, the wrapped transport's", vocab.MetricConfigIdleConnTimeout, got)
	}
	if got := points.Total(vocab.MetricDials); got != 2 {
		t.Errorf("%s: got %v; want 2: CloseIdleConnections closed the wrapped pool's connection", vocab.MetricDials, got)
	}
}
