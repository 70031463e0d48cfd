package testkit

import (
	"os"
	"strings"
	"testing"
)

// ClearOTelEnv empties, for the test, every OTEL_* variable of the
// environment the test runs in, then sets the pairs in set (name, value,
// ...): a test sees the defaults, and only the variables it sets, whatever
// the environment holds. Every OTEL_* variable, not a list of those known
// to be read, so that a variable read by a new version of an exporter
// cannot slip past.
func ClearOTelEnv(t testing.TB, set ...string) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OTEL_") {
			t.Setenv(k, "")
		}
	}
	for i := 0; i+1 < len(set); i += 2 {
		t.Setenv(set[i], set[i+1])
	}
}
