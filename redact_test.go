package conntrace

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/conntrace/conntrace/internal/testkit"
)

func TestRedactedURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://example.test/a?z=1&b=2", "https://example.test/a?z=1&b=2"},
		{"https://user:pw@example.test/", "https://REDACTED:REDACTED@example.test/"},
		{"https://token@example.test/", "https://REDACTED:REDACTED@example.test/"},
		{"https://example.test/?z=1&sig=abc&a=3", "https://example.test/?z=1&sig=REDACTED&a=3"},
		{"https://example.test/?z=1&mysig=2&a=3", "https://example.test/?z=1&mysig=2&a=3"},
		{"https://example.test/?Signature=x&AWSAccessKeyId=y&keep=1", "https://example.test/?Signature=REDACTED&AWSAccessKeyId=REDACTED&keep=1"},
		{"https://example.test/?X-Goog-Signature=x&a=1;b=2", "https://example.test/?X-Goog-Signature=REDACTED&a=1;b=2"},
		// Servers decode the key: Signatur%65 is Signature.
		{"https://example.test/?Signatur%65=secret&a=%41", "https://example.test/?Signatur%65=REDACTED&a=%41"},
		{"https://example.test/?%73%69%67=secret", "https://example.test/?%73%69%67=REDACTED"},
		// ; separates parameters too, for many servers.
		{"https://example.test/?a=1;sig=secret;b=2", "https://example.test/?a=1;sig=REDACTED;b=2"},
		{"https://example.test/?sig=a&sig=b;sig=c", "https://example.test/?sig=REDACTED&sig=REDACTED;sig=REDACTED"},
		// Matching is case-sensitive (semconv), and a key that does not
		// decode is not a sensitive one.
		{"https://example.test/?SIG=x&sig%zz=y", "https://example.test/?SIG=x&sig%zz=y"},
		{"https://example.test/?sig", "https://example.test/?sig"},
		{"https://example.test/?sig=", "https://example.test/?sig=REDACTED"},
		{"https://example.test/?sig=a=b", "https://example.test/?sig=REDACTED"},
		// An opaque URL (no //) keeps its credentials in Opaque.
		{"http:alice:pw@example.test/p", "http:REDACTED:REDACTED@example.test/p"},
		{"http:alice:p@ss@example.test/p?sig=x", "http:REDACTED:REDACTED@example.test/p?sig=REDACTED"},
		{"http:example.test/p", "http:example.test/p"},
		// AWS Signature Version 4 (S3 presigned URLs), with a session token.
		{"https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-Security-Token=tok&X-Amz-SignedHeaders=host&X-Amz-Signature=abc",
			"https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-Security-Token=REDACTED&X-Amz-SignedHeaders=host&X-Amz-Signature=REDACTED"},
		// Google Cloud Storage V4 signed URLs.
		{"https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam.gserviceaccount.com%2F20260101%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Signature=abc",
			"https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=REDACTED&X-Goog-Signature=REDACTED"},
		// Bearer tokens and API keys, beyond semconv; matched exactly.
		{"https://example.test/?access_token=a&token=b&api_key=c&apikey=d&tokens=e&key=f",
			"https://example.test/?access_token=REDACTED&token=REDACTED&api_key=REDACTED&apikey=REDACTED&tokens=e&key=f"},
		{"https://example.test/?x-amz-signature=a&X-Amz-Signature", "https://example.test/?x-amz-signature=a&X-Amz-Signature"},
		// A value may hold the key's name: only keys are matched.
		{"https://example.test/?q=sig%3Dx&note=token=", "https://example.test/?q=sig%3Dx&note=token="},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := defaultRedactor.url(u); got != tt.want {
			t.Errorf("redactedURL(%q): got %q; want %q", tt.in, got, tt.want)
		}
	}
}

// TestRedactedQueryKeysAdd: keys WithRedactedQueryKeys names are redacted,
// decoded as the default ones are, and the default ones still are.
func TestRedactedQueryKeysAdd(t *testing.T) {
	r := newConfig([]Option{WithRedactedQueryKeys("session", "my key"), WithRedactedQueryKeys("apiKey")}).redactor()
	u, _ := url.Parse("https://example.test/?session=s&my+key=k&apiKey=a&sig=x&X-Amz-Signature=y&page=2")
	want := "https://example.test/?session=REDACTED&my+key=REDACTED&apiKey=REDACTED&sig=REDACTED&X-Amz-Signature=REDACTED&page=2"
	if got := r.url(u); got != want {
		t.Errorf("got %q; want %q", got, want)
	}
	if got := defaultRedactor.url(u); strings.Contains(got, "session=REDACTED") {
		t.Errorf("the default redactor took another Transport's key: %q", got)
	}
}

// TestRedactedQueryKeysDoc: WithRedactedQueryKeys's doc, where users read
// the default list, names every default key.
func TestRedactedQueryKeysDoc(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "config.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, d := range f.Decls {
		if fn, ok := d.(*ast.FuncDecl); ok && fn.Name.Name == "WithRedactedQueryKeys" {
			doc = fn.Doc.Text()
		}
	}
	words := strings.FieldsFunc(doc, func(r rune) bool { return strings.ContainsRune(" \n(),.", r) })
	for _, k := range defaultRedactedQueryKeys {
		if !slices.Contains(words, k) {
			t.Errorf("WithRedactedQueryKeys's doc does not name the default key %q", k)
		}
	}
}

// TestRedactedQueryKeysSpan: url.full on a Transport's span is redacted
// with its own list: the default keys and those it was given.
func TestRedactedQueryKeysSpan(t *testing.T) {
	srv := newServer(t, hello)
	tel := newTelemetry(t)
	client, _ := newClient(t, tel.options(WithRedactedQueryKeys("session"))...)
	testkit.Get(t, client, srv.URL+"/o?session=s3cr3t&X-Amz-Credential=AKIDEXAMPLE&page=2")
	spans := tel.Spans.Ended()
	if len(spans) != 1 {
		t.Fatalf("spans: %d; want 1", len(spans))
	}
	attrs := attribute.NewSet(spans[0].Attributes()...)
	got, _ := attrs.Value(semconv.URLFullKey)
	if want := srv.URL + "/o?session=REDACTED&X-Amz-Credential=REDACTED&page=2"; got.AsString() != want {
		t.Errorf("url.full %q; want %q", got.AsString(), want)
	}
}

// TestErrorTextRedacted: an error that carries the URL (net/http's
// *url.Error, from a base that is a client, or one that prints the URL)
// reaches the span's status and conntrace.error redacted.
func TestErrorTextRedacted(t *testing.T) {
	const secret = "s3cr3tSIG"
	raw := "https://b.example.test/o?X-Amz-Signature=" + secret + "&page=2"
	tests := []struct {
		name string
		err  func(u string) error
	}{
		{"url.Error", func(u string) error { return &url.Error{Op: "Get", URL: u, Err: io.ErrUnexpectedEOF} }},
		{"wrapped url.Error", func(u string) error {
			return fmt.Errorf("token fetch: %w", &url.Error{Op: "Post", URL: u, Err: io.ErrUnexpectedEOF})
		}},
		{"printed", func(u string) error { return fmt.Errorf("giving up on %s after 3 tries", u) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tel := newTelemetry(t)
			base := roundTripperFunc(func(r *http.Request) (*http.Response, error) { return nil, tt.err(r.URL.String()) })
			client := &http.Client{Transport: NewTransport(base, tel.options()...)}
			res, err := client.Get(raw)
			if err == nil {
				res.Body.Close()
				t.Fatal("the base's error was lost")
			}
			spans := tel.Spans.Ended()
			if len(spans) != 1 {
				t.Fatalf("spans: %d; want 1", len(spans))
			}
			desc := spans[0].Status().Description
			if strings.Contains(desc, secret) || !strings.Contains(desc, "X-Amz-Signature=REDACTED") {
				t.Errorf("status %q; want the URL in it redacted", desc)
			}
		})
	}

	// A hook's error (conntrace.error) goes through the same redaction.
	r := defaultRedactor
	u, _ := url.Parse(raw)
	err := fmt.Errorf("dial: %w", &url.Error{Op: "Get", URL: raw, Err: io.EOF})
	if got := r.errorText(err, u); strings.Contains(got, secret) {
		t.Errorf("errorText: %q", got)
	}
	plain := errors.New("connection reset by peer")
	if got := r.errorText(plain, u); got != plain.Error() {
		t.Errorf("errorText of an error without a URL: %q; want it unchanged", got)
	}
}

// FuzzRedactedURL checks the redactor's promise on any URL url.Parse
// accepts: no value of a sensitive query parameter survives, under any
// separator or encoding of its key, whether the key is a default one or
// one a user added (with a space, so that + must decode); no password or
// user name survives; and a URL with nothing to redact is left as it was.
//
//	go test -run=NONE -fuzz=FuzzRedactedURL -fuzztime=60s
func FuzzRedactedURL(f *testing.F) {
	for _, s := range []string{
		"https://example.test/a?z=1&b=2",
		"https://user:pw@example.test/?sig=abc",
		"https://example.test/?Signatur%65=secret",
		"https://example.test/?a=1;sig=secret",
		"http:alice:pw@example.test/p",
		"http://a@b@c/?AWSAccessKeyId=k&X-Goog-Signature=g#sig=frag",
		"https://b.test/k?X-Amz-Credential=AKIA%2Fx&X-Amz-Security-Token=t;X-Amz-Signature=s",
		"https://example.test/?my+key=v&my%20key=w&access_token=a",
	} {
		f.Add(s)
	}
	keys := append(slices.Clip(defaultRedactedQueryKeys), "my key")
	r := newRedactor(keys)
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		got := r.url(u)

		// Every parameter of the query sent whose key a server decodes to a
		// sensitive one has the value REDACTED, and none went missing.
		if q := queryOf(got); countSensitive(q, keys, true) != countSensitive(u.RawQuery, keys, false) {
			t.Errorf("redactedURL(%q) = %q: sensitive parameters %d before, %d REDACTED after",
				raw, got, countSensitive(u.RawQuery, keys, false), countSensitive(q, keys, true))
		}

		// Credentials: the URL form's and the opaque form's.
		var secrets []string
		if u.User != nil {
			secrets = append(secrets, u.User.Username())
			if pw, ok := u.User.Password(); ok {
				secrets = append(secrets, pw)
			}
		}
		if i := strings.LastIndexByte(u.Opaque, '@'); i >= 0 {
			secrets = append(secrets, u.Opaque[:i])
		}
		rest := *u // the URL without credentials: what may legitimately repeat a secret
		rest.User = nil
		if i := strings.LastIndexByte(rest.Opaque, '@'); i >= 0 {
			rest.Opaque = rest.Opaque[i+1:]
		}
		restStr := rest.String()
		gotRest := strings.ReplaceAll(got, "REDACTED:REDACTED@", "") // the redacted credentials, and their @
		for _, s := range secrets {
			if s == "" {
				continue
			}
			for _, form := range []string{s, url.PathEscape(s), url.QueryEscape(s)} {
				if strings.Contains(gotRest, form) && !strings.Contains(restStr, form) {
					t.Errorf("redactedURL(%q) = %q: the credential %q survives", raw, got, s)
				}
			}
		}

		if u.User == nil && !strings.Contains(u.Opaque, "@") && countSensitive(u.RawQuery, keys, false) == 0 && got != u.String() {
			t.Errorf("redactedURL(%q) = %q; want it unchanged, %q", raw, got, u.String())
		}
	})
}

// queryOf returns the raw query of s, a URL's String: from the first ?
// (none comes before the query: url.Parse takes the query off first, and a
// path is escaped) to the fragment's #, which a raw query cannot hold.
func queryOf(s string) string {
	_, q, _ := strings.Cut(s, "?")
	q, _, _ = strings.Cut(q, "#")
	return q
}

// countSensitive counts the parameters of q, split at & and ;, whose key,
// decoded as a server would (leniently), is one of keys and that have a
// value; redacted counts only those whose value is REDACTED.
func countSensitive(q string, keys []string, redacted bool) int {
	n := 0
	for _, p := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }) {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		if slices.Contains(keys, lenientUnescape(k)) && (!redacted || v == "REDACTED") {
			n++
		}
	}
	return n
}

// lenientUnescape decodes %XX and +, keeping a malformed % as it is, as
// forgiving servers do.
func lenientUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteByte(unhexByte(s[i+1])<<4 | unhexByte(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhexByte(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// BenchmarkRedactedURL measures url.full for a URL with nothing to redact,
// the common case, which must cost no more than the URL's String, and for
// a presigned one.
func BenchmarkRedactedURL(b *testing.B) {
	for _, bc := range []struct{ name, url string }{
		{"plain", "https://api.example.test/v1/items?page=2&limit=50"},
		{"presigned", "https://bucket.s3.us-east-1.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef"},
	} {
		u, err := url.Parse(bc.url)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = defaultRedactor.url(u)
			}
		})
	}
	u, _ := url.Parse("https://api.example.test/v1/items?page=2&limit=50")
	b.Run("String", func(b *testing.B) { // the floor: url.full unredacted
		b.ReportAllocs()
		for b.Loop() {
			_ = u.String()
		}
	})
}

// TestStackedRedactsOtelhttpURL: otelhttp redacts no query value, so under
// it a presigned URL's signature would sit in its span's url.full; conntrace
// replaces the value while the span is open, and leaves a plain URL alone.
func TestStackedRedactsOtelhttpURL(t *testing.T) {
	srv := newServer(t, hello)
	for _, tt := range []struct{ query, want string }{
		{"?X-Amz-Signature=s3cr3t&page=2", "?X-Amz-Signature=REDACTED&page=2"},
		{"?page=2", "?page=2"},
	} {
		tel := newTelemetry(t)
		base := &http.Transport{}
		client := &http.Client{Transport: otelhttp.NewTransport(
			NewTransport(base, tel.options()...),
			otelhttp.WithTracerProvider(tel.TP), otelhttp.WithMeterProvider(tel.MP))}
		testkit.Get(t, client, srv.URL+"/o"+tt.query)
		base.CloseIdleConnections()
		spans := tel.Spans.Ended()
		if len(spans) != 1 {
			t.Fatalf("spans: %d; want 1 (otelhttp's)", len(spans))
		}
		attrs := attribute.NewSet(spans[0].Attributes()...)
		got, _ := attrs.Value(semconv.URLFullKey)
		if want := srv.URL + "/o" + tt.want; got.AsString() != want {
			t.Errorf("otelhttp's url.full %q; want %q", got.AsString(), want)
		}
	}
}
