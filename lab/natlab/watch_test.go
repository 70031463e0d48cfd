//go:build linux

package natlab

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
)

// TestNATLabWatch: a real client-go watch (k8s.io/client-go's clientset,
// over plain HTTP, so HTTP/1.1) against the lab's small watch server
// behind the NAT, pausing past the conntrack timeout. Keep-alive is off,
// as a dialer that sets none leaves it here. Without conntrace the watch
// stops silently: no event, no error, no end. With conntrace the
// stream_stall alert comes while it is stuck; with the cure
// (WithCloseDeadConnections) the watch ends at once and, re-established
// as a reflector would, delivers events again.
func TestNATLabWatch(t *testing.T) {
	l := newLab(t)
	T := l.ctTimeout
	pause := T + 3*time.Second
	ns := fmt.Sprintf("pause-%v", pause)
	window := pause + 4*time.Second // how long each watch is followed

	type watchRun struct {
		events   int
		lastAt   time.Time
		ended    time.Time // zero if the watch never ended
		errEvent bool
		rewatch  int // events of the re-established watch
		alerts   []detectors.Alert
	}
	run := func(t *testing.T, opts []conntrace.Option, wrap bool) *watchRun {
		r := &watchRun{}
		var o *observed
		cfg := &rest.Config{Host: "http://" + l.server, Dial: keepAliveOff.DialContext}
		if wrap {
			cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
				// conntrace over whatever client-go built (an *http.Transport,
				// or its wrappers around one).
				o = newObserved(&http.Transport{}, append([]conntrace.Option{conntrace.WithNATIdleTimeout(T)}, opts...)...)
				o.expectStreams = true
				o.Client.Transport = conntrace.NewTransport(rt, append([]conntrace.Option{
					conntrace.WithTracerProvider(o.tp), conntrace.WithMeterProvider(o.mp),
					conntrace.WithAlertInterval(time.Nanosecond), conntrace.WithoutAudit(),
					conntrace.WithLogger(slog.New(slog.DiscardHandler)),
					conntrace.WithAlertHandler(func(_ context.Context, a detectors.Alert) {
						o.mu.Lock()
						o.alerts = append(o.alerts, a)
						o.mu.Unlock()
					}),
					conntrace.WithNATIdleTimeout(T),
				}, opts...)...)
				return o.Client.Transport
			}
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), window)
		defer cancel()
		w, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		defer w.Stop()
	follow:
		for {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					r.ended = time.Now()
					break follow
				}
				if ev.Type == watch.Error {
					r.errEvent = true
					continue
				}
				r.events++
				r.lastAt = time.Now()
			case <-ctx.Done():
				break follow
			}
		}
		if !r.ended.IsZero() {
			// Re-established, as a reflector does when a watch ends.
			ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel2()
			w2, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx2, metav1.ListOptions{})
			if err == nil {
				for ev := range w2.ResultChan() {
					if ev.Type == watch.Added {
						r.rewatch++
					}
					if r.rewatch == 3 {
						break
					}
				}
				w2.Stop()
			}
		}
		if o != nil {
			r.alerts = o.streamAlerts()
			o.close()
		}
		return r
	}
	var mu sync.Mutex
	report := func(t *testing.T, name string, r *watchRun) {
		mu.Lock()
		defer mu.Unlock()
		forgot := r.lastAt.Add(T)
		alertAfter, endAfter := "none", fmt.Sprintf("never (followed %v)", window)
		if len(r.alerts) > 0 {
			alertAfter = r.alerts[0].Time.Sub(forgot).Round(time.Millisecond).String() + " after the NAT forgot"
		}
		if !r.ended.IsZero() {
			endAfter = r.ended.Sub(forgot).Round(time.Millisecond).String() + " after the NAT forgot"
		}
		t.Logf("WATCH %s: %d events before the pause of %v (conntrack %v), ended %s, error event %v, "+
			"%d stream_stall alerts (first: %s), re-established watch: %d events",
			name, r.events, pause, T, endAfter, r.errEvent, len(r.alerts), alertAfter, r.rewatch)
	}

	t.Run("without_conntrace_stops_silently", func(t *testing.T) {
		t.Parallel()
		r := run(t, nil, false)
		report(t, "without conntrace", r)
		if r.events != 3 || !r.ended.IsZero() || r.errEvent {
			t.Errorf("got %d events, ended %v, error event %v; want 3 events and then silence, no end, no error", r.events, !r.ended.IsZero(), r.errEvent)
		}
	})
	t.Run("with_conntrace_alert", func(t *testing.T) {
		t.Parallel()
		r := run(t, nil, true)
		report(t, "with conntrace", r)
		if r.events != 3 || !r.ended.IsZero() {
			t.Errorf("got %d events, ended %v; want 3 and no end (detection only)", r.events, !r.ended.IsZero())
		}
		if len(r.alerts) != 1 || r.alerts[0].Outcome != detectors.OutcomeDead || r.alerts[0].Evidence != detectors.EvidenceKernel {
			t.Fatalf("alerts %+v; want one stream_stall dead, kernel evidence", r.alerts)
		}
		if d := r.alerts[0].Time.Sub(r.lastAt.Add(T)); d > 1800*time.Millisecond {
			t.Errorf("alert %v after the NAT forgot; want within 1.5s (and conntrack's lag)", d)
		}
	})
	t.Run("with_cure_rewatches", func(t *testing.T) {
		t.Parallel()
		r := run(t, []conntrace.Option{conntrace.WithCloseDeadConnections()}, true)
		report(t, "with the cure", r)
		if r.ended.IsZero() {
			t.Fatalf("the watch did not end; want it ended by the cure")
		}
		if d := r.ended.Sub(r.lastAt.Add(T)); d > 2300*time.Millisecond {
			t.Errorf("watch ended %v after the NAT forgot; want within 2s", d)
		}
		if r.rewatch != 3 {
			t.Errorf("re-established watch: %d events; want 3", r.rewatch)
		}
		if len(r.alerts) != 1 {
			t.Errorf("got %d stream_stall alerts; want 1", len(r.alerts))
		}
	})
}
