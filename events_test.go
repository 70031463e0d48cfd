package conntrace

import (
	"log/slog"
	"testing"

	"github.com/conntrace/conntrace/detectors"
)

// TestVerdict: the alert a request's span shows is its most severe of
// level WARN or above, the first raised among equals; INFO alone is none.
func TestVerdict(t *testing.T) {
	info := detectors.Alert{Outcome: "ok", Level: slog.LevelInfo}
	warn := detectors.Alert{Outcome: "retried", Level: slog.LevelWarn}
	warn2 := detectors.Alert{Outcome: "closed_early", Level: slog.LevelWarn}
	hang := detectors.Alert{Outcome: "hang", Level: slog.LevelError}
	tests := []struct {
		name   string
		alerts []detectors.Alert
		want   int
	}{
		{"none", nil, -1},
		{"INFO only", []detectors.Alert{info}, -1},
		{"a warning after INFO", []detectors.Alert{info, warn}, 1},
		{"the first of equals", []detectors.Alert{warn, warn2}, 0},
		{"an error after a warning", []detectors.Alert{warn, hang}, 1},
		{"an error before a warning", []detectors.Alert{hang, warn}, 0},
	}
	for _, tt := range tests {
		if got := verdict(tt.alerts); got != tt.want {
			t.Errorf("%s: verdict %d; want %d", tt.name, got, tt.want)
		}
	}
}
