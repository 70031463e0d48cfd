package testkit

import (
	"testing"
	"time"
)

// Eventually polls cond every 5 ms until it holds, and reports whether it
// did within limit. It is for what a test cannot wait on otherwise: a
// server noticing a close a moment after the client made it, the garbage
// collector running a cleanup, the kernel acknowledging a write. Where
// the wait is for a timer, a testing/synctest bubble is exact instead.
func Eventually(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// WaitFor is Eventually that fails the test, naming what it waited for,
// if cond does not hold within limit.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Eventually(limit, cond) {
		t.Fatalf("timed out after %v waiting for %s", limit, what)
	}
}
