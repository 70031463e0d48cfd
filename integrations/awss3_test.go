package integrations

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace"
)

// Temporary credentials, as an assumed role or an instance profile gives:
// an access key id, a secret key and a session token. None of them, nor
// the signature made with them, may reach telemetry.
const (
	accessKeyID  = "ASIACONNTRACETEST7QX"
	secretKey    = "wJalrXUtnFEMIconntraceK7MDENGbPxRfiCYSECRET"
	sessionToken = "IQoJb3JpZ2luX2VjEConntraceSessionToken//////////wEaCXVzLWVhc3QtMSJH+abc="
)

// TestS3PresignedGet: a GET of a URL presigned by the AWS SDK's S3
// PresignClient (Signature Version 4, with a session token) is sent
// through conntrace unchanged; its span's url.full holds REDACTED for the
// signature, the credential and the token, and no attribute, event or
// status holds any of them.
func TestS3PresignedGet(t *testing.T) {
	var got *url.URL // the URL the server was sent
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.URL
		io.WriteString(w, "object body")
	}))
	t.Cleanup(srv.Close)

	client := s3.New(s3.Options{
		Region:       "us-east-1",
		Credentials:  credentials.NewStaticCredentialsProvider(accessKeyID, secretKey, sessionToken),
		BaseEndpoint: aws.String(srv.URL),
		UsePathStyle: true, // http://127.0.0.1:port/bucket/key: the request stays on loopback
	})
	presigned, err := s3.NewPresignClient(client).PresignGetObject(context.Background(), &s3.GetObjectInput{
		Bucket: aws.String("reports"),
		Key:    aws.String("2026/q4.pdf"),
	}, s3.WithPresignExpires(15*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(presigned.URL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	signature := q.Get("X-Amz-Signature")
	for k, v := range map[string]string{"X-Amz-Signature": signature, "X-Amz-Security-Token": sessionToken, "X-Amz-Algorithm": "AWS4-HMAC-SHA256"} {
		if v == "" || q.Get(k) != v {
			t.Fatalf("the SDK's presigned URL %q: %s is %q; the test expects SigV4 with a session token", presigned.URL, k, q.Get(k))
		}
	}
	if !strings.HasPrefix(q.Get("X-Amz-Credential"), accessKeyID+"/") {
		t.Fatalf("the SDK's presigned URL %q: X-Amz-Credential %q", presigned.URL, q.Get("X-Amz-Credential"))
	}

	spans := get(t, presigned.Method, presigned.URL, presigned.SignedHeader)
	if got == nil || got.RawQuery != u.RawQuery {
		t.Errorf("the server was sent %v; want the presigned URL unchanged, %q", got, presigned.URL)
	}
	full := urlFull(t, spans)
	for _, want := range []string{
		"X-Amz-Signature=REDACTED", "X-Amz-Credential=REDACTED", "X-Amz-Security-Token=REDACTED",
		"X-Amz-Algorithm=AWS4-HMAC-SHA256", "/reports/2026/q4.pdf?",
	} {
		if !strings.Contains(full, want) {
			t.Errorf("url.full %q; want it to hold %q", full, want)
		}
	}
	noSecret(t, spans, signature, accessKeyID, sessionToken, secretKey)
}

// get sends method to rawURL through a conntrace Transport recording its
// spans, reads the body, and returns the ended spans.
func get(t *testing.T, method, rawURL string, header http.Header) []sdktrace.ReadOnlySpan {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	client := &http.Client{Transport: conntrace.NewTransport(base,
		conntrace.WithTracerProvider(tp),
		conntrace.WithMeterProvider(noop.NewMeterProvider()),
		conntrace.WithLogger(slog.New(slog.DiscardHandler)),
		conntrace.WithoutAudit(),
	)}
	req, err := http.NewRequest(method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k != "Host" {
			req.Header[k] = v
		}
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d", res.StatusCode)
	}
	spans := rec.Ended()
	if len(spans) == 0 {
		t.Fatal("no span ended")
	}
	return spans
}

// urlFull returns the url.full of the one span that has it.
func urlFull(t *testing.T, spans []sdktrace.ReadOnlySpan) string {
	t.Helper()
	for _, s := range spans {
		for _, kv := range s.Attributes() {
			if kv.Key == semconv.URLFullKey {
				return kv.Value.AsString()
			}
		}
	}
	t.Fatal("no span has url.full")
	return ""
}

// noSecret fails t if any span's name, attribute, event, link or status
// holds one of secrets, as it is or query-escaped.
func noSecret(t *testing.T, spans []sdktrace.ReadOnlySpan, secrets ...string) {
	t.Helper()
	for _, s := range spans {
		texts := []string{s.Name(), s.Status().Description}
		add := func(kvs []attribute.KeyValue) {
			for _, kv := range kvs {
				texts = append(texts, kv.Value.Emit())
			}
		}
		add(s.Attributes())
		for _, e := range s.Events() {
			texts = append(texts, e.Name)
			add(e.Attributes)
		}
		for _, l := range s.Links() {
			add(l.Attributes)
		}
		for _, text := range texts {
			for _, secret := range secrets {
				if strings.Contains(text, secret) || strings.Contains(text, url.QueryEscape(secret)) {
					t.Errorf("span %q holds a secret (%.12s...): %q", s.Name(), secret, text)
				}
			}
		}
	}
}
