package integrations

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestGCSSignedGet: a GET of a Google Cloud Storage V4 signed URL, built
// as storage.googleapis.com issues them (GOOG4-RSA-SHA256, the service
// account in X-Goog-Credential), goes through the same path: url.full
// holds REDACTED for the signature and the credential, and no span holds
// either.
func TestGCSSignedGet(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "object body")
	}))
	t.Cleanup(srv.Close)

	const (
		account   = "uploader@conntrace-test.iam.gserviceaccount.com"
		signature = "5a1e4b0c9f7d2e3a8b6c4d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f"
	)
	raw := srv.URL + "/reports/2026/q4.pdf" +
		"?X-Goog-Algorithm=GOOG4-RSA-SHA256" +
		"&X-Goog-Credential=uploader%40conntrace-test.iam.gserviceaccount.com%2F20261207%2Fauto%2Fstorage%2Fgoog4_request" +
		"&X-Goog-Date=20261207T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host" +
		"&X-Goog-Signature=" + signature

	spans := get(t, http.MethodGet, raw, nil)
	full := urlFull(t, spans)
	for _, want := range []string{"X-Goog-Signature=REDACTED", "X-Goog-Credential=REDACTED", "X-Goog-Algorithm=GOOG4-RSA-SHA256", "X-Goog-Expires=900"} {
		if !strings.Contains(full, want) {
			t.Errorf("url.full %q; want it to hold %q", full, want)
		}
	}
	noSecret(t, spans, signature, account)
}
