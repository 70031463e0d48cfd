// Package detect turns the timeline of one HTTP client request into
// diagnoses: alerts that say what was seen and which setting to change. It
// is conntrace's, not an extension point: users read its results through
// the public detectors package (Alert, the outcomes, Audit).
//
// It is pure logic. A [Detector] is shown a [Timeline] at a few [Step]s and
// answers with alerts and, only when it suspects something, a wish to be shown
// the timeline again later. It never reads the clock or a socket: the
// caller passes the time and the kernel's readings in. This keeps every
// detector testable with plain values.
//
// The conntrace transport builds the timelines from net/http/httptrace hooks
// and routes the alerts to spans, metrics, logs and a user callback.
package detect

import (
	"net"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/conntrace/conntrace/detectors"
)

// Step names the moment at which a [Detector] is shown a [Timeline].
type Step int

const (
	// StepStart: the round trip began.
	StepStart Step = iota
	// StepGotConn: the request was handed a connection (httptrace GotConn).
	// It happens again if the transport retries the request.
	StepGotConn
	// StepPoolFull: net/http's idle pool refused the request's connection
	// because it already held MaxIdleConnsPerHost idle connections to the
	// host (PutIdleConn's error). The connection is closed. net/http
	// returns a connection once its response body is read, concurrently
	// with the body's end, so this step may come after StepEnd: the
	// timeline is then final, and alerts are raised but not recorded on it.
	StepPoolFull
	// StepTimer: the wake-up a detector asked for has come and the request
	// has not ended yet.
	StepTimer
	// StepResponse: the round trip returned, with the response headers or
	// with an error (then in Err). The connections the request used are
	// final: a detector about connection reuse can give its verdict here,
	// while a span opened outside the transport (otelhttp's) is still open.
	StepResponse
	// StepEnd: the request ended: its response body reached EOF or was
	// closed, or the round trip failed (right after StepResponse). It is the
	// last step of a timeline.
	StepEnd
)

var stepNames = [...]string{"start", "got_conn", "pool_full", "timer", "response", "end"}

// StepSet is a set of [Step]s: the steps at which a detector is shown a
// timeline.
type StepSet uint8

// StepsOf returns the set of steps.
func StepsOf(steps ...Step) StepSet {
	var s StepSet
	for _, step := range steps {
		s |= 1 << step
	}
	return s
}

// Has reports whether step is in s.
func (s StepSet) Has(step Step) bool { return s&(1<<step) != 0 }

// String returns the step's name, such as "got_conn".
func (s Step) String() string {
	if s < 0 || int(s) >= len(stepNames) {
		return "step(" + strconv.Itoa(int(s)) + ")"
	}
	return stepNames[s]
}

// Conn describes one connection handed to a request (one httptrace GotConn).
type Conn struct {
	At         time.Time     // when it was handed out
	Reused     bool          // taken from the pool or shared (HTTP/2), not dialled for this request
	WasIdle    bool          // it sat idle in the pool before this request
	IdleTime   time.Duration // how long it sat idle, if WasIdle
	RemoteAddr net.Addr      // the peer's address; may be nil. Kept as given, formatted only for an alert

	// Socket holds the TCP keep-alive options read from the socket of a
	// connection dialled for this request (Reused false). It is the zero
	// value, Known false, for a reused connection and wherever the options
	// cannot be read.
	Socket SocketOptions

	// TCP is the kernel's reading of a reused connection's socket when it
	// was handed out: its wire idle time, and the baseline later readings
	// are compared with. Only on Linux, for a connection reused after at
	// least KernelIdleGate of idle, with a socket under it; else nil.
	TCP *TCPInfo
}

// Timeline is what the transport saw of one request so far. Detectors must
// treat it as read-only; it is valid only during the call it was passed to.
type Timeline struct {
	Host   string // server host as in the request URL, without port
	Port   int    // server port, defaulted from the scheme
	Method string

	Start        time.Time // when the round trip began
	Conns        []Conn    // every connection handed out, in order; the last is current
	WroteRequest time.Time // when the request was last written; zero if not yet. No step of its own
	Response     time.Time // when the round trip returned (the response's headers, or an error); zero until StepResponse
	End          time.Time // when the request ended; zero until StepEnd
	Err          error     // the round trip's error, from StepResponse on

	// TCP is the kernel's latest reading of the current connection's
	// socket, taken at each StepTimer while its Conn.TCP is not nil; nil
	// if the read failed.
	TCP *TCPInfo

	// The response, from StepResponse on; zero if the round trip failed.
	StatusCode    int    // its status code
	ProtoMajor    int    // its HTTP major version: 1 or 2
	ConnClose     bool   // net/http closes the connection after it: Response.Close or Request.Close (Connection: close, HTTP/1.0)
	ContentLength int64  // Response.ContentLength; -1 if unknown
	ContentType   string // the response's Content-Type header, as sent
	Watch         bool   // the request asked for a watch (IsWatchQuery); read only for a response of unknown length

	// How the caller consumed the response body, at StepEnd.
	Body     BodyEnd // BodyNone if there was no body to read
	BodyRead int64   // bytes the caller read from it

	// Alerts holds the alerts already raised on this request, so a detector
	// can tell what it has said before without keeping state of its own.
	Alerts []Alert
}

// BodyEnd says how a response body ended.
type BodyEnd int

const (
	// BodyNone: there was no body to read (HEAD, 204, 304, Content-Length
	// 0, a failed round trip), or it has not ended yet.
	BodyNone BodyEnd = iota
	// BodyEOF: the caller read the body to EOF.
	BodyEOF
	// BodyClosed: the caller closed the body before reading it to EOF.
	BodyClosed
	// BodyError: reading the body failed.
	BodyError
	// BodyAbandoned: the caller dropped the body without reading it to
	// EOF or closing it; the garbage collector found it unreachable. For
	// HTTP/1, net/http holds its connection until the request's context
	// ends, if it does, and never reuses it.
	BodyAbandoned
)

var bodyEndNames = [...]string{"none", "eof", "closed", "error", "abandoned"}

// String returns the name of e, such as "closed".
func (e BodyEnd) String() string {
	if e < 0 || int(e) >= len(bodyEndNames) {
		return "body_end(" + strconv.Itoa(int(e)) + ")"
	}
	return bodyEndNames[e]
}

// Conn returns the current connection: the last one handed out, or nil if
// none was. It points into t.Conns: like t, valid only during the call t
// was passed to (a Conn is 100 bytes; detectors look at it at every step).
func (t *Timeline) Conn() *Conn {
	if len(t.Conns) == 0 {
		return nil
	}
	return &t.Conns[len(t.Conns)-1]
}

// Raised reports whether detector has already raised an alert on this request.
func (t *Timeline) Raised(detector string) bool {
	for i := range t.Alerts {
		if t.Alerts[i].Detector == detector {
			return true
		}
	}
	return false
}

// Alert and TCPInfo are the public package's: what an AlertHandler is given.
type (
	Alert   = detectors.Alert
	TCPInfo = detectors.TCPInfo
)

// Detector inspects request timelines. Implementations must be safe for
// concurrent use: Observe may be called concurrently for different timelines,
// but never concurrently for the same one, and never after StepEnd for it.
type Detector interface {
	// Name returns the detector's name, used as the Alert.Detector value and
	// as the conntrace.detector attribute.
	Name() string
	// Steps returns the steps at which Observe is to be called: it is called
	// at no other (StepTimer only when it asked to be woken).
	Steps() StepSet
	// Observe is shown the timeline at step, at time now. It returns the
	// alerts to raise (usually none) and wake: when positive, the caller shows
	// the timeline again at StepTimer after wake, unless the request ended
	// first. A detector that suspects nothing returns (nil, 0), so a healthy
	// request costs no timer.
	Observe(now time.Time, step Step, t *Timeline) (alerts []Alert, wake time.Duration)
}

// Multi is the detectors that watch one step, chosen once by [ForStep]:
// Observe shows each the step, with no more test of which steps it
// watches. Its alerts are the detectors' alerts in order, and its wake the
// earliest positive wake.
type Multi []Detector

// ForStep returns the detectors of all that watch step, in order.
func ForStep(all []Detector, step Step) Multi {
	var m Multi
	for _, d := range all {
		if d.Steps().Has(step) {
			m = append(m, d)
		}
	}
	return m
}

// Observe calls the Observe of every detector in m. An alert whose
// detector left its Summary empty gets the generic one (see [Summarize]).
func (m Multi) Observe(now time.Time, step Step, t *Timeline) ([]Alert, time.Duration) {
	var all []Alert
	var wake time.Duration
	for _, d := range m {
		alerts, w := d.Observe(now, step, t)
		if len(alerts) > 0 { // the usual case is none: skip the copy
			all = append(all, alerts...)
		}
		if w > 0 && (wake == 0 || w < wake) {
			wake = w
		}
	}
	for i := range all {
		if all[i].Summary == "" {
			all[i].Summary = Summarize(all[i])
		}
	}
	return all, wake
}

// SummaryMax is the length, in bytes, that [Summarize] keeps a summary
// to: about what a span list shows of a status description on one line.
const SummaryMax = 120

// Summarize is the generic Summary of an alert whose detector does not
// write one: "detector/outcome: " and the first clause of its Message (up
// to the first ", ", "; " or ". "), cut to SummaryMax with "...". Each of
// conntrace's detectors writes its own, with the values that decided it.
func Summarize(a Alert) string {
	clause := a.Message
	for _, sep := range []string{", ", "; ", ". "} {
		if i := strings.Index(clause, sep); i >= 0 {
			clause = clause[:i]
		}
	}
	line := a.Detector + "/" + a.Outcome + ": " + clause
	if len(line) <= SummaryMax {
		return line
	}
	cut := SummaryMax - len("...")
	for cut > 0 && !utf8.RuneStart(line[cut]) {
		cut--
	}
	return line[:cut] + "..."
}
