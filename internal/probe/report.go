package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/conntrace/conntrace/internal/advice"
)

// WriteText writes the report for people: the settings, a table of every
// rung, the bracket and its kind, and the Go settings to use.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "conntrace probe %s\n", r.URL)
	if r.Target != "" {
		fmt.Fprintf(&b, "  target:   %s\n", r.Target)
	}
	fmt.Fprintf(&b, "  ladder:   %s (max %s); resolution %s; timeout %s; %d rungs per refining round\n",
		humans(r.Ladder), Human(r.Max), Human(r.Resolution), Human(r.Timeout), r.Split)
	fmt.Fprintf(&b, "  took:     %s\n", Human(r.Elapsed.Round(time.Millisecond)))
	if r.Interrupted {
		b.WriteString("\nINTERRUPTED: this is what was learned so far.\n")
	}

	if len(r.Rungs) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ROUND\tIDLE\tRESULT\tIDLE SEEN\tANSWER AFTER\tDETAIL")
		for _, g := range r.Rungs {
			round := "ladder"
			if g.Round > 0 {
				round = fmt.Sprintf("refine %d", g.Round)
			}
			seen, waited := "", ""
			if g.IdleTime > 0 {
				seen = Human(g.IdleTime)
			}
			if g.Waited > 0 {
				waited = Human(g.Waited)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", round, Human(g.Idle), g.Result.Label(), seen, waited, g.Detail)
		}
		tw.Flush()
	}

	b.WriteString("\n")
	r.writeFinding(&b)
	if r.Note != "" {
		fmt.Fprintf(&b, "\nNote: %s.\n", strings.TrimSuffix(r.Note, "."))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) writeFinding(b *strings.Builder) {
	br := r.Bracket
	if br == nil {
		switch {
		case r.Interrupted && r.Measured() == 0:
			b.WriteString("Interrupted before anything was measured.\n")
		case r.Measured() == 0:
			b.WriteString("No rung could measure anything (see DETAIL above).\n")
		case r.Interrupted:
			fmt.Fprintf(b, "So far no change: connections were reused fine after up to %s idle.\n", Human(r.LongestOK))
		default:
			fmt.Fprintf(b, "No idle timeout up to %s: every connection was reused fine after up to %s idle.\n"+
				"Nothing to change for idle periods below that; probe with a larger --max to look further.\n",
				Human(r.Max), Human(r.LongestOK))
		}
		return
	}
	prefix := "Idle timeout"
	if r.Interrupted || br.Width() > r.Resolution {
		prefix = "Idle timeout (not refined to the resolution)"
	}
	if br.Low > 0 {
		fmt.Fprintf(b, "%s: between %s and %s (reused ok after %s idle; %s after %s).\n",
			prefix, Human(br.Low), Human(br.High), Human(br.Low), br.Kind.Label(), Human(br.High))
	} else {
		fmt.Fprintf(b, "%s: at most %s (%s after %s idle; no shorter idle period was tried).\n",
			prefix, Human(br.High), br.Kind.Label(), Human(br.High))
	}
	fmt.Fprintf(b, "Kind: %s. %s\n", kindLabel(br), explain(br))

	a := r.Advice
	if a == nil {
		fmt.Fprintf(b, "\nNo setting to advise: no idle period was reused fine. Probe again with --ladder below %s.\n", Human(br.High))
		return
	}
	fmt.Fprintf(b, "\nGo settings, a tenth below %s (transport is your *http.Transport, dialer the *net.Dialer it dials with):\n", Human(br.Low))
	fmt.Fprintf(b, "  transport.IdleConnTimeout = %s // retire pooled connections before the path does\n", GoDuration(a.IdleConnTimeout))
	if a.KeepAliveIdle > 0 {
		fmt.Fprintf(b, "  dialer.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: %s, Interval: %s} // or keep them alive: each probe refreshes the path's state\n",
			GoDuration(a.KeepAliveIdle), GoDuration(a.KeepAliveInterval))
	} else {
		fmt.Fprintf(b, "  // TCP keep-alive does not help here: %s.\n", a.NoKeepAlive)
	}
	if a.NATIdleTimeout > 0 {
		fmt.Fprintf(b, "  conntrace.WithNATIdleTimeout(%s) // alert when a connection idle that long is reused\n", GoDuration(a.NATIdleTimeout))
	}
}

// kindLabel is the bracket's kind for people; a close by the peer says
// how and when: "closed by peer (FIN while idle)", "closed by peer (reset
// on reuse)".
func kindLabel(b *Bracket) string {
	if b.Kind != ClosedByPeer || b.End == EndUnknown {
		return b.Kind.Label()
	}
	when := "on reuse"
	if b.How == HowClosedIdle {
		when = "while idle"
	}
	return fmt.Sprintf("%s (%s %s)", b.Kind.Label(), b.End.Label(), when)
}

// explain says what a bracket's kind means for a client. Only a reset or
// silence points at a middlebox; a FIN is the other end's own idle timer.
func explain(b *Bracket) string {
	const retried = "a request that is " + advice.Replayable
	idle := b.How == HowClosedIdle
	switch {
	case b.Kind == SilentDrop:
		return "A NAT or stateful firewall on the path forgets a connection idle this long and then drops its " +
			"packets without a reset: a request sent on it hangs until its deadline."
	case b.End == EndFIN && idle:
		return "The server, or an HTTP proxy or load balancer in front of it, closes connections idle this long with a FIN: " +
			"its own keep-alive idle timeout, not a firewall. net/http notices and dials anew, so nothing hangs, " +
			"but a request sent just as it closes fails or is retried."
	case b.End == EndFIN:
		return "The server, or an HTTP proxy or load balancer in front of it, answers a request that arrives after its own " +
			"keep-alive idle timeout with a FIN instead of a response: its timer, not a firewall. " +
			"net/http retries " + retried + " on a new connection; others fail."
	case b.End == EndReset && idle:
		return "A reset ends connections idle this long while they wait in the pool: a firewall or load balancer that " +
			"resets the flows it forgets, or a server that aborts its idle connections. net/http notices and dials anew, " +
			"so nothing hangs, but a request sent just as it is reset fails or is retried."
	case b.End == EndReset:
		return "A connection reused after this long is reset: a firewall or load balancer forgot the flow and answers " +
			"with a reset. net/http retries " + retried + " on a new connection; others fail."
	case idle:
		return "The server or a load balancer closes connections idle this long (a FIN or reset arrived while idle). " +
			"net/http notices and dials anew, so nothing hangs, but a request sent just as it closes fails or is retried."
	default:
		return "A connection reused after this long fails at once (a FIN or reset): the server's own idle timeout, " +
			"or a firewall or load balancer that forgot the flow. net/http retries " + retried + " on a new connection; others fail."
	}
}

func humans(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = Human(d)
	}
	return strings.Join(s, " ")
}

// GoDuration writes d as a Go expression: 270 * time.Second,
// 2500 * time.Millisecond, 4 * time.Minute.
func GoDuration(d time.Duration) string {
	unit := func(n time.Duration, name string) string {
		if n == 1 {
			return "time." + name
		}
		return fmt.Sprintf("%d * time.%s", n, name)
	}
	switch {
	case d != 0 && d%time.Hour == 0:
		return unit(d/time.Hour, "Hour")
	case d != 0 && d%time.Minute == 0:
		return unit(d/time.Minute, "Minute")
	case d != 0 && d%time.Second == 0:
		return unit(d/time.Second, "Second")
	case d != 0 && d%time.Millisecond == 0:
		return unit(d/time.Millisecond, "Millisecond")
	}
	return fmt.Sprintf("time.Duration(%d)", int64(d))
}

// The JSON form of a Report: durations are numbers of seconds, as in
// conntrace's telemetry.
type (
	jsonReport struct {
		URL         string       `json:"url"`
		Target      string       `json:"target,omitempty"`
		Ladder      []float64    `json:"ladder_s"`
		Max         float64      `json:"max_s"`
		Resolution  float64      `json:"resolution_s"`
		Timeout     float64      `json:"timeout_s"`
		Split       int          `json:"split"`
		Started     time.Time    `json:"started"`
		Elapsed     float64      `json:"elapsed_s"`
		Rungs       []jsonRung   `json:"rungs"`
		Bracket     *jsonBracket `json:"bracket"`
		LongestOK   float64      `json:"longest_ok_s"`
		Advice      *jsonAdvice  `json:"advice"`
		Interrupted bool         `json:"interrupted"`
		Note        string       `json:"note,omitempty"`
	}
	jsonRung struct {
		Round    int        `json:"round"`
		Idle     float64    `json:"idle_s"`
		Result   Result     `json:"result"`
		How      string     `json:"how,omitempty"`
		End      End        `json:"end,omitempty"`
		Detail   string     `json:"detail"`
		IdleTime float64    `json:"idle_seen_s,omitempty"`
		Waited   float64    `json:"waited_s,omitempty"`
		Alert    *jsonAlert `json:"alert,omitempty"`
	}
	jsonAlert struct {
		Detector string `json:"detector"`
		Outcome  string `json:"outcome"`
		Message  string `json:"message"`
		Advice   string `json:"advice"`
	}
	jsonBracket struct {
		Low  float64 `json:"low_s"`
		High float64 `json:"high_s"`
		Kind Result  `json:"kind"`
		How  string  `json:"how"`
		End  End     `json:"end,omitempty"`
	}
	jsonAdvice struct {
		Below             float64 `json:"below_s"`
		IdleConnTimeout   float64 `json:"idle_conn_timeout_s"`
		KeepAliveIdle     float64 `json:"keep_alive_idle_s,omitempty"`
		KeepAliveInterval float64 `json:"keep_alive_interval_s,omitempty"`
		NoKeepAlive       string  `json:"no_keep_alive,omitempty"`
		NATIdleTimeout    float64 `json:"nat_idle_timeout_s,omitempty"`
	}
)

// MarshalJSON encodes the report with durations as numbers of seconds.
func (r *Report) MarshalJSON() ([]byte, error) {
	j := jsonReport{
		URL:         r.URL,
		Target:      r.Target,
		Ladder:      make([]float64, len(r.Ladder)),
		Max:         r.Max.Seconds(),
		Resolution:  r.Resolution.Seconds(),
		Timeout:     r.Timeout.Seconds(),
		Split:       r.Split,
		Started:     r.Started,
		Elapsed:     r.Elapsed.Seconds(),
		Rungs:       make([]jsonRung, len(r.Rungs)),
		LongestOK:   r.LongestOK.Seconds(),
		Interrupted: r.Interrupted,
		Note:        r.Note,
	}
	for i, d := range r.Ladder {
		j.Ladder[i] = d.Seconds()
	}
	for i, g := range r.Rungs {
		jr := jsonRung{Round: g.Round, Idle: g.Idle.Seconds(), Result: g.Result, How: g.How, End: g.End, Detail: g.Detail,
			IdleTime: g.IdleTime.Seconds(), Waited: g.Waited.Seconds()}
		if a := g.Alert; a != nil {
			jr.Alert = &jsonAlert{Detector: a.Detector, Outcome: a.Outcome, Message: a.Message, Advice: a.Advice}
		}
		j.Rungs[i] = jr
	}
	if b := r.Bracket; b != nil {
		j.Bracket = &jsonBracket{Low: b.Low.Seconds(), High: b.High.Seconds(), Kind: b.Kind, How: b.How, End: b.End}
	}
	if a := r.Advice; a != nil {
		j.Advice = &jsonAdvice{Below: a.Below.Seconds(), IdleConnTimeout: a.IdleConnTimeout.Seconds(),
			KeepAliveIdle: a.KeepAliveIdle.Seconds(), KeepAliveInterval: a.KeepAliveInterval.Seconds(),
			NoKeepAlive: a.NoKeepAlive, NATIdleTimeout: a.NATIdleTimeout.Seconds()}
	}
	return json.Marshal(j)
}
