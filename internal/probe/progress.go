package probe

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Progress shows a probe's [Status] while it runs, since a ladder takes
// minutes. Live, it redraws a block of lines in place every second (for a
// terminal); otherwise it writes plain lines: each new round, each verdict,
// and a summary every PlainEvery (for a log file or a pipe).
//
// Pass its Update method as Config.Progress, call Start before Run and Stop
// after. Its methods are safe for concurrent use.
type Progress struct {
	w     io.Writer
	live  bool
	width int // of the terminal; lines are cut to fit, 0 means no limit

	// PlainEvery is how often plain mode writes a summary line; zero means
	// 30 s. Set it before Start.
	PlainEvery time.Duration

	mu      sync.Mutex
	st      Status
	have    bool
	drawn   int          // lines of the last live block
	told    map[int]bool // plain: rungs whose verdict was written
	phase   string       // plain: the phase last announced
	stop    chan struct{}
	stopped chan struct{}
}

// NewProgress returns a display writing to w: live (redrawn in place with
// ANSI escapes, lines cut to width columns) or plain.
func NewProgress(w io.Writer, live bool, width int) *Progress {
	return &Progress{w: w, live: live, width: width, told: map[int]bool{}}
}

// Update takes a new status; it is Config.Progress.
func (p *Progress) Update(s Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st, p.have = s, true
	if p.live {
		p.draw(time.Now())
		return
	}
	p.tell(time.Now())
}

// Start starts the ticker that keeps the display current.
func (p *Progress) Start() {
	every := time.Second
	if !p.live {
		every = p.PlainEvery
		if every <= 0 {
			every = 30 * time.Second
		}
	}
	p.stop, p.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case now := <-t.C:
				p.tick(now)
			}
		}
	}()
}

// Stop stops the ticker and, live, erases the block so that the report
// can be written in its place.
func (p *Progress) Stop() {
	if p.stop != nil {
		close(p.stop)
		<-p.stopped
		p.stop = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live && p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA\r\x1b[J", p.drawn)
		p.drawn = 0
	}
}

func (p *Progress) tick(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.have {
		return
	}
	if p.live {
		p.draw(now)
		return
	}
	if len(p.roundRungs()) > 0 {
		fmt.Fprintf(p.w, "probe: %s\n", p.summary(now))
	}
}

// roundRungs are the rungs of the current round.
func (p *Progress) roundRungs() []Rung {
	var rs []Rung
	for _, r := range p.st.Rungs {
		if r.Round == p.st.Round {
			rs = append(rs, r)
		}
	}
	return rs
}

// summary is one line: phase, rungs done, time left.
func (p *Progress) summary(now time.Time) string {
	rs := p.roundRungs()
	done := 0
	var waiting []string
	for _, r := range rs {
		if r.State == Done {
			done++
		} else {
			waiting = append(waiting, Human(r.Idle))
		}
	}
	if len(rs) == 0 {
		return p.st.Phase
	}
	s := fmt.Sprintf("%s: %d of %d rungs done", p.st.Phase, done, len(rs))
	if len(waiting) > 0 {
		s += fmt.Sprintf(", waiting on %s, at most %s left", strings.Join(waiting, " "), roughly(p.st.Left(now)))
	}
	if b := p.st.Bracket; b != nil {
		s += fmt.Sprintf("; so far %s", bracketText(b))
	}
	return s
}

// roughly is d for a display that changes every second: tenths of a
// second below 10s, whole seconds above.
func roughly(d time.Duration) string {
	d = max(d, 0)
	if d < 10*time.Second {
		return Human(d.Round(100 * time.Millisecond))
	}
	return Human(d.Round(time.Second))
}

func bracketText(b *Bracket) string {
	return fmt.Sprintf("between %s and %s (%s)", Human(b.Low), Human(b.High), b.Kind.Label())
}

// tell writes the plain lines for what changed: a new phase, new verdicts.
func (p *Progress) tell(now time.Time) {
	if p.st.Phase != p.phase {
		p.phase = p.st.Phase
		rs := p.roundRungs()
		if len(rs) == 0 {
			fmt.Fprintf(p.w, "probe: %s: %s\n", p.st.Phase, p.st.URL)
		} else {
			idles := make([]time.Duration, len(rs))
			for i, r := range rs {
				idles[i] = r.Idle
			}
			fmt.Fprintf(p.w, "probe: %s: %d connections idle %s; all verdicts within %s\n",
				p.st.Phase, len(rs), humans(idles), roughly(p.st.Left(now)))
		}
	}
	for i, r := range p.st.Rungs {
		if r.State != Done || p.told[i] {
			continue
		}
		p.told[i] = true
		fmt.Fprintf(p.w, "probe: %s %s: %s: %s\n", roundName(r.Round), Human(r.Idle), r.Result.Label(), r.Detail)
	}
}

func roundName(round int) string {
	if round == 0 {
		return "ladder"
	}
	return fmt.Sprintf("refine %d", round)
}

// draw redraws the live block: a summary line, then one line per rung of
// the current round.
func (p *Progress) draw(now time.Time) {
	lines := []string{"conntrace probe " + p.st.URL + " · " + p.summary(now)}
	for _, r := range p.roundRungs() {
		lines = append(lines, fmt.Sprintf("  %-8s %s", Human(r.Idle), rungState(r, now)))
	}
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\r\x1b[J", p.drawn)
	}
	for _, l := range lines {
		b.WriteString(p.fit(l))
		b.WriteString("\n")
	}
	p.drawn = len(lines)
	io.WriteString(p.w, b.String())
}

func rungState(r Rung, now time.Time) string {
	switch r.State {
	case Connecting:
		return "connecting"
	case Idle:
		return "idle, request in " + roughly(r.SendAt.Sub(now))
	case Waiting:
		return "request sent, waiting " + roughly(now.Sub(r.SendAt))
	}
	if r.Result == ReusedOK {
		return r.Result.Label()
	}
	return r.Result.Label() + ": " + r.Detail
}

// fit cuts a line to the terminal's width, so that it never wraps: a
// wrapped line would throw off the cursor movement of the next redraw.
func (p *Progress) fit(l string) string {
	if p.width <= 0 {
		return l
	}
	rs := []rune(l)
	if len(rs) < p.width {
		return l
	}
	return string(rs[:p.width-1])
}
