package conntrace

import (
	"net/url"
	"strings"
)

// redactedURL is the url.full value: credentials, and the values of the
// query parameters semconv names as sensitive, are replaced with REDACTED.
// The rest is kept byte for byte.
//
// A server decodes a parameter's key before it looks at it, and many split
// the query at ; as well as &; so a key is compared once decoded
// (Signatur%65 is Signature) and every ; or & ends a parameter. Matching
// is case-sensitive, as semconv asks. An opaque URL (http:alice:pw@host,
// a typo for http://) keeps its credentials in Opaque, up to the last @.
func redactedURL(u *url.URL) string {
	opaqueUser := strings.LastIndexByte(u.Opaque, '@')
	if u.User == nil && opaqueUser < 0 && !hasSensitiveQuery(u.RawQuery) {
		return u.String()
	}
	c := *u
	if c.User != nil {
		c.User = url.UserPassword("REDACTED", "REDACTED")
	}
	if opaqueUser >= 0 {
		c.Opaque = "REDACTED:REDACTED" + c.Opaque[opaqueUser:]
	}
	c.RawQuery = redactQuery(c.RawQuery)
	return c.String()
}

// sensitiveQuery lists the keys semconv's url.query asks to redact;
// sensitiveParams the same, each with the = that starts its value.
var (
	sensitiveQuery  = []string{"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"}
	sensitiveParams = func() []string {
		p := make([]string, len(sensitiveQuery))
		for i, k := range sensitiveQuery {
			p[i] = k + "="
		}
		return p
	}()
)

// hasSensitiveQuery is the cheap test that spares most URLs the split: no
// sensitive key followed by =, and no % that could encode one. It is on
// every request's path: it builds no string.
func hasSensitiveQuery(q string) bool {
	if q == "" {
		return false
	}
	if strings.IndexByte(q, '%') >= 0 {
		return true
	}
	for _, p := range sensitiveParams {
		if strings.Contains(q, p) {
			return true
		}
	}
	return false
}

// redactQuery returns q with the value of every sensitive parameter
// replaced, its separators and every other byte kept.
func redactQuery(q string) string {
	var b strings.Builder
	for rest := q; ; {
		end := strings.IndexAny(rest, "&;")
		param := rest
		if end >= 0 {
			param = rest[:end]
		}
		if k, _, ok := strings.Cut(param, "="); ok && isSensitive(k) {
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

// isSensitive reports whether a raw query key decodes to a sensitive one.
// A key that does not decode keeps a literal %, which no sensitive key has.
func isSensitive(rawKey string) bool {
	key := rawKey
	if strings.ContainsAny(rawKey, "%+") {
		var err error
		if key, err = url.QueryUnescape(rawKey); err != nil {
			return false
		}
	}
	for _, k := range sensitiveQuery {
		if key == k {
			return true
		}
	}
	return false
}
