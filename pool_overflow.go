package conntrace

import (
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/conntrace/conntrace/detectors"
)

// The pool_overflow detector ([detectors.PoolOverflow]) sees many requests
// to a host, not one timeline, so the Transport feeds it directly: every
// PutIdleConn refusal for a full per-host pool, every new connection handed
// to a request (GotConn, not reused: ConnectDone does not fire for a
// DialContext that bypasses net.Dialer), and, for hosts that have
// overflowed, every request in flight.

// poolOverflowed reports a refusal of a full per-host pool, and raises the
// churn alert on this request if it is due. The refusal itself is counted by
// putIdleConn, and neither sets an error status on the span.
func (s *requestState) poolOverflowed() {
	now := time.Now()
	a, ok := s.t.pool.Overflowed(now, s.tl.Host, s.tl.Port)
	if !ok {
		return
	}
	alerts := []detectors.Alert{a}
	s.mu.Lock()
	if !s.ended {
		s.tl.Alerts = append(s.tl.Alerts, a)
		if s.events {
			s.span.AddEvent(EventAlert, trace.WithTimestamp(a.Time), trace.WithAttributes(alertAttrs(a)...))
		}
	}
	s.mu.Unlock()
	s.raise(alerts)
}

// dialed reports a new connection handed to a request for its host.
func (s *requestState) dialed() {
	s.t.pool.Dialed(time.Now(), s.tl.Host, s.tl.Port)
}
