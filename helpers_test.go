package conntrace

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"

	"github.com/conntrace/conntrace/detectors"
	"github.com/conntrace/conntrace/internal/natsim"
	"github.com/conntrace/conntrace/internal/testkit"
	"github.com/conntrace/conntrace/vocab"
)

// TestMain fails the package's tests if any leave a goroutine behind: a
// leaked hang timer, body watcher or connection would show here.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// telemetry is what a test Transport reports to: its own providers, never
// the OTel globals, its own log and the alerts its handler was given.
type telemetry struct {
	*testkit.Telemetry
	logs *testkit.SyncBuffer

	mu     sync.Mutex
	alerts []detectors.Alert
}

// newTelemetry returns a test's telemetry; opts are its TracerProvider's,
// beside the span recorder (sdktrace.WithSampler, say).
func newTelemetry(t *testing.T, opts ...sdktrace.TracerProviderOption) *telemetry {
	t.Helper()
	return &telemetry{Telemetry: testkit.NewTelemetry(t, opts...), logs: &testkit.SyncBuffer{}}
}

// options wires a Transport to tel, then applies extra.
func (tel *telemetry) options(extra ...Option) []Option {
	return append([]Option{
		WithTracerProvider(tel.TP),
		WithMeterProvider(tel.MP),
		WithLogger(slog.New(slog.NewTextHandler(tel.logs, nil))),
		WithAlertHandler(func(_ context.Context, a detectors.Alert) {
			tel.mu.Lock()
			tel.alerts = append(tel.alerts, a)
			tel.mu.Unlock()
		}),
	}, extra...)
}

func (tel *telemetry) handled() []detectors.Alert {
	tel.mu.Lock()
	defer tel.mu.Unlock()
	return append([]detectors.Alert(nil), tel.alerts...)
}

// handledBy returns the handled alerts of one detector.
func (tel *telemetry) handledBy(detector string) []detectors.Alert {
	var out []detectors.Alert
	for _, a := range tel.handled() {
		if a.Detector == detector {
			out = append(out, a)
		}
	}
	return out
}

// roundTripperFunc is a fake base transport.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// natLab is a server behind an in-memory natsim NAT, inside a synctest
// bubble: fake time runs through NAT timeouts at once. Everything it starts
// ends with the test, in the bubble, as synctest requires: its cleanups
// close the client's idle connections, then the server, then the NAT.
type natLab struct {
	t      *testing.T
	net    *natsim.Network
	base   *http.Transport // dials through the NAT
	client *http.Client    // conntrace over base; nil from startNATLab
	url    string          // the server's: the NAT takes any address
}

// startNATLab serves srv behind a NAT that forgets flows idle longer than
// natIdle, and makes the base transport that reaches it, speaking
// srv.Protocols (nil: HTTP/1.1). A server with a TLSConfig (newTLSLab's,
// holding the lab's certificate) serves TLS, and base trusts it. It makes
// no client: a test may set base up before it wraps it.
func startNATLab(t *testing.T, natIdle time.Duration, srv *http.Server) *natLab {
	lab := &natLab{t: t, net: natsim.NewNetwork(natIdle), url: "http://backend.test/"}
	t.Cleanup(func() { lab.net.Close() })
	lab.base = &http.Transport{DialContext: lab.net.DialContext, Protocols: srv.Protocols}
	ln := lab.net.Listener()
	if srv.TLSConfig != nil {
		ln = tls.NewListener(ln, srv.TLSConfig)
		lab.base.TLSClientConfig = &tls.Config{RootCAs: labCert().roots}
		lab.base.ForceAttemptHTTP2 = true // a custom dialer and TLS config turn it off
		lab.url = "https://backend.test/"
	}
	testkit.Serve(t, srv, ln)
	t.Cleanup(lab.base.CloseIdleConnections)
	return lab
}

// newTLSLab is a natLab whose server says hello over TLS, offering HTTP/2
// and HTTP/1.1, as httptest's StartTLS does. It makes no client.
func newTLSLab(t *testing.T, natIdle time.Duration) *natLab {
	cfg := &tls.Config{Certificates: []tls.Certificate{labCert().cert}, NextProtos: []string{"h2", "http/1.1"}}
	return startNATLab(t, natIdle, &http.Server{Handler: http.HandlerFunc(hello), TLSConfig: cfg})
}

// labCert is the certificate of the TLS lab's backend.test, made once.
var labCert = sync.OnceValue(newLabCert)

// labCertificate is a certificate and the pool that trusts it.
type labCertificate struct {
	cert  tls.Certificate
	roots *x509.CertPool
}

// newLabCert makes a self-signed certificate for backend.test, valid from
// 1970 to 2100: a synctest bubble's clock starts in 2000.
func newLabCert() (lc labCertificate) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "backend.test"},
		DNSNames:              []string{"backend.test"},
		NotBefore:             time.Unix(0, 0),
		NotAfter:              time.Date(2100, time.January, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	lc.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	lc.roots = x509.NewCertPool()
	lc.roots.AddCert(leaf)
	return lc
}

// newNATLab is a lab whose HTTP/1.1 server says hello, and whose client is
// conntrace with opts.
func newNATLab(t *testing.T, natIdle time.Duration, opts ...Option) *natLab {
	return newNATLabServer(t, natIdle, &http.Server{Handler: http.HandlerFunc(hello)}, opts...)
}

// newNATLabServer is newNATLab with srv for the server.
func newNATLabServer(t *testing.T, natIdle time.Duration, srv *http.Server, opts ...Option) *natLab {
	lab := startNATLab(t, natIdle, srv)
	lab.client = &http.Client{Transport: NewTransport(lab.base, opts...)}
	return lab
}

// get sends a GET with a deadline and reads the body; it returns the error.
func (lab *natLab) get(deadline time.Duration) error {
	ctx, cancel := context.WithTimeout(lab.t.Context(), deadline)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, lab.url, nil)
	res, err := lab.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, err = io.ReadAll(res.Body)
	return err
}

// newConns counts the connections handed out new (got_conn events, not
// reused) over the ended spans: what counts dials behind natLab, whose
// dialer bypasses net.Dialer, so that ConnectDone, and with it the dials
// metric, never fires.
func newConns(tel *telemetry) int {
	n := 0
	for _, s := range tel.Spans.Ended() {
		for _, e := range s.Events() {
			if e.Name != vocab.EventGotConn {
				continue
			}
			set := attribute.NewSet(e.Attributes...)
			if v, _ := set.Value(vocab.AttrReused); !v.AsBool() {
				n++
			}
		}
	}
	return n
}
