package detect

import (
	"testing"
	"time"
)

func TestStreamingMediaType(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream":                                true,
		"text/event-stream; charset=utf-8":                 true,
		"Application/X-NDJSON":                             true,
		"application/vnd.kubernetes.protobuf;stream=watch": true,
		`application/cbor; stream="watch"`:                 true,
		"application/json":                                 false,
		"application/json; charset=utf-8":                  false,
		"text/plain; stream=other":                         false,
		"":                                                 false,
		"application/octet-stream":                         false,
	} {
		if got := StreamingMediaType(ct); got != want {
			t.Errorf("StreamingMediaType(%q) = %v; want %v", ct, got, want)
		}
	}
}

func TestIsWatchQuery(t *testing.T) {
	for q, want := range map[string]bool{
		"watch=true":                       true,
		"resourceVersion=5&watch=1":        true,
		"watch=false":                      false,
		"labelSelector=watch%3Dtrue":       false,
		"allowWatchBookmarks=true&watch=0": false,
		"":                                 false,
	} {
		if got := IsWatchQuery(q); got != want {
			t.Errorf("IsWatchQuery(%q) = %v; want %v", q, got, want)
		}
	}
}

// TestIsStream: the line between a stream and a body left undrained, in
// plain values: what the response said of itself, and how long it was read.
func TestIsStream(t *testing.T) {
	t0 := time.Unix(1000, 0)
	base := Timeline{StatusCode: 200, ProtoMajor: 1, ContentLength: -1, Response: t0, End: t0.Add(50 * time.Millisecond), BodyRead: 40}
	tests := []struct {
		name string
		edit func(*Timeline)
		want bool
	}{
		{"sse", func(tl *Timeline) { tl.ContentType = "text/event-stream" }, true},
		{"watch, plain json", func(tl *Timeline) { tl.ContentType, tl.Watch = "application/json", true }, true},
		{"json document closed at once", func(tl *Timeline) { tl.ContentType = "application/json" }, false},
		{"no length, read 10s", func(tl *Timeline) { tl.End = t0.Add(StreamHeldFor) }, true},
		{"no length, held 10s, nothing read", func(tl *Timeline) { tl.End, tl.BodyRead = t0.Add(StreamHeldFor), 0 }, false},
		{"no length, read 9s", func(tl *Timeline) { tl.End = t0.Add(StreamHeldFor - time.Second) }, false},
		{"sse type but a Content-Length", func(tl *Timeline) { tl.ContentType, tl.ContentLength = "text/event-stream", 100 }, false},
		{"known length read for a minute", func(tl *Timeline) { tl.ContentLength, tl.End = 1<<30, t0.Add(time.Minute) }, false},
	}
	for _, tt := range tests {
		tl := base
		tt.edit(&tl)
		if got := IsStream(&tl); got != tt.want {
			t.Errorf("%s: IsStream = %v; want %v", tt.name, got, tt.want)
		}
		// body_not_drained follows the same line.
		tl.Body, tl.Conns = BodyClosed, []Conn{{At: t0}}
		alerts, _ := BodyNotDrained{}.Observe(tl.End, StepEnd, &tl)
		if got := len(alerts) == 0; got != tt.want {
			t.Errorf("%s: body_not_drained raised %d alerts; want an alert only for a body that is not a stream", tt.name, len(alerts))
		}
	}
}
