// Package e2e holds conntrace's end-to-end test against real servers: the
// example, with its traces exported over OTLP to a real Jaeger v2 and its
// metrics scraped by a real Prometheus that loads the shipped alert rules.
// The test asks Jaeger's HTTP API for the traces and Prometheus's for the
// alerts and counters, and checks them against what the example did. It
// then follows the on-call path: the firing alert, the exemplar of its
// series, and the trace Jaeger returns for it, holding the alert; once with
// every request sampled, and once at 1 % (TestAlertToTrace), where the
// alert is in conntrace's alert span.
//
// scripts/e2e.sh starts the servers on loopback and runs the test; under a
// plain go test it skips with one line saying so.
//
//	scripts/e2e.sh
package e2e
