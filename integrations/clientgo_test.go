package integrations

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"

	"github.com/conntrace/conntrace"
	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// apiServer is a Kubernetes API server as far as a pod list and a pod
// watch go, over TLS as a real one is: a list has a Content-Length; a
// watch (watch=true) is plain application/json, chunked, one event, then
// open until the client stops it.
func apiServer(t *testing.T) (*httptest.Server, []byte) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/namespaces/default/pods" {
			http.NotFound(w, r)
			return
		}
		pod := map[string]any{"kind": "Pod", "apiVersion": "v1", "metadata": map[string]any{"name": "web-0", "namespace": "default", "resourceVersion": "7"}}
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") != "true" {
			b, _ := json.Marshal(map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{"resourceVersion": "7"}, "items": []any{pod}})
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"type": "ADDED", "object": pod})
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

// TestClientGo: conntrace in k8s.io/client-go through rest.Config. With
// WrapTransport alone, conntrace's base is client-go's
// *transport.trackedTransport around its *http.Transport: the audit and
// the detectors find the transport through WrappedRoundTripper. With
// rest.Config.Dial set to conntrace's WrapDialContext as well, every
// feature works, WithNATKeepAlive included: its connections are seen
// opening, and get keep-alive below the NAT's timeout. Both reuse their
// connection after an idle time, and a watch the caller stops ends its
// span without a body_not_drained alert.
func TestClientGo(t *testing.T) {
	integrated(t, "k8s.io/client-go")
	srv, ca := apiServer(t)

	t.Run("WrapTransport", func(t *testing.T) {
		rec := newRecorded(t)
		cfg := &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
		// The wiring (README, With other clients):
		var ct *conntrace.Transport
		cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
			ct = conntrace.NewTransport(rt, rec.options(conntrace.WithNATIdleTimeout(60*time.Second))...)
			return ct
		}
		exercisePods(t, cfg, rec)
		// What the README says client-go hands WrapTransport: its own
		// wrapper, which conntrace must see through.
		if got := fmt.Sprintf("%T", ct.Base()); got != "*transport.trackedTransport" {
			t.Errorf("conntrace's base is %s; want client-go's *transport.trackedTransport (if client-go no longer wraps it, the README is stale)", got)
		}
		points := rec.Collect(t)
		// client-go's transport: utilnet.SetTransportDefaults sets 90 s.
		if got := points.Total(vocab.MetricConfigIdleConnTimeout); got != 90 {
			t.Errorf("%s: got %v; want 90, the IdleConnTimeout of client-go's *http.Transport behind %T", vocab.MetricConfigIdleConnTimeout, got, ct.Base())
		}
		if !strings.Contains(rec.logs.String(), "IdleConnTimeout is 1m30s") {
			t.Errorf("the audit did not reach client-go's *http.Transport:\n%s", rec.logs.String())
		}
	})

	t.Run("WrapTransport+Dial", func(t *testing.T) {
		rec := newRecorded(t)
		cfg := &rest.Config{Host: srv.URL, TLSClientConfig: rest.TLSClientConfig{CAData: ca}}
		// The wiring (README, With other clients): conntrace dials too.
		dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		var dial conntrace.DialFunc
		cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
			ct := conntrace.NewTransport(rt, rec.options(conntrace.WithNATIdleTimeout(20*time.Second), conntrace.WithNATKeepAlive())...)
			dial = ct.WrapDialContext(dialer.DialContext)
			return ct
		}
		cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) { return dial(ctx, network, addr) }
		exercisePods(t, cfg, rec)
		points := rec.Collect(t)
		if got := points.Total("http.client.connection.duration") + points.Total("http.client.open_connections"); got == 0 {
			t.Errorf("no connection metrics: the connections were not dialled through WrapDialContext")
		}
		// WithNATKeepAlive: half the 20 s NAT timeout, below the dialer's 30 s.
		var idle []float64
		for _, s := range rec.clientSpans() {
			if ev, ok := testkit.Event(s, vocab.EventGotConn); ok {
				if v, ok := ev.Value(vocab.AttrSocketKeepAliveIdle); ok {
					idle = append(idle, v.AsFloat64())
				}
			}
		}
		if len(idle) == 0 || idle[0] != 10 {
			t.Errorf("keep-alive idle of the dialled connection: got %v; want 10 (s), set by WithNATKeepAlive", idle)
		}
	})
}

// exercisePods lists pods twice, a moment apart, then watches them and
// stops the watch after its first event, through a client-go core/v1
// client made from cfg, and checks what conntrace saw.
func exercisePods(t *testing.T, cfg *rest.Config, rec *recorded) {
	t.Helper()
	client, err := corev1client.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pods := client.Pods("default")
	for i := range 2 {
		list, err := pods.List(t.Context(), metav1.ListOptions{})
		if err != nil || len(list.Items) != 1 {
			t.Fatalf("list %d: %v, %v", i, list, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	w, err := pods.Watch(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-w.ResultChan():
		if ev.Type != "ADDED" {
			t.Fatalf("watch event %v; want ADDED", ev.Type)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event")
	}
	w.Stop() // a controller restarting its watch
	testkit.WaitFor(t, 5*time.Second, "the watch's span to end", func() bool { return len(rec.clientSpans()) == 3 })
	reusedOnce(t, rec)
	for _, a := range rec.alerted() {
		if a.Detector == detectors.BodyNotDrainedName {
			t.Errorf("stopping a watch raised %s: %s", a.Detector, a.Message)
		}
	}
}
