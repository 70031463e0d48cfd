package conntrace_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/conntrace/conntrace"
)

// Wrap the transport a client already has. With no providers given,
// conntrace reports to the global OpenTelemetry providers.
func ExampleNewTransport() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer srv.Close()

	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	client.Transport = conntrace.NewTransport(client.Transport,
		conntrace.WithNATIdleTimeout(350*time.Second)) // AWS NAT Gateway

	res, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	client.CloseIdleConnections()
	fmt.Println(string(body))
	// Output: hello
}
