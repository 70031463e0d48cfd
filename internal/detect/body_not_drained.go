package detect

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/advice"
)

// The detector's name and outcome: the detectors package's, which says
// what each means.
const (
	BodyNotDrainedName = detectors.BodyNotDrainedName
	OutcomeClosedEarly = detectors.OutcomeClosedEarly
)

// BodyNotDrained detects an HTTP/1.x response body closed before EOF.
// net/http returns a connection to its idle pool only after the caller has
// read the body to EOF (net/http/transport.go, persistConn.readLoop); a body
// closed earlier makes it close the connection instead, so the next request
// to the host dials, and for HTTPS handshakes, again.
//
// It raises nothing where no connection is lost: for HTTP/2 (closing a
// body resets one stream; the connection stays), for a response after which
// net/http closes the connection anyway ([Timeline.ConnClose]), for 1xx
// responses (101 Switching Protocols hands the connection to the caller),
// for responses without a body (HEAD, 204, 304: net/http pools the
// connection before it returns the response), for bodies read to EOF or
// whose read failed, for a timeline without a connection (a base
// transport that does not report httptrace events), and for a stream
// ([IsStream]: Server-Sent Events, a watch, a feed read for a while),
// which ends when its reader stops: closing it is how it ends, and it
// never reaches an EOF to drain to.
//
// BodyNotDrained keeps no state; its zero value is ready to use.
type BodyNotDrained struct{}

// Name returns [BodyNotDrainedName].
func (BodyNotDrained) Name() string { return BodyNotDrainedName }

// Steps returns [StepEnd].
func (BodyNotDrained) Steps() StepSet { return StepsOf(StepEnd) }

// Observe implements [Detector]. It looks only at [StepEnd].
func (BodyNotDrained) Observe(now time.Time, step Step, t *Timeline) ([]Alert, time.Duration) {
	if step != StepEnd || !DiscardsConn(t) || IsStream(t) {
		return nil, 0
	}
	var remote net.Addr
	if c := t.Conn(); c != nil {
		remote = c.RemoteAddr
	}
	read, short := "without reading any of it", "unread"
	switch {
	case t.BodyRead > 0 && t.ContentLength >= 0:
		read = fmt.Sprintf("after reading %d of its %d bytes", t.BodyRead, t.ContentLength)
		short = fmt.Sprintf("after %d of %d bytes", t.BodyRead, t.ContentLength)
	case t.BodyRead > 0:
		read = fmt.Sprintf("after reading %d bytes of it", t.BodyRead)
		short = fmt.Sprintf("after %d bytes", t.BodyRead)
	}
	return []Alert{{
		Detector: BodyNotDrainedName,
		Outcome:  OutcomeClosedEarly,
		Level:    slog.LevelWarn,
		Time:     now,
		Host:     t.Host,
		Port:     t.Port,
		Summary:  BodyNotDrainedName + "/" + OutcomeClosedEarly + ": body closed " + short + "; the connection was closed, not pooled",
		Message: fmt.Sprintf("%s %s: the response body (status %d) was closed before EOF, %s, so net/http closed "+
			"the connection (to %s) instead of returning it to the idle pool; the next request to this host must dial a new one",
			t.Method, advice.HostPort(t.Host, t.Port), t.StatusCode, read, advice.Addr(remote)),
		Advice: advice.DrainBody,
	}}, 0
}

// DiscardsConn reports whether net/http discards the connection of t at
// its end because the caller closed an HTTP/1.x response body before EOF,
// when it would otherwise have been pooled. It is the condition on which
// [BodyNotDrained] raises its alert.
func DiscardsConn(t *Timeline) bool {
	return t.Body == BodyClosed && t.ProtoMajor == 1 && !t.ConnClose && t.StatusCode >= 200 && len(t.Conns) > 0
}
