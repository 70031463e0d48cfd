// Command conntrace is the command line of the conntrace project.
//
//	conntrace probe [flags] URL
//
// probe finds the idle timeout of the network path to an HTTP server: how
// long a kept-alive connection may sit idle before a NAT, firewall, load
// balancer or the server stops carrying it, whether it then closes the
// connection or silently drops it, and which Go settings keep clear of it.
// The measuring is done by internal/probe, through conntrace's own
// Transport and stale_reuse detector; this command reads flags, shows
// progress and prints the report.
//
// Install with go install github.com/conntrace/conntrace/cmd/conntrace@latest,
// or run from a checkout with go run ./cmd/conntrace probe URL.
//
// Exit codes: 0 a result (including "no timeout found"), 1 nothing could be
// measured, 2 bad input (flags, URL, unreachable host), 130 interrupted
// (Ctrl-C; what was learned so far is printed first).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first Ctrl-C the probe stops and prints what it learned; a
	// second one should kill at once, as usual.
	context.AfterFunc(ctx, stop)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
