package probe

import (
	"time"

	"github.com/conntrace/conntrace/internal/advice"
)

// Advice is the Go configuration that keeps pooled connections clear of a
// [Bracket], with a margin of a tenth below its Low end.
type Advice struct {
	// Below is the idle period the settings stay under: Low less the margin,
	// rounded down. Zero when Low is 0 (no idle period was reused fine).
	Below time.Duration
	// IdleConnTimeout for http.Transport: retire pooled connections before
	// the path does. Always advised when Below is set.
	IdleConnTimeout time.Duration
	// KeepAliveIdle and KeepAliveInterval for net.Dialer's KeepAliveConfig:
	// probes that refresh the state of a NAT or firewall. Whole seconds:
	// Go rounds them up to seconds for the kernel. Zero when probes cannot
	// help; NoKeepAlive says why.
	KeepAliveIdle     time.Duration
	KeepAliveInterval time.Duration
	NoKeepAlive       string
	// NATIdleTimeout for conntrace.WithNATIdleTimeout: a connection reused
	// after this long is suspect. Set for a path that forgets flows.
	NATIdleTimeout time.Duration
}

// finNoKeepAlive is why keep-alive is not advised against a FIN.
const finNoKeepAlive = "a FIN is the server's (or a proxy's) own idle timer closing the connection, " +
	"and keep-alive probes carry no data, so they do not reset it"

func advise(b *Bracket) *Advice {
	if b == nil || b.Low <= 0 {
		return nil
	}
	below := withMargin(b.Low)
	a := &Advice{Below: below, IdleConnTimeout: below}
	switch {
	case b.Kind == ClosedByPeer && b.End == EndFIN:
		// An orderly close, while idle or in answer to the reused request:
		// the server's (or an HTTP proxy's) own idle timer. Only leaving
		// first helps; a reset or silence is what a middlebox does.
		a.NoKeepAlive = finNoKeepAlive
		return a
	case b.Kind == ClosedByPeer && b.End == EndUnknown && b.How == HowClosedIdle:
		// Neither a FIN nor a reset could be told: the pool saw the close
		// while idle, most likely the peer's own idle timer.
		a.NoKeepAlive = "its probes carry no data and do not reset the peer's idle timer"
		return a
	}
	a.NATIdleTimeout = b.Low
	// Go rounds keep-alive delays up to whole seconds (net/tcpsockopt_unix.go),
	// so 2.5s would become 3s: round down instead.
	a.KeepAliveIdle = below.Truncate(time.Second)
	if a.KeepAliveIdle <= 0 {
		a.NoKeepAlive = "the kernel counts its delays in whole seconds, and " + Human(below) + " is less than one"
		return a
	}
	// After an answered probe Linux waits max(TCP_KEEPIDLE, TCP_KEEPINTVL)
	// before the next one, so an Idle below Go's 15 s default interval needs
	// the interval lowered too (seen in the NAT lab: Idle 1s with the
	// default interval lets a 3 s conntrack entry expire).
	a.KeepAliveInterval = min(a.KeepAliveIdle, advice.GoKeepAliveInterval)
	return a
}

// withMargin is a tenth below d (advice.IdleConnTimeoutBelow, as the
// alerts advise), rounded down to a step that reads well.
func withMargin(d time.Duration) time.Duration {
	m := advice.IdleConnTimeoutBelow(d)
	var step time.Duration
	switch {
	case m >= 5*time.Minute:
		step = 10 * time.Second
	case m >= time.Minute:
		step = 5 * time.Second
	case m >= 10*time.Second:
		step = time.Second
	case m >= time.Second:
		step = 100 * time.Millisecond
	default:
		step = 10 * time.Millisecond
	}
	if t := m.Truncate(step); t > 0 {
		return t
	}
	return m
}
