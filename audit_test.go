package conntrace

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/detectors"
)

// TestAuditLogged: NewTransport logs the audit of an *http.Transport base
// once, each finding at its severity with its setting and advice, to the
// configured logger; WithoutAudit and a base it cannot inspect log nothing.
func TestAuditLogged(t *testing.T) {
	tel := newTelemetry(t)
	base := &http.Transport{DisableKeepAlives: true}
	NewTransport(base, tel.options(WithNATIdleTimeout(time.Minute))...)
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
	if !strings.Contains(logs, "level=WARN msg=\"conntrace: audit: DisableKeepAlives is true") {
		t.Errorf("log lacks the DisableKeepAlives finding at WARN:\n%s", logs)
	}

	quiet := newTelemetry(t)
	NewTransport(&http.Transport{}, quiet.options(WithoutAudit())...)
	NewTransport(roundTripperFunc(nil), quiet.options()...)
	if logs := quiet.logs.String(); logs != "" {
		t.Errorf("WithoutAudit and a custom base: got logs %q; want none", logs)
	}
}
