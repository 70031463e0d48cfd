package advice_test

import (
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/advice"
)

func TestRound(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want time.Duration
	}{
		// From a minute up: whole seconds.
		{in: time.Minute, want: time.Minute},
		{in: 61*time.Second + 499*time.Millisecond, want: 61 * time.Second},
		{in: 61*time.Second + 500*time.Millisecond, want: 62 * time.Second},
		{in: 350*time.Second + 123456789, want: 350 * time.Second},
		// From a second up: milliseconds.
		{in: time.Second, want: time.Second},
		{in: 1234567890 * time.Nanosecond, want: 1235 * time.Millisecond},
		{in: 59*time.Second + 999400*time.Microsecond, want: 59*time.Second + 999*time.Millisecond},
		// Below a second: microseconds.
		{in: 999999999 * time.Nanosecond, want: time.Second},
		{in: 1234567 * time.Nanosecond, want: 1235 * time.Microsecond},
		{in: 400 * time.Nanosecond, want: 0},
		{in: 0, want: 0},
	}
	for _, tt := range tests {
		if got := advice.Round(tt.in); got != tt.want {
			t.Errorf("advice.Round(%v): got %v; want %v", tt.in, got, tt.want)
		}
	}
}

func TestShort(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{6012 * time.Millisecond, "6.0s"},
		{850 * time.Millisecond, "0.8s"},
		{2501 * time.Millisecond, "2.5s"},
		{0, "0.0s"},
		{350*time.Second + 400*time.Millisecond, "5m50s"},
		{2 * time.Hour, "2h0m0s"},
	}
	for _, tt := range tests {
		if got := advice.Short(tt.in); got != tt.want {
			t.Errorf("advice.Short(%v) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestKeepAliveEvery(t *testing.T) {
	tests := []struct{ nat, want time.Duration }{
		{350 * time.Second, 175 * time.Second},
		{241 * time.Second, 120 * time.Second},
		{2 * time.Second, time.Second},
		{time.Second, time.Second},
		{200 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		if got := advice.KeepAliveEvery(tt.nat); got != tt.want {
			t.Errorf("advice.KeepAliveEvery(%v): got %v; want %v", tt.nat, got, tt.want)
		}
	}
}
