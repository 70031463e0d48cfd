package conntrace

import (
	"net/http"

	"github.com/conntrace/conntrace/detectors"
)

// The body_not_drained detector ([detectors.BodyNotDrained]) needs to know
// how the response looked and how its body ended. The body wrapper
// (roundtripper.go) reports the end; the same facts count the HTTP/1
// connections that were not reused, by reason.

// noteResponse copies what the detectors need of res into tl. s.mu must be
// held.
func noteResponse(tl *detectors.Timeline, req *http.Request, res *http.Response) {
	if res == nil {
		return
	}
	tl.StatusCode, tl.ProtoMajor, tl.ContentLength = res.StatusCode, res.ProtoMajor, res.ContentLength
	tl.ConnClose = res.Close || req.Close
}

// endBody ends the request when its response body reached EOF (end
// BodyEOF), failed (BodyError, with err), was closed (BodyClosed) or was
// found unreachable, dropped by the caller (BodyAbandoned), after read
// bytes were read from it.
func (s *requestState) endBody(end detectors.BodyEnd, read int64, err error) {
	s.mu.Lock()
	if !s.ended {
		s.tl.Body, s.tl.BodyRead = end, read
	}
	s.mu.Unlock()
	if end == detectors.BodyAbandoned {
		s.event(EventBodyAbandoned, AttrBodyRead.Int64(read))
	}
	s.finish(err)
}

// notReusedReason says why net/http will not pool the HTTP/1 connection of
// an ended timeline, or "" if it will, or if it cannot be told.
func notReusedReason(tl *detectors.Timeline) string {
	switch {
	case len(tl.Conns) == 0 || tl.ProtoMajor != 1:
		return ""
	case tl.ConnClose:
		return ReasonConnectionClose
	case detectors.DiscardsConn(tl):
		return ReasonBodyNotDrained
	case tl.Body == detectors.BodyAbandoned && tl.StatusCode >= 200:
		return ReasonBodyAbandoned
	}
	return ""
}

// countNotReused counts a connection that was not reused, if reason is set.
func (s *requestState) countNotReused(reason string) {
	if reason != "" {
		s.count(s.t.inst.notReused, AttrReason.String(reason))
	}
}
