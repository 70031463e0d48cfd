// Package bench measures what conntrace costs per request, side by side with
// the bare transport and with otelhttp and otelhttptrace. It is a module of
// its own so that otelhttp, otelhttptrace and the OpenTelemetry SDK never
// enter the library's go.mod.
//
// Every round-trip figure is one GET over a reused loopback connection to a
// server in another process (this test binary, run again with
// CONNTRACE_BENCH_SERVE=1), its body drained and closed, client cost only.
// The variants are in variants_test.go.
//
// Reproduce, from the repository root:
//
//	cd bench && go test -run=NONE -bench=. -benchmem   # ns, allocs, bytes per GET
//	bash bench/callgrind.sh                            # instructions per GET, the stable figure
//	cd bench && go test -run=Churn -v                  # heap before and after 100k connections to 10k hosts
//	cd bench && go test -run=ServersFlat -v            # allocations per GET over 10, 1,000 and 10,000 servers
//	cd bench && go test -run=NONE -bench=Servers -benchtime=20000x
//
// The many-server variants (servers_test.go) spread GETs round-robin over
// N host names, each with its own pooled connection to the one server
// process; callgrind.sh measures them as VARIANT@N, in a process that
// never collects garbage (over 10,000 servers the heap holds every pooled
// connection's buffers, and one collection more or less in a run, which the
// pacer's timing decides, moved a figure by 10k instructions per GET), and
// counts each run's GETs alone: callgrind zeroes its counts at countStart
// and dumps them at countEnd (count_test.go), so the warm-up's dials, whose
// cost varies from run to run, are not in the figure.
//
// BenchmarkRoundTrip runs the variants one after the other;
// BenchmarkInterleaved runs them in rotating order, in chunks, within one
// run, so that their ratios hold on a noisy machine; BenchmarkParallel
// compares throughput with -cpu=1,2. Wall-clock figures on a shared machine
// move by tens of percent from run to run (bare: 84 µs per GET run alone,
// 63 µs interleaved, on a 2-core machine in use); callgrind's instruction
// counts repeat within 1 to 3% (the script prints the spread of its runs),
// which is why the overhead targets are stated in instructions.
//
// The floor variants (floor_test.go: floor-metrics-only, floor-unsampled,
// floor-unsampled-remote-parent) are yardsticks, not products: the least a
// RoundTripper must do to give conntrace's telemetry, without its
// diagnosis. callgrind.sh measures them when named
// (bash bench/callgrind.sh floor-metrics-only ...), not by default.
//
// FLOOR.md writes down where the OpenTelemetry SDK itself is the floor, with
// the figures, what each cache conntrace keeps saves, and, against the floor
// variants, what conntrace's diagnosis costs.
package bench
