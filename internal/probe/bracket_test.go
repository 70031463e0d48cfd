package probe

import (
	"slices"
	"testing"
	"time"
)

const s = time.Second

func TestFindBracket(t *testing.T) {
	r := func(idle time.Duration, res Result) Rung { return Rung{Idle: idle, Result: res, How: string(res)} }
	tests := []struct {
		name  string
		rungs []Rung
		want  *Bracket
	}{
		{"all reused ok", []Rung{r(30*s, ReusedOK), r(60*s, ReusedOK)}, nil},
		{"first change after the last ok", []Rung{r(30*s, ReusedOK), r(60*s, ReusedOK), r(120*s, SilentDrop), r(240*s, Skipped)},
			&Bracket{Low: 60 * s, High: 120 * s, Kind: SilentDrop, How: string(SilentDrop)}},
		{"refining rungs narrow it, in any order", []Rung{r(60*s, ReusedOK), r(120*s, SilentDrop), r(96*s, SilentDrop), r(84*s, ReusedOK), r(108*s, SilentDrop), r(72*s, ReusedOK)},
			&Bracket{Low: 84 * s, High: 96 * s, Kind: SilentDrop, How: string(SilentDrop)}},
		{"the shortest change decides, of either kind", []Rung{r(30*s, ReusedOK), r(60*s, ClosedByPeer), r(120*s, SilentDrop)},
			&Bracket{Low: 30 * s, High: 60 * s, Kind: ClosedByPeer, How: string(ClosedByPeer)}},
		{"failed rungs count for nothing", []Rung{r(30*s, ReusedOK), r(60*s, Failed), r(120*s, SilentDrop)},
			&Bracket{Low: 30 * s, High: 120 * s, Kind: SilentDrop, How: string(SilentDrop)}},
		{"a reuse ok above the change is noise", []Rung{r(30*s, ClosedByPeer), r(60*s, ReusedOK)},
			&Bracket{Low: 0, High: 30 * s, Kind: ClosedByPeer, How: string(ClosedByPeer)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := findBracket(tt.rungs)
			if (got == nil) != (tt.want == nil) || (got != nil && *got != *tt.want) {
				t.Errorf("got %+v; want %+v", got, tt.want)
			}
		})
	}
}

func TestSplit(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		lo, hi     time.Duration
		n          int
		resolution time.Duration
		want       []time.Duration
	}{
		{60 * s, 120 * s, 4, 10 * s, []time.Duration{72 * s, 84 * s, 96 * s, 108 * s}},
		{84 * s, 96 * s, 4, 10 * s, []time.Duration{86 * s, 89 * s, 91 * s, 94 * s}}, // rounded to 1s
		{2 * s, 4 * s, 4, 500 * ms, []time.Duration{2400 * ms, 2800 * ms, 3200 * ms, 3600 * ms}},
		{0, 30 * s, 2, 10 * s, []time.Duration{10 * s, 20 * s}},
		{10 * s, 11 * s, 4, 10 * s, nil}, // nothing fits between at 1s steps
	}
	for _, tt := range tests {
		if got := split(tt.lo, tt.hi, tt.n, tt.resolution); !slices.Equal(got, tt.want) {
			t.Errorf("split(%v, %v, %d, %v) = %v; want %v", tt.lo, tt.hi, tt.n, tt.resolution, got, tt.want)
		}
	}
}

func TestDefaultLadder(t *testing.T) {
	tests := []struct {
		max  time.Duration
		want []time.Duration
	}{
		{20 * time.Minute, []time.Duration{30 * s, 60 * s, 120 * s, 240 * s, 350 * s, 600 * s, 1200 * s}},
		{5 * time.Minute, []time.Duration{30 * s, 60 * s, 120 * s, 240 * s, 300 * s}},
		{time.Hour, []time.Duration{30 * s, 60 * s, 120 * s, 240 * s, 350 * s, 600 * s, 1200 * s, 3600 * s}},
		{8 * s, []time.Duration{s, 2 * s, 4 * s, 8 * s}},
	}
	for _, tt := range tests {
		if got := DefaultLadder(tt.max); !slices.Equal(got, tt.want) {
			t.Errorf("DefaultLadder(%v) = %v; want %v", tt.max, got, tt.want)
		}
	}
}

func TestAdvise(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name string
		b    *Bracket
		want *Advice
	}{
		{"AWS NAT", &Bracket{Low: 350 * s, High: 360 * s, Kind: SilentDrop, How: HowNoResponse},
			&Advice{Below: 310 * s, IdleConnTimeout: 310 * s, KeepAliveIdle: 310 * s, KeepAliveInterval: 15 * s, NATIdleTimeout: 350 * s}},
		// Keep-alive in whole seconds, rounded down: Go would round 2.5s up
		// to 3s, the very timeout. Interval no longer than Idle.
		{"lab conntrack", &Bracket{Low: 2800 * ms, High: 3200 * ms, Kind: SilentDrop, How: HowNoResponse},
			&Advice{Below: 2500 * ms, IdleConnTimeout: 2500 * ms, KeepAliveIdle: 2 * s, KeepAliveInterval: 2 * s, NATIdleTimeout: 2800 * ms}},
		{"reset on reuse: keep-alive helps", &Bracket{Low: 60 * s, High: 70 * s, Kind: ClosedByPeer, How: HowClosedOnReuse, End: EndReset},
			&Advice{Below: 54 * s, IdleConnTimeout: 54 * s, KeepAliveIdle: 54 * s, KeepAliveInterval: 15 * s, NATIdleTimeout: 60 * s}},
		{"reset while idle: keep-alive helps", &Bracket{Low: 60 * s, High: 70 * s, Kind: ClosedByPeer, How: HowClosedIdle, End: EndReset},
			&Advice{Below: 54 * s, IdleConnTimeout: 54 * s, KeepAliveIdle: 54 * s, KeepAliveInterval: 15 * s, NATIdleTimeout: 60 * s}},
		{"FIN while idle: only IdleConnTimeout", &Bracket{Low: 42 * s, High: 48 * s, Kind: ClosedByPeer, How: HowClosedIdle, End: EndFIN},
			&Advice{Below: 37 * s, IdleConnTimeout: 37 * s, NoKeepAlive: finNoKeepAlive}},
		// lighttpd: a request after its timer gets a FIN, not a response.
		{"FIN on reuse: only IdleConnTimeout", &Bracket{Low: 42 * s, High: 48 * s, Kind: ClosedByPeer, How: HowClosedOnReuse, End: EndFIN},
			&Advice{Below: 37 * s, IdleConnTimeout: 37 * s, NoKeepAlive: finNoKeepAlive}},
		{"closed while idle, end unknown: only IdleConnTimeout", &Bracket{Low: 42 * s, High: 48 * s, Kind: ClosedByPeer, How: HowClosedIdle},
			&Advice{Below: 37 * s, IdleConnTimeout: 37 * s, NoKeepAlive: "its probes carry no data and do not reset the peer's idle timer"}},
		{"below a second: no keep-alive", &Bracket{Low: 800 * ms, High: 900 * ms, Kind: SilentDrop, How: HowNoResponse},
			&Advice{Below: 720 * ms, IdleConnTimeout: 720 * ms, NATIdleTimeout: 800 * ms,
				NoKeepAlive: "the kernel counts its delays in whole seconds, and 720ms is less than one"}},
		{"nothing reused ok: no advice", &Bracket{High: 30 * s, Kind: SilentDrop}, nil},
		{"no bracket: no advice", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := advise(tt.b)
			if (got == nil) != (tt.want == nil) || (got != nil && *got != *tt.want) {
				t.Errorf("got %+v;\nwant %+v", got, tt.want)
			}
		})
	}
}
