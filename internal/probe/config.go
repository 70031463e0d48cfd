package probe

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Defaults of [Config].
const (
	DefaultMax        = 20 * time.Minute
	DefaultResolution = 10 * time.Second
	DefaultTimeout    = 10 * time.Second
	DefaultSplit      = 4
)

// Limits of [Config]: each rung is a connection to someone's server.
const (
	MaxRungs      = 32
	MaxSplit      = 16
	MinResolution = 10 * time.Millisecond
)

// wellKnown are the rungs of the default ladder: doubling from 30 s, plus
// the idle timeouts of the big cloud NATs (Azure NAT Gateway 4 min, AWS NAT
// Gateway 350 s, GCP Cloud NAT 20 min), so that a rung lands on each.
var wellKnown = []time.Duration{
	30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute,
	350 * time.Second, 10 * time.Minute, 20 * time.Minute,
}

// DefaultLadder returns the first round's idle periods for a longest idle
// period of max: 30s, 1m, 2m, 4m, 350s, 10m, 20m, those below max, then max
// itself. For max below 30s it is max/8, max/4, max/2, max. max must be
// positive.
func DefaultLadder(max time.Duration) []time.Duration {
	var l []time.Duration
	for _, d := range wellKnown {
		if d < max {
			l = append(l, d)
		}
	}
	if len(l) == 0 {
		l = []time.Duration{max / 8, max / 4, max / 2}
	}
	return append(l, max)
}

// Config says what to probe and how. Only URL is required; every zero
// field means its default.
type Config struct {
	// URL is the http or https URL to GET. The response must let the
	// connection be kept alive (no "Connection: close"). Its body is read
	// to the end each time.
	URL string
	// Ladder lists the idle periods of the first round, each positive and
	// at most Max; nil means DefaultLadder(Max). They are sorted and
	// deduplicated.
	Ladder []time.Duration
	// Max is the longest idle period probed (default 20 min).
	Max time.Duration
	// Resolution is the bracket width at which refining stops (default 10 s).
	Resolution time.Duration
	// Timeout is how long a request may wait for an answer: a reused
	// connection that stays silent this long is a silent drop. It also
	// bounds the first request of each rung (default 10 s).
	Timeout time.Duration
	// Split is the number of rungs of each refining round (default 4): a
	// round shrinks the bracket to 1/(Split+1), in the time of its longest
	// rung.
	Split int
	// DialContext dials each rung's connection. nil means a net.Dialer with
	// TCP keep-alive off (KeepAlive -1), whose probes would otherwise
	// refresh the very state being measured. Tests pass
	// natsim.Network.DialContext.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSClientConfig configures TLS for an https URL; nil means the
	// defaults. Only HTTP/1.1 is offered.
	TLSClientConfig *tls.Config
	// Progress, if not nil, is called with a fresh Status after every change
	// (a rung's step, a new round). Calls are serialized; it must return
	// quickly.
	Progress func(Status)
}

// InputError is a [Config] or target that cannot be probed: a bad URL or
// duration, a ladder above Max, an unreachable server, a server that does
// not keep connections alive. The command exits with code 2 for it.
type InputError struct{ msg string }

func (e *InputError) Error() string { return e.msg }

func inputErr(format string, args ...any) error {
	return &InputError{msg: fmt.Sprintf(format, args...)}
}

// settings is a Config with defaults applied and checked.
type settings struct {
	Config
	target *url.URL
}

func (c Config) validate() (*settings, error) {
	s := &settings{Config: c}
	u, err := parseURL(c.URL)
	if err != nil {
		return nil, err
	}
	s.target = u
	if s.Max == 0 {
		s.Max = DefaultMax
	}
	if s.Resolution == 0 {
		s.Resolution = DefaultResolution
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	if s.Split == 0 {
		s.Split = DefaultSplit
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"max", s.Max}, {"resolution", s.Resolution}, {"timeout", s.Timeout}} {
		if d.v < 0 {
			return nil, inputErr("%s %v: must be positive", d.name, d.v)
		}
	}
	if s.Resolution < MinResolution {
		return nil, inputErr("resolution %v: at least %v (a network path shows nothing finer)", s.Resolution, MinResolution)
	}
	if s.Split < 1 || s.Split > MaxSplit {
		return nil, inputErr("split %d: must be between 1 and %d", s.Split, MaxSplit)
	}
	if s.Ladder == nil {
		s.Ladder = DefaultLadder(s.Max)
	} else {
		s.Ladder = slices.Clone(s.Ladder)
		slices.Sort(s.Ladder)
		s.Ladder = slices.Compact(s.Ladder)
	}
	if len(s.Ladder) == 0 {
		return nil, inputErr("the ladder is empty")
	}
	if len(s.Ladder) > MaxRungs {
		return nil, inputErr("the ladder has %d rungs; at most %d (each is a connection to the server)", len(s.Ladder), MaxRungs)
	}
	if d := s.Ladder[0]; d <= 0 {
		return nil, inputErr("ladder rung %v: must be positive", d)
	}
	if d := s.Ladder[len(s.Ladder)-1]; d > s.Max {
		return nil, inputErr("ladder rung %v is above max %v: raise max or drop the rung", Human(d), Human(s.Max))
	}
	return s, nil
}

func parseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, inputErr("no URL given")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, inputErr("bad URL %q: %v", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, inputErr("bad URL %q: the scheme must be http or https", raw)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, inputErr("bad URL %q: no host", raw)
	}
	if p := u.Port(); p != "" && strings.TrimLeft(p, "0123456789") != "" {
		return nil, inputErr("bad URL %q: bad port %q", raw, p)
	}
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// Human formats d for people: 420µs, 350ms, 2.4s, 5m50s, 20m, 1h30m.
func Human(d time.Duration) string {
	switch {
	case d == 0:
		return "0s"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(10 * time.Millisecond).String()
	}
	s := d.Round(time.Second).String() // such as 5m50s, 20m0s, 1h30m0s, 2h0m0s
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
