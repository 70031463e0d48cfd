package detect_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/detect"
)

// TestStaleReuseJudgesEachConnection: a request resent onto another pooled
// connection after a hang (conntrace closed the first, net/http took the
// next idle one) is judged again on that one, by its own kernel evidence;
// when the round trip returns, nothing more is said.
func TestStaleReuseJudgesEachConnection(t *testing.T) {
	d := &detect.StaleReuse{CloseDead: true}
	tl := timeline(kernelConn(5 * time.Second))
	tl.TCP = later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond)
	first, _ := d.Observe(at(916*time.Millisecond), detect.StepTimer, tl)
	if got := outcomes(first); !reflect.DeepEqual(got, []string{detect.OutcomeHang}) {
		t.Fatalf("first connection: got %v; want a hang", got)
	}
	tl.Alerts = append(tl.Alerts, first...)

	// The same connection says nothing more.
	if alerts, wake := d.Observe(at(time.Second), detect.StepTimer, tl); alerts != nil || wake != 0 {
		t.Fatalf("first connection again: got (%v, %v); want nothing", outcomes(alerts), wake)
	}

	// The resend takes a second pooled connection, as dead.
	second := kernelConn(5 * time.Second)
	second.At = at(920 * time.Millisecond)
	second.TCP.At = second.At
	tl.Conns = append(tl.Conns, second)
	tl.TCP = nil
	_, wake := d.Observe(second.At, detect.StepGotConn, tl)
	if wake != 4*204*time.Millisecond+100*time.Millisecond {
		t.Fatalf("second connection at GotConn: wake %v; want the first kernel check, 916ms", wake)
	}
	now := 920*time.Millisecond + 916*time.Millisecond
	tl.TCP = later(now, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond)
	again, _ := d.Observe(at(now), detect.StepTimer, tl)
	if got := outcomes(again); !reflect.DeepEqual(got, []string{detect.OutcomeHang}) || again[0].Evidence != detect.EvidenceKernel {
		t.Fatalf("second connection: got %+v; want a hang from kernel evidence", again)
	}
	tl.Alerts = append(tl.Alerts, again...)

	// A third connection, dialled, answers: no verdict at the response.
	tl.Conns = append(tl.Conns, freshConn())
	tl.Response = at(2 * time.Second)
	if alerts, _ := d.Observe(at(2*time.Second), detect.StepResponse, tl); alerts != nil {
		t.Errorf("at the response: got %v; want nothing more", outcomes(alerts))
	}
}

// TestStaleReuseCloseDeadMessage: with CloseDead the kernel's hang says the
// connection is closed and what happens to the request, not that it will
// hang to its deadline; the timeout fallback's hang, which never closes, is
// unchanged.
func TestStaleReuseCloseDeadMessage(t *testing.T) {
	dead := later(916*time.Millisecond, "ESTABLISHED", 1, 2, 98, 85*time.Millisecond)
	for _, closeDead := range []bool{false, true} {
		d := &detect.StaleReuse{CloseDead: closeDead}
		tl := timeline(kernelConn(5 * time.Second))
		tl.TCP = dead
		alerts, _ := d.Observe(at(916*time.Millisecond), detect.StepTimer, tl)
		if len(alerts) != 1 {
			t.Fatalf("CloseDead %v: got %v; want one hang", closeDead, outcomes(alerts))
		}
		msg := alerts[0].Message
		if closed := strings.Contains(msg, "The connection is closed (WithCloseDeadConnections)"); closed != closeDead {
			t.Errorf("CloseDead %v: message says closed: %v: %s", closeDead, closed, msg)
		}
		if hangs := strings.Contains(msg, "will hang until its deadline"); hangs == closeDead {
			t.Errorf("CloseDead %v: message says it will hang: %v: %s", closeDead, hangs, msg)
		}

		fallback := timeline(staleConn(400 * time.Second))
		alerts, _ = d.Observe(at(10*time.Second), detect.StepTimer, fallback)
		if len(alerts) != 1 || alerts[0].Evidence != detect.EvidenceTimeout || !strings.Contains(alerts[0].Message, "will hang until its deadline") {
			t.Errorf("CloseDead %v, timeout fallback: got %+v; want a hang that says it will hang", closeDead, alerts)
		}
	}
}

// TestBracketLimit: the idle time a path's connections must stay below.
func TestBracketLimit(t *testing.T) {
	const sec, nat = time.Second, 350 * time.Second
	for _, tt := range []struct {
		b    detect.Bracket
		want time.Duration
	}{
		{detect.Bracket{}, nat},
		{detect.Bracket{Lower: 500 * sec}, nat}, // survived long: nothing learned of a limit
		{detect.Bracket{Upper: 6 * sec}, 6 * sec},
		{detect.Bracket{Lower: 3900 * time.Millisecond, Upper: 6 * sec}, 3900 * time.Millisecond},
	} {
		if got := tt.b.Limit(nat); got != tt.want {
			t.Errorf("%+v.Limit(%v): got %v; want %v", tt.b, nat, got, tt.want)
		}
	}
}
