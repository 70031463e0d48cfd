package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain: run must stop everything it started (server, NAT, transports).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRun runs the whole story with short timeouts and checks that a reader
// sees each act: reuse, the hang alert with its advice, and the cure.
func TestRun(t *testing.T) {
	var out strings.Builder
	if err := run(&out, 300*time.Millisecond, 200*time.Millisecond, false); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	acts := strings.SplitN(text, "\n3. ", 2)
	if len(acts) != 2 {
		t.Fatalf("no third act in:\n%s", text)
	}
	for _, want := range []string{
		"reused, idle",
		"ALERT stale_reuse/hang (ERROR), raised 2", // 200ms and a little: the hang timeout
		"while it still waits",
		"Advice: Set http.Transport.IdleConnTimeout below the NAT idle timeout (for example 270ms)",
		"error: context deadline exceeded",
		"conntrace.stale_reuses           {conntrace.outcome=hang}",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if got := strings.Count(acts[1], "200 OK"); got != 2 || strings.Contains(acts[1], "ALERT") {
		t.Errorf("the cure: got %d successful requests and alert %v; want 2 and none:\n%s", got, strings.Contains(acts[1], "ALERT"), acts[1])
	}
}

func TestRunRejectsBadDurations(t *testing.T) {
	if err := run(&strings.Builder{}, -time.Second, time.Second, false); err == nil || !strings.Contains(err.Error(), "-nat-idle (-1s)") {
		t.Errorf("got %v; want an error naming -nat-idle (-1s)", err)
	}
}
