//go:build !linux

package conntrace

import (
	"net/http"
	"testing"
	"time"

	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestKeepAliveGapUnknown: outside Linux the socket options are not read,
// the got_conn event says "unknown", and keepalive_gap never guesses, even
// with keep-alive off and a pool that keeps connections forever.
func TestKeepAliveGapUnknown(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	base := &http.Transport{DisableCompression: true}
	defer base.CloseIdleConnections()
	client := &http.Client{Transport: NewTransport(base, tel.options(WithNATIdleTimeout(time.Millisecond))...)}
	testkit.Get(t, client, srv.URL)
	got, _ := testkit.Event(tel.Spans.Ended()[0], vocab.EventGotConn)
	if v, _ := got.Value(vocab.AttrSocketKeepAlive); v.AsString() != "unknown" {
		t.Errorf("got_conn %s: got %q; want \"unknown\"", vocab.AttrSocketKeepAlive, v.AsString())
	}
	if got := tel.handled(); len(got) != 0 {
		t.Errorf("got alerts %+v; want none", got)
	}
}
