package detect

import (
	"strings"
	"time"
)

// StreamHeldFor is how long a response body of unknown length must have
// been read before it counts as a stream by its reading alone (see
// [IsStream]): a body left unread is closed within moments of its
// headers, a feed consumed until the caller stops is read for longer.
const StreamHeldFor = 10 * time.Second

// IsStream reports whether the response of t is a stream: a body that
// ends when the caller stops reading it, not at an end the server sends,
// so that closing it before EOF is how it is meant to end. It says so of
// a response that gave no Content-Length (ContentLength -1: chunked, or
// read until the connection closes) and either
//
//   - said it is a stream by its media type (see [StreamingMediaType]:
//     Server-Sent Events, newline-delimited JSON, a Kubernetes watch's
//     ";stream=watch");
//   - answered a watch request (Timeline.Watch: a Kubernetes "watch=true"
//     or "watch=1" query, whose JSON answer is plain application/json);
//   - or was read, some bytes of it, for at least [StreamHeldFor] before
//     it ended.
//
// A response with a Content-Length is never a stream: its end is known,
// and closing it before then is leaving it unread. Nor is one that gave
// no length and a media type of a single document (application/json),
// closed soon after its headers: a json.Decoder that stops at the value's
// end, leaving the terminating chunk unread, is the case body_not_drained
// exists for.
func IsStream(t *Timeline) bool {
	if t.ContentLength >= 0 || t.StatusCode < 200 {
		return false
	}
	if t.Watch || StreamingMediaType(t.ContentType) {
		return true
	}
	return t.BodyRead > 0 && !t.Response.IsZero() && !t.End.IsZero() && t.End.Sub(t.Response) >= StreamHeldFor
}

// StreamingMediaType reports whether contentType (a Content-Type header's
// value) names a media type whose body is a sequence of messages with no
// end of its own: text/event-stream, application/x-ndjson,
// application/ndjson, application/jsonl, application/json-seq,
// application/stream+json, application/x-json-stream,
// multipart/x-mixed-replace, or any media type with the parameter
// stream=watch (a Kubernetes watch in protobuf or CBOR).
func StreamingMediaType(contentType string) bool {
	if contentType == "" {
		return false
	}
	mt, params, _ := strings.Cut(contentType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	switch mt {
	case "text/event-stream", "application/x-ndjson", "application/ndjson", "application/jsonl",
		"application/json-seq", "application/stream+json", "application/x-json-stream", "multipart/x-mixed-replace":
		return true
	}
	for params != "" {
		var p string
		p, params, _ = strings.Cut(params, ";")
		k, v, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.TrimSpace(k), "stream") && strings.EqualFold(strings.Trim(strings.TrimSpace(v), `"`), "watch") {
			return true
		}
	}
	return false
}

// IsWatchQuery reports whether rawQuery (a URL's encoded query) asks for a
// watch, as Kubernetes' API does: watch=true or watch=1.
func IsWatchQuery(rawQuery string) bool {
	for rawQuery != "" {
		var kv string
		kv, rawQuery, _ = strings.Cut(rawQuery, "&")
		if v, ok := strings.CutPrefix(kv, "watch="); ok {
			return v == "true" || v == "1"
		}
	}
	return false
}
