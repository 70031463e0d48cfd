package conntrace

import (
	"net/url"
	"strings"
	"testing"
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
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := redactedURL(u); got != tt.want {
			t.Errorf("redactedURL(%q): got %q; want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzRedactedURL checks redactedURL's promise on any URL url.Parse
// accepts: no value of a sensitive query parameter survives, under any
// separator or encoding of its key, no password or user name survives, and
// a URL with nothing to redact is left as it was.
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
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		got := redactedURL(u)

		// Every parameter of the query sent whose key a server decodes to a
		// sensitive one has the value REDACTED, and none went missing.
		if q := queryOf(got); countSensitive(q, true) != countSensitive(u.RawQuery, false) {
			t.Errorf("redactedURL(%q) = %q: sensitive parameters %d before, %d REDACTED after",
				raw, got, countSensitive(u.RawQuery, false), countSensitive(q, true))
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

		if u.User == nil && !strings.Contains(u.Opaque, "@") && countSensitive(u.RawQuery, false) == 0 && got != u.String() {
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
// decoded as a server would (leniently), is one of semconv's sensitive
// ones and that have a value; redacted counts only those whose value is
// REDACTED.
func countSensitive(q string, redacted bool) int {
	n := 0
	for _, p := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }) {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		switch lenientUnescape(k) {
		case "AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature":
			if !redacted || v == "REDACTED" {
				n++
			}
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
