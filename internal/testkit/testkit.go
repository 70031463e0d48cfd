// Package testkit holds the test helpers that more than one package of
// conntrace uses: telemetry recorded in memory and read back, polling for
// what a test cannot wait on otherwise, serving HTTP on any listener (the
// in-memory ones of a testing/synctest bubble too), and a few small pieces
// beside.
//
// It is a normal package so that tests in several packages can import it,
// and it is imported by _test.go files only: nothing the library builds
// depends on it. It imports the standard library and the OpenTelemetry SDK
// alone, never conntrace's own packages, so that any package's tests,
// conntrace's included, can use it without an import cycle.
package testkit
