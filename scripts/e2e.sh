#!/usr/bin/env bash
# e2e.sh: conntrace end to end against a real Jaeger v2 and a real
# Prometheus, everything on 127.0.0.1.
#
#   scripts/e2e.sh
#
# It builds (or takes from its cache) Jaeger with scripts/jaeger.sh and
# Prometheus with scripts/prometheus.sh, starts both on free loopback ports
# (Jaeger: OTLP/HTTP in, in-memory storage; Prometheus: scraping the
# example every second, keeping exemplars, and loading the rules in
# exporters/prometheus), then runs the Go tests in lab/e2e, which run
# the example with OTLP traces and a Prometheus endpoint and check what the
# two servers saw: once with every request sampled, and once at 1 %, where
# the alert must still lead from Prometheus to its trace in Jaeger. Both
# servers are stopped on exit, failure or Ctrl-C, and their logs printed
# when something failed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'e2e: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# Globals, not locals: the EXIT trap runs after the script's body.
tmp=""
pids=""

running() {
	local pid
	for pid in $pids; do
		kill -0 "$pid" 2>/dev/null && return 0
	done
	return 1
}

cleanup() {
	local rc=$?
	set +e # clean up everything, whatever fails on the way
	# SIGTERM, and SIGKILL for whatever still runs 3 s later: both
	# normally stop at once, and Jaeger's storage is in memory anyway.
	local t0=$SECONDS
	if [ -n "$pids" ]; then
		kill $pids 2>/dev/null
		for _ in $(seq 30); do
			running || break
			sleep 0.1
		done
		kill -KILL $pids 2>/dev/null
		wait $pids 2>/dev/null
		say "stopped Jaeger and Prometheus in $((SECONDS - t0))s"
	fi
	if [ "$rc" != 0 ] && [ -n "$tmp" ]; then
		for log in "$tmp"/*.log; do
			[ -s "$log" ] || continue
			say "last lines of $(basename "$log"):"
			tail -n 30 "$log" >&2
		done
	fi
	[ -n "$tmp" ] && rm -rf "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a loopback TCP port that nothing accepts on and that this
# script has not handed out yet, below the kernel's ephemeral range: a port
# in that range may be the local end of some outgoing connection, which
# accepts nothing yet cannot be bound (seen on a machine busy with loopback
# tests). A server that loses the race for it fails to start, and the tests
# then fail saying which one.
taken=" "
ephemeral=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$ephemeral" -gt 12000 ] 2>/dev/null || ephemeral=32768
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((10000 + RANDOM % (ephemeral - 10000)))
		case "$taken" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			taken="$taken$p "
			echo "$p"
			return
		fi
	done
	die "found no free port on 127.0.0.1"
}

jaeger=$(bash scripts/jaeger.sh build)
prometheus=$(bash scripts/prometheus.sh bin)/prometheus
tmp=$(mktemp -d)

otlp=$(free_port)
query=$(free_port)
query_grpc=$(free_port)
health=$(free_port)
prom=$(free_port)
metrics=$(free_port)
metrics_1pct=$(free_port)

CONNTRACE_JAEGER_OTLP_HTTP=127.0.0.1:$otlp \
	CONNTRACE_JAEGER_QUERY_HTTP=127.0.0.1:$query \
	CONNTRACE_JAEGER_QUERY_GRPC=127.0.0.1:$query_grpc \
	CONNTRACE_JAEGER_HEALTH=127.0.0.1:$health \
	"$jaeger" --config "$PWD/scripts/jaeger.yaml" >"$tmp/jaeger.log" 2>&1 &
pids="$pids $!"
say "Jaeger $jaeger: OTLP/HTTP 127.0.0.1:$otlp, API 127.0.0.1:$query"

# The shipped config, with the example's port and the rules by absolute
# path.
sed -e "s|localhost:9464|127.0.0.1:$metrics|" \
	-e "s|\.\./exporters/prometheus/|$PWD/exporters/prometheus/|" \
	scripts/prometheus.yml >"$tmp/prometheus.yml"
# The example sampled at 1 % (TestAlertToTrace) runs at the same time, under
# a job of its own, so that its series and alerts stay apart. scrape_configs
# is the config's last list.
cat >>"$tmp/prometheus.yml" <<EOF
  - job_name: conntrace-example-1pct
    static_configs:
      - targets: ["127.0.0.1:$metrics_1pct"]
EOF
"$prometheus" --config.file="$tmp/prometheus.yml" --web.listen-address="127.0.0.1:$prom" \
	--storage.tsdb.path="$tmp/data" --enable-feature=exemplar-storage >"$tmp/prometheus.log" 2>&1 &
pids="$pids $!"
say "Prometheus $prometheus: 127.0.0.1:$prom, scraping the examples on 127.0.0.1:$metrics and 127.0.0.1:$metrics_1pct"

start=$SECONDS
rc=0
CONNTRACE_E2E_JAEGER_OTLP=http://127.0.0.1:$otlp \
	CONNTRACE_E2E_JAEGER_API=http://127.0.0.1:$query \
	CONNTRACE_E2E_PROMETHEUS_API=http://127.0.0.1:$prom \
	CONNTRACE_E2E_METRICS_ADDR=127.0.0.1:$metrics \
	CONNTRACE_E2E_METRICS_ADDR_1PCT=127.0.0.1:$metrics_1pct \
	go test -count=1 -v -timeout 5m ./lab/e2e "$@" || rc=$?
say "the end-to-end tests finished in $((SECONDS - start))s with exit code $rc"
exit $rc
