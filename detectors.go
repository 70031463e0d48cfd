package conntrace

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"go.opentelemetry.io/otel"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/detect"
)

// What NewTransport learns from its base: when the base is an
// *http.Transport, or wraps one and says so (baseTransport), its pool and
// HTTP/2 settings configure the detectors, and its configuration is
// audited once.

// maxWrappers bounds how many wrappers baseTransport follows: a chain is
// a few deep (client-go's is up to six), and a wrapper that wraps itself
// must not hang NewTransport.
const maxWrappers = 32

// wrapped returns the RoundTripper that rt says it wraps, or nil if it
// says nothing: another conntrace Transport (Base), a client-go wrapper
// (WrappedRoundTripper, the k8s.io/apimachinery RoundTripperWrapper
// interface: its user agent, bearer token and impersonation wrappers, and
// the *transport.trackedTransport its TLS cache puts around every
// transport), or one with an Unwrap() http.RoundTripper method. A wrapper
// that panics when asked says nothing.
func wrapped(rt http.RoundTripper) (next http.RoundTripper) {
	defer func() {
		if recover() != nil {
			next = nil
		}
	}()
	switch w := rt.(type) {
	case *Transport:
		return w.base
	case interface{ WrappedRoundTripper() http.RoundTripper }:
		return w.WrappedRoundTripper()
	case interface{ Unwrap() http.RoundTripper }:
		return w.Unwrap()
	}
	return nil
}

// baseTransport returns the *http.Transport at the bottom of rt's chain of
// wrappers that say what they wrap (see wrapped), or nil if the chain ends
// elsewhere.
func baseTransport(rt http.RoundTripper) *http.Transport {
	for range maxWrappers {
		if tr, ok := rt.(*http.Transport); ok {
			return tr
		}
		if rt = wrapped(rt); rt == nil {
			return nil
		}
	}
	return nil
}

// newDetectors returns the detectors, configured from c and, if base is or
// wraps an *http.Transport, from it.
// stale_reuse learns each path's idle timeout into paths.
func newDetectors(c *config, base http.RoundTripper, paths *detect.PathTimeouts) []detect.Detector {
	stale := &detect.StaleReuse{NATIdleTimeout: c.natIdleTimeout, HangTimeout: c.hangTimeout, Paths: paths, CloseDead: c.closeDead}
	gap := &detect.KeepAliveGap{NATIdleTimeout: c.natIdleTimeout}
	pool := &detect.PoolOverflow{}
	all := []detect.Detector{stale, detect.BodyNotDrained{}, pool}
	tr := baseTransport(base)
	switch {
	case tr == nil:
		// Unknown pool: it may keep connections idle forever.
		all = append(all, gap)
	case tr.DisableKeepAlives || tr.MaxIdleConnsPerHost < 0:
		// Nothing is pooled, so nothing idles into a NAT timeout.
	default:
		gap.PoolIdleTimeout = max(tr.IdleConnTimeout, 0)
		if tr.HTTP2 != nil {
			gap.HTTP2PingTimeout = max(tr.HTTP2.SendPingTimeout, 0)
		}
		pool.MaxIdleConnsPerHost = tr.MaxIdleConnsPerHost
		all = append(all, gap)
	}
	return all
}

// newStreamStall returns the stream_stall detector, configured from c and,
// if base is or wraps an *http.Transport, from its HTTP/2 pings. It learns from, and
// uses, the same path timeouts as stale_reuse.
func newStreamStall(c *config, base http.RoundTripper, paths *detect.PathTimeouts) *detect.StreamStall {
	d := &detect.StreamStall{NATIdleTimeout: c.natIdleTimeout, Paths: paths, CloseDead: c.closeDead, KeepAlive: c.natKeepAlive}
	if tr := baseTransport(base); tr != nil && tr.HTTP2 != nil {
		d.HTTP2PingTimeout = max(tr.HTTP2.SendPingTimeout, 0)
	}
	return d
}

// logAudit logs the findings of [detectors.Audit] on base, if it is or
// wraps an *http.Transport, each at its severity, to the configured logger, once per
// distinct set of findings in the process: a service that makes a Transport
// per client, or per request, is told about a configuration once.
func logAudit(c *config, base http.RoundTripper) {
	tr := baseTransport(base)
	if tr == nil || !c.audit {
		return
	}
	findings := detectors.Audit(tr, c.natIdleTimeout)
	if len(findings) == 0 || !audited.first(findings) {
		return
	}
	// A user's slog.Handler may panic; that must not stop NewTransport.
	defer func() {
		if r := recover(); r != nil {
			otel.Handle(fmt.Errorf("conntrace: audit logger panicked: %v", r))
		}
	}()
	for _, f := range findings {
		c.logger.LogAttrs(context.Background(), f.Severity, "conntrace: audit: "+f.What,
			slog.String("finding", f.Name),
			slog.String("setting", f.Setting),
			slog.String("why", f.Why),
			slog.String("advice", f.Advice),
		)
	}
}

// audited remembers the sets of findings already logged. It is bounded:
// past maxAudited distinct sets, each new one is logged every time.
var audited auditLog

const maxAudited = 256

type auditLog struct {
	mu   sync.Mutex
	seen map[string]bool
}

// first reports whether findings were not logged before, and remembers them.
func (l *auditLog) first(findings []detectors.Finding) bool {
	var key strings.Builder
	for _, f := range findings {
		key.WriteString(f.Name + "\x00" + f.What + "\x00")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[key.String()] {
		return false
	}
	if len(l.seen) < maxAudited {
		if l.seen == nil {
			l.seen = make(map[string]bool)
		}
		l.seen[key.String()] = true
	}
	return true
}
