package conntrace

import (
	"errors"
	"net/url"
	"strings"
)

// defaultRedactedQueryKeys lists the query parameters whose values url.full
// holds as REDACTED; [WithRedactedQueryKeys] adds to them, and its doc
// lists them for users: keep the two in step. The first
// seven are the ones semconv's url.full and url.query name (the AWS
// Signature Version 2 and 4, Azure SAS and Google Cloud Storage
// signatures, credentials and session tokens); the others are credentials
// semconv does not name but that travel in query strings: the credential of
// a Google Cloud Storage V4 signed URL (a service account or HMAC key id),
// the OAuth 2.0 bearer token of RFC 6750 section 2.3, and the usual API key
// spellings.
//
// Keys are compared case-sensitively, as semconv asks, after the key is
// decoded: a server that reads X-Amz-Signature does not read
// x-amz-signature, and a case-insensitive match would redact parameters
// that are no credential. The cost is that a credential spelt otherwise
// (apiKey, key, private_token) is kept unless a user names it.
var defaultRedactedQueryKeys = []string{
	// semconv url.full and url.query
	"AWSAccessKeyId",
	"Signature",
	"sig",
	"X-Goog-Signature",
	"X-Amz-Signature",
	"X-Amz-Credential",
	"X-Amz-Security-Token",
	// beyond semconv
	"X-Goog-Credential",
	"access_token",
	"token",
	"api_key",
	"apikey",
}

// A redactor redacts URLs for telemetry: their credentials, and the values
// of the query parameters it names. It is built once, at NewTransport, and
// is read-only after: safe for concurrent use.
type redactor struct {
	keys []string
	// first marks the first bytes of keys: most parameters of a URL with
	// nothing to redact are told apart by their first byte alone.
	first [256]bool
}

func newRedactor(keys []string) *redactor {
	r := &redactor{keys: keys}
	for _, k := range keys {
		r.first[k[0]] = true // keys are not empty (WithRedactedQueryKeys)
	}
	return r
}

// defaultRedactor redacts defaultRedactedQueryKeys: every Transport's,
// unless WithRedactedQueryKeys adds keys.
var defaultRedactor = newRedactor(defaultRedactedQueryKeys)

// url returns the url.full value of u: credentials, and the values of the
// query parameters r names, are replaced with REDACTED. The rest is kept
// byte for byte.
//
// A server decodes a parameter's key before it looks at it, and many split
// the query at ; as well as &; so a key is compared once decoded
// (Signatur%65 is Signature) and every ; or & ends a parameter. An opaque
// URL (http:alice:pw@host, a typo for http://) keeps its credentials in
// Opaque, up to the last @.
func (r *redactor) url(u *url.URL) string {
	opaqueUser := strings.LastIndexByte(u.Opaque, '@')
	if u.User == nil && opaqueUser < 0 && !r.hasSensitive(u.RawQuery) {
		return u.String()
	}
	c := *u
	if c.User != nil {
		c.User = url.UserPassword("REDACTED", "REDACTED")
	}
	if opaqueUser >= 0 {
		c.Opaque = "REDACTED:REDACTED" + c.Opaque[opaqueUser:]
	}
	c.RawQuery = r.query(c.RawQuery)
	return c.String()
}

// hasSensitive reports whether q has a parameter to redact. It is the fast
// path of every request: one pass over q's bytes, no allocation, and a key
// compared with r's keys only if one of them starts with its first byte.
func (r *redactor) hasSensitive(q string) bool {
	start, eq, escaped := 0, -1, false
	for i := 0; i < len(q); i++ {
		switch q[i] {
		case '&', ';':
			if eq >= 0 && r.sensitive(q[start:eq], escaped) {
				return true
			}
			start, eq, escaped = i+1, -1, false
		case '=':
			if eq < 0 {
				eq = i
			}
		case '%', '+':
			if eq < 0 {
				escaped = true
			}
		}
	}
	return eq >= 0 && r.sensitive(q[start:eq], escaped)
}

// query returns q with the value of every sensitive parameter replaced,
// its separators and every other byte kept.
func (r *redactor) query(q string) string {
	var b strings.Builder
	for rest := q; ; {
		end := strings.IndexAny(rest, "&;")
		param := rest
		if end >= 0 {
			param = rest[:end]
		}
		if k, _, ok := strings.Cut(param, "="); ok && r.sensitive(k, strings.ContainsAny(k, "%+")) {
			param = k + "=REDACTED"
		}
		b.WriteString(param)
		if end < 0 {
			return b.String()
		}
		b.WriteByte(rest[end])
		rest = rest[end+1:]
	}
}

// sensitive reports whether a raw query key, escaped if it holds % or +,
// decodes to one of r's keys. A key that does not decode keeps a literal
// %, and is compared as it is.
func (r *redactor) sensitive(rawKey string, escaped bool) bool {
	key := rawKey
	if escaped {
		if k, err := url.QueryUnescape(rawKey); err == nil {
			key = k
		}
	}
	if key == "" || !r.first[key[0]] {
		return false
	}
	for _, k := range r.keys {
		if key == k {
			return true
		}
	}
	return false
}

// errorText is err's text for telemetry (a span's status, conntrace.error):
// every URL in it that has something to redact is redacted. net/http's
// *url.Error puts the URL in its text, and a base that is a client, or
// wraps one (an OAuth token fetch, a retrying client), returns one; a
// wrapped error may print the request's URL too.
func (r *redactor) errorText(err error, reqURL *url.URL) string {
	s := err.Error()
	replace := func(raw string, u *url.URL) {
		if raw == "" || !strings.Contains(s, raw) {
			return
		}
		if red := r.url(u); red != raw {
			s = strings.ReplaceAll(s, raw, red)
		}
	}
	for e := err; e != nil; {
		var ue *url.Error
		if !errors.As(e, &ue) {
			break
		}
		if u, perr := url.Parse(ue.URL); perr == nil {
			replace(ue.URL, u)
		}
		e = ue.Err
	}
	if reqURL != nil {
		replace(reqURL.String(), reqURL)
	}
	return s
}

// errorText is err's text for the request's telemetry, its URLs redacted.
func (req *request) errorText(err error) string { return req.t.redact.errorText(err, req.url) }
