package testkit

import (
	"errors"
	"io"
	"net"
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

// Serve runs srv.Serve(ln) on a goroutine of its own until the test ends,
// then closes srv and fails the test if Serve returned anything but
// http.ErrServerClosed. ln may be any listener: an in-memory one inside a
// testing/synctest bubble, where Serve must then be called, and its cleanup
// runs, in the bubble.
func Serve(t testing.TB, srv *http.Server, ln net.Listener) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
}

// AcceptAndClose listens on a loopback TCP port until the test ends,
// closing whatever connects, and returns its address: a real socket to
// dial and read the options of.
func AcceptAndClose(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}
