package bench

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// The test binary plays three parts, chosen by the environment:
//
//	CONNTRACE_BENCH_SERVE=1       the HTTP server, in its own process (server_test.go)
//	CONNTRACE_BENCH_COUNT=VARIANT a fixed number of GETs for callgrind.sh (count_test.go)
//	CONNTRACE_BENCH_SILENT=1      the silent streams' server, in its own process (streams_test.go)
//	neither                       the tests and benchmarks
const (
	envServe = "CONNTRACE_BENCH_SERVE"
	envCount = "CONNTRACE_BENCH_COUNT"
)

// TestMain dispatches on the environment, and fails the tests if any leave a
// goroutine behind (a connection not closed, a hang timer not stopped).
func TestMain(m *testing.M) {
	switch {
	case os.Getenv(envServe) != "":
		os.Exit(serve())
	case os.Getenv(envCount) != "":
		os.Exit(countMain(os.Getenv(envCount)))
	case os.Getenv(envSilentServe) != "":
		os.Exit(silentServeMain())
	}
	code := m.Run()
	// Before the server stops: its end would close, and so hide, a client
	// connection left open.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	stopServer()
	os.Exit(code)
}
