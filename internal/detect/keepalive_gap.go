package detect

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
)

// The detector's name and outcomes: the detectors package's, which says
// what each means.
const (
	KeepAliveGapName     = detectors.KeepAliveGapName
	OutcomeKeepAliveOff  = detectors.OutcomeKeepAliveOff
	OutcomeKeepAliveLate = detectors.OutcomeKeepAliveLate
)

// SocketOptions are the TCP keep-alive options of one connection's socket,
// as the kernel reports them (getsockopt), not as a dialer was asked to set
// them.
type SocketOptions struct {
	// Known reports whether the options were read. When false (not Linux,
	// not a TCP socket, or the read failed) the other fields are zero and
	// mean nothing.
	Known       bool
	KeepAlive   bool          // SO_KEEPALIVE: probes are sent on an idle connection
	Idle        time.Duration // TCP_KEEPIDLE: idle time before the first probe
	Interval    time.Duration // TCP_KEEPINTVL: time between probes
	Count       int           // TCP_KEEPCNT: unanswered probes before the kernel drops the connection
	UserTimeout time.Duration // TCP_USER_TIMEOUT: how long sent data may stay unacknowledged; zero is the kernel's default
}

// KeepAliveGap checks each new connection's real socket options against the
// NAT idle timeout: can the connection sit idle in the pool until the NAT
// forgets it? That takes both a pool that may keep it idle that long
// (PoolIdleTimeout) and nothing that refreshes the NAT's entry before then:
// TCP keep-alive off, or probes due only at or after the NAT idle timeout
// (the first, TCP_KEEPIDLE, or the next ones, TCP_KEEPINTVL), and for
// HTTP/2 no health-check ping before it either.
//
// It looks at [StepResponse], once a response tells HTTP/1 from HTTP/2, and
// only at a connection dialled for the request whose [Conn.Socket] is
// Known: it never guesses. It raises at most one alert per connection, on
// the request that dialled it.
//
// The zero value is ready to use with the defaults. A KeepAliveGap must not
// be changed after first use; it keeps no state.
type KeepAliveGap struct {
	NATIdleTimeout time.Duration // zero means DefaultNATIdleTimeout
	// PoolIdleTimeout is how long the client's pool keeps an idle
	// connection before closing it (http.Transport.IdleConnTimeout). Zero
	// means no limit, or unknown: the pool may keep it idle forever.
	PoolIdleTimeout time.Duration
	// HTTP2PingTimeout is how long an HTTP/2 connection may go without a
	// frame before the transport pings it (http.HTTP2Config.SendPingTimeout).
	// A ping is a packet the NAT sees, so one due before the NAT idle
	// timeout keeps an HTTP/2 connection alive. Zero means no pings.
	HTTP2PingTimeout time.Duration
}

// Name returns [KeepAliveGapName].
func (*KeepAliveGap) Name() string { return KeepAliveGapName }

// Steps returns [StepResponse].
func (*KeepAliveGap) Steps() StepSet { return StepsOf(StepResponse) }

func (d *KeepAliveGap) natIdle() time.Duration {
	if d.NATIdleTimeout > 0 {
		return d.NATIdleTimeout
	}
	return DefaultNATIdleTimeout
}

// Observe implements [Detector].
func (d *KeepAliveGap) Observe(now time.Time, step Step, t *Timeline) ([]Alert, time.Duration) {
	if step != StepResponse || t.ProtoMajor == 0 {
		return nil, 0
	}
	c := t.Conn()
	if c == nil || c.Reused || !c.Socket.Known {
		return nil, 0
	}
	natIdle := d.natIdle()
	if d.PoolIdleTimeout > 0 && d.PoolIdleTimeout < natIdle {
		return nil, 0 // the pool closes it first
	}
	if t.ProtoMajor == 2 && d.HTTP2PingTimeout > 0 && d.HTTP2PingTimeout < natIdle {
		return nil, 0 // pings keep it alive
	}
	s := c.Socket
	var outcome, seen, short string
	switch {
	case !s.KeepAlive:
		outcome, seen = OutcomeKeepAliveOff, "TCP keep-alive off (SO_KEEPALIVE 0)"
		short = "a new connection has TCP keep-alive off"
	case s.Idle >= natIdle:
		outcome = OutcomeKeepAliveLate
		seen = fmt.Sprintf("TCP keep-alive probes that start only after %s idle (TCP_KEEPIDLE)", advice.Round(s.Idle))
		short = "keep-alive probes start after " + advice.Short(s.Idle) + " idle"
	case s.Interval >= natIdle:
		// Linux sends the next probe an interval after the last one.
		outcome = OutcomeKeepAliveLate
		seen = fmt.Sprintf("TCP keep-alive probes that start after %s idle but repeat only every %s (TCP_KEEPINTVL)",
			advice.Round(s.Idle), advice.Round(s.Interval))
		short = "keep-alive probes repeat every " + advice.Short(s.Interval)
	default:
		return nil, 0
	}
	pool := "no limit or unknown"
	if d.PoolIdleTimeout > 0 {
		pool = advice.Round(d.PoolIdleTimeout).String()
	}
	a := Alert{
		Detector:  KeepAliveGapName,
		Outcome:   outcome,
		Level:     slog.LevelWarn,
		Time:      now,
		Host:      t.Host,
		Port:      t.Port,
		Threshold: natIdle,
		Summary:   KeepAliveGapName + "/" + outcome + ": " + short + "; the pool may idle it past the " + advice.Short(natIdle) + " NAT timeout",
		Message: fmt.Sprintf("%s: a new connection (to %s) has %s; the pool may keep it idle past the NAT idle timeout "+
			"of %s (IdleConnTimeout: %s) with no packet sent to refresh the NAT's entry, so a request that reuses it then "+
			"will likely hang", advice.HostPort(t.Host, t.Port), advice.Addr(c.RemoteAddr), seen, advice.Round(natIdle), pool),
		Advice: advice.Cure(natIdle),
	}
	if t.ProtoMajor == 2 {
		a.Advice += ", or for HTTP/2 let the health check ping it: " + advice.HTTP2Ping(natIdle)
	}
	a.Advice += "."
	return []Alert{a}, 0
}
