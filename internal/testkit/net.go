package testkit

import (
	"io"
	"net/http"
	"testing"
)

// Get sends a GET through client, reads the body to EOF and closes it, and
// returns the body; any error fails the test.
func Get(t testing.TB, client *http.Client, url string) string {
	t.Helper()
	res, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	if err := res.Body.Close(); err != nil {
		t.Fatalf("close body: %v", err)
	}
	return string(b)
}
