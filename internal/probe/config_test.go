package probe

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // in the error; "" for none
	}{
		{"defaults", Config{URL: "https://example.test/health"}, ""},
		{"no URL", Config{}, "no URL given"},
		{"not a URL", Config{URL: "http://[::1"}, `bad URL "http://[::1"`},
		{"scheme", Config{URL: "ftp://example.test/"}, "the scheme must be http or https"},
		{"no scheme", Config{URL: "example.test/health"}, "the scheme must be http or https"},
		{"no host", Config{URL: "http:///path"}, "no host"},
		{"ladder above max", Config{URL: "http://a.test/", Ladder: []time.Duration{time.Minute, 30 * time.Minute}}, "ladder rung 30m is above max 20m"},
		{"ladder above own max", Config{URL: "http://a.test/", Max: time.Minute, Ladder: []time.Duration{2 * time.Minute}}, "ladder rung 2m is above max 1m"},
		{"non-positive rung", Config{URL: "http://a.test/", Ladder: []time.Duration{0, time.Minute}}, "ladder rung 0s: must be positive"},
		{"empty ladder", Config{URL: "http://a.test/", Ladder: []time.Duration{}}, "the ladder is empty"},
		{"too many rungs", Config{URL: "http://a.test/", Max: time.Hour, Ladder: make33()}, "at most 32"},
		{"negative timeout", Config{URL: "http://a.test/", Timeout: -time.Second}, "timeout -1s: must be positive"},
		{"resolution too fine", Config{URL: "http://a.test/", Resolution: time.Millisecond}, "resolution 1ms: at least 10ms"},
		{"split", Config{URL: "http://a.test/", Split: 17}, "split 17: must be between 1 and 16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.validate()
			if tt.want == "" {
				if err != nil {
					t.Errorf("got %v; want no error", err)
				}
				return
			}
			var ie *InputError
			if !errors.As(err, &ie) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v; want an InputError containing %q", err, tt.want)
			}
		})
	}
}

func make33() []time.Duration {
	l := make([]time.Duration, 33)
	for i := range l {
		l[i] = time.Duration(i+1) * time.Second
	}
	return l
}

func TestValidateSortsLadder(t *testing.T) {
	in := []time.Duration{2 * time.Minute, 30 * time.Second, 2 * time.Minute}
	s, err := Config{URL: "http://a.test/", Ladder: in}.validate()
	if err != nil {
		t.Fatal(err)
	}
	if got := humans(s.Ladder); got != "30s 2m" {
		t.Errorf("ladder %s; want 30s 2m", got)
	}
	if in[0] != 2*time.Minute {
		t.Errorf("the caller's ladder was changed: %v", in)
	}
}

func TestHuman(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{420 * time.Microsecond, "420µs"},
		{350 * time.Millisecond, "350ms"},
		{2400 * time.Millisecond, "2.4s"},
		{30 * time.Second, "30s"},
		{350 * time.Second, "5m50s"},
		{20 * time.Minute, "20m"},
		{90 * time.Minute, "1h30m"},
		{2 * time.Hour, "2h"},
	}
	for _, tt := range tests {
		if got := Human(tt.d); got != tt.want {
			t.Errorf("Human(%v) = %q; want %q", tt.d, got, tt.want)
		}
	}
}

func TestGoDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{310 * time.Second, "310 * time.Second"},
		{4 * time.Minute, "4 * time.Minute"},
		{time.Minute, "time.Minute"},
		{2500 * time.Millisecond, "2500 * time.Millisecond"},
		{2 * time.Hour, "2 * time.Hour"},
		{1500, "time.Duration(1500)"},
	}
	for _, tt := range tests {
		if got := GoDuration(tt.d); got != tt.want {
			t.Errorf("GoDuration(%v) = %q; want %q", tt.d, got, tt.want)
		}
	}
}
