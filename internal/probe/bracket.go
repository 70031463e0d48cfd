package probe

import (
	"slices"
	"time"
)

// Bracket is where the path's behaviour first changes: a connection idle
// Low was reused fine, one idle High was not. The idle timeout lies in
// (Low, High].
type Bracket struct {
	Low  time.Duration // the longest idle period reused ok below High; 0 if none
	High time.Duration // the shortest idle period whose result changed
	Kind Result        // the result at High: ClosedByPeer or SilentDrop
	How  string        // the How of the rung at High
	End  End           // the End of the rung at High: a FIN or a reset, for ClosedByPeer
}

// Width is High - Low.
func (b Bracket) Width() time.Duration { return b.High - b.Low }

// findBracket returns the first change among the measured rungs, or nil if
// every measurement was "reused ok". The shortest changed rung decides;
// rungs that could not measure count for nothing.
func findBracket(rungs []Rung) *Bracket {
	var hi *Rung
	for i := range rungs {
		r := &rungs[i]
		if r.Result.Changed() && (hi == nil || r.Idle < hi.Idle) {
			hi = r
		}
	}
	if hi == nil {
		return nil
	}
	b := &Bracket{High: hi.Idle, Kind: hi.Result, How: hi.How, End: hi.End}
	for _, r := range rungs {
		if r.Result == ReusedOK && r.Idle < b.High && r.Idle > b.Low {
			b.Low = r.Idle
		}
	}
	return b
}

// longestOK is the longest idle period that was reused ok, or 0.
func longestOK(rungs []Rung) time.Duration {
	var d time.Duration
	for _, r := range rungs {
		if r.Result == ReusedOK && r.Idle > d {
			d = r.Idle
		}
	}
	return d
}

// split returns up to n idle periods spread evenly inside (lo, hi), rounded
// to a tenth of the resolution or finer, so that they read well.
func split(lo, hi time.Duration, n int, resolution time.Duration) []time.Duration {
	g := time.Millisecond
	for _, c := range []time.Duration{time.Second, 100 * time.Millisecond, 10 * time.Millisecond} {
		if 10*c <= resolution {
			g = c
			break
		}
	}
	var pts []time.Duration
	for i := 1; i <= n; i++ {
		p := (lo + (hi-lo)*time.Duration(i)/time.Duration(n+1)).Round(g)
		if p > lo && p < hi {
			pts = append(pts, p)
		}
	}
	return slices.Compact(pts)
}
