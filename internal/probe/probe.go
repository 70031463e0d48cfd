package probe

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Status is a snapshot of a probe in progress, for a progress display.
type Status struct {
	URL     string
	Phase   string // "checking the target", "ladder", "refining (round 2)"
	Round   int    // 0 for the ladder, then 1, 2, ...
	Timeout time.Duration
	Rungs   []Rung   // every rung so far, in the order they started
	Bracket *Bracket // the first change seen so far, if any
}

// Left is how long until the current round has all its verdicts, at the
// latest.
func (s Status) Left(now time.Time) time.Duration {
	var last time.Time
	for i := range s.Rungs {
		r := &s.Rungs[i]
		if r.Round == s.Round && r.State != Done {
			if due := r.due(s.Timeout); due.After(last) {
				last = due
			}
		}
	}
	return max(last.Sub(now), 0)
}

// Report is what a probe learned.
type Report struct {
	URL    string
	Target string // what the first request got: status, protocol, server address

	Ladder     []time.Duration
	Max        time.Duration
	Resolution time.Duration
	Timeout    time.Duration
	Split      int

	Started time.Time
	Elapsed time.Duration

	Rungs     []Rung   // every rung, round by round, each round by idle period
	Bracket   *Bracket // the first change; nil if every rung was reused ok
	LongestOK time.Duration
	Advice    *Advice // settings below the bracket; nil without a bracket or with Low 0

	Interrupted bool   // the context was cancelled: this is what was learned so far
	Note        string // why refining stopped before the resolution, if it did
}

// Measured is the number of rungs with a measurement (not failed, skipped
// or interrupted).
func (r *Report) Measured() int {
	n := 0
	for _, g := range r.Rungs {
		if g.Result == ReusedOK || g.Result.Changed() {
			n++
		}
	}
	return n
}

// Run probes cfg.URL and reports what it found. A bad Config, or a target
// that cannot be reached or does not keep connections alive, is an
// *[InputError]. When ctx is cancelled, the rungs in flight stop and Run
// returns the report so far, with Interrupted set.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	s, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	p := &prober{s: s, status: Status{URL: s.target.String(), Timeout: s.Timeout}}
	rep := &Report{
		URL:        s.target.String(),
		Ladder:     s.Ladder,
		Max:        s.Max,
		Resolution: s.Resolution,
		Timeout:    s.Timeout,
		Split:      s.Split,
		Started:    time.Now(),
	}
	p.setPhase(0, "checking the target")
	rep.Target, err = s.preflight(ctx)
	if err != nil && ctx.Err() == nil {
		return nil, err
	}
	if err == nil {
		p.round(ctx, 0, s.Ladder)
	}
	for round := 1; ctx.Err() == nil; round++ {
		b := p.bracket()
		if b == nil || b.Width() <= s.Resolution {
			break
		}
		pts := split(b.Low, b.High, s.Split, s.Resolution)
		if len(pts) == 0 {
			rep.Note = fmt.Sprintf("no idle period fits between %v and %v; stopped", Human(b.Low), Human(b.High))
			break
		}
		p.round(ctx, round, pts)
		if nb := p.bracket(); nb.Low == b.Low && nb.High == b.High && ctx.Err() == nil {
			rep.Note = fmt.Sprintf("refining round %d narrowed nothing (its rungs could not measure); stopped", round)
			break
		}
	}

	p.mu.Lock()
	rep.Rungs = slices.Clone(p.status.Rungs)
	p.mu.Unlock()
	rep.Bracket = findBracket(rep.Rungs)
	rep.LongestOK = longestOK(rep.Rungs)
	rep.Advice = advise(rep.Bracket)
	rep.Interrupted = ctx.Err() != nil
	rep.Elapsed = time.Since(rep.Started)
	return rep, nil
}

// prober holds the rungs of a run; every change goes through mu and is
// passed on to Config.Progress.
type prober struct {
	s      *settings
	mu     sync.Mutex
	status Status
}

// notify hands a snapshot to the progress callback. p.mu must be held, so
// that calls are serialized and in order.
func (p *prober) notify() {
	if p.s.Progress == nil {
		return
	}
	st := p.status
	st.Rungs = slices.Clone(st.Rungs)
	p.s.Progress(st)
}

func (p *prober) setPhase(round int, phase string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status.Round, p.status.Phase = round, phase
	p.notify()
}

func (p *prober) update(i int, f func(*Rung)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(&p.status.Rungs[i])
	if p.status.Rungs[i].State == Done {
		p.status.Bracket = findBracket(p.status.Rungs)
	}
	p.notify()
}

func (p *prober) bracket() *Bracket {
	p.mu.Lock()
	defer p.mu.Unlock()
	return findBracket(p.status.Rungs)
}

// round runs one rung per idle period (ascending), all at once, and
// returns when each has its verdict or was stopped. As soon as the shortest
// changed rung and every shorter one are done, the longer ones are
// stopped: the bracket is known and they would only cost time.
func (p *prober) round(ctx context.Context, round int, idles []time.Duration) {
	phase := "ladder"
	if round > 0 {
		phase = fmt.Sprintf("refining (round %d)", round)
	}
	now := time.Now()
	p.mu.Lock()
	first := len(p.status.Rungs)
	for _, d := range idles {
		p.status.Rungs = append(p.status.Rungs, Rung{Round: round, Idle: d, Started: now})
	}
	p.status.Round, p.status.Phase = round, phase
	p.notify()
	p.mu.Unlock()

	cancels := make([]context.CancelCauseFunc, len(idles))
	finished := make(chan struct{}, len(idles))
	var wg sync.WaitGroup
	for i, d := range idles {
		rctx, cancel := context.WithCancelCause(ctx)
		cancels[i] = cancel
		wg.Go(func() {
			p.s.measure(rctx, d, func(f func(*Rung)) { p.update(first+i, f) })
			finished <- struct{}{}
		})
	}
	for range idles {
		<-finished
		if k := p.decided(first, len(idles)); k >= 0 {
			for _, cancel := range cancels[k+1:] {
				cancel(errSkipped)
			}
		}
	}
	wg.Wait()
	for _, cancel := range cancels {
		cancel(nil)
	}
}

// decided returns the index, within the round starting at first, of its
// shortest changed rung once every shorter rung is done; else -1.
func (p *prober) decided(first, n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, r := range p.status.Rungs[first : first+n] {
		if r.State != Done {
			return -1
		}
		if r.Result.Changed() {
			return k
		}
	}
	return -1
}

// preflight makes one request the way the rungs will, so that a target
// that cannot be probed is reported at once, and describes the answer.
func (s *settings) preflight(ctx context.Context) (string, error) {
	ct := &connTrace{}
	base, rt := s.transport(time.Hour, ct)
	defer base.CloseIdleConnections()
	rctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	res, err := s.get(rctx, rt, ct)
	if err != nil {
		return "", inputErr("cannot reach %s: %v", s.target, err)
	}
	ct.mu.Lock()
	pooled, poolErr, remote := ct.pooled, ct.poolErr, ct.remote
	ct.mu.Unlock()
	if !pooled {
		return "", inputErr("cannot probe %s: %s", s.target, notPooled(poolErr))
	}
	desc := fmt.Sprintf("%d %s, %s", res.StatusCode, http.StatusText(res.StatusCode), res.Proto)
	if remote != "" {
		desc += ", from " + remote
	}
	return desc, nil
}
