#!/usr/bin/env bash
# prometheus.sh: a real Prometheus (Debian's package, 2.42) for conntrace's
# metrics and alert rules, on loopback.
#
#   scripts/prometheus.sh bin          # print the directory holding prometheus and promtool
#   scripts/prometheus.sh test-rules   # promtool: check and unit-test exporters/prometheus/alerts.yml
#                                      # and fleet.yml
#   scripts/prometheus.sh run          # Prometheus on 127.0.0.1:9090, scraping the example on
#                                      # localhost:9464 (exemplars kept) and loading the shipped rules
#
# If prometheus and promtool are on PATH they are used. Otherwise the
# Debian package is fetched with `apt-get download` and unpacked (dpkg-deb
# -x) under ${XDG_CACHE_HOME:-$HOME/.cache}/conntrace/prometheus-VERSION:
# installing it would also start a system service listening on all
# interfaces, which these checks must not do. Fetching needs apt's package
# lists (apt-get update, as root, if they are missing).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'prometheus: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

bin() {
	if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
		dirname "$(command -v prometheus)"
		return
	fi
	command -v apt-get >/dev/null || die "prometheus is not on PATH and there is no apt-get to fetch Debian's package; install Prometheus 2.x"
	local version
	version=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [ -z "$version" ] || [ "$version" = "(none)" ]; then
		[ "$(id -u)" = 0 ] || die "apt knows no prometheus package; run apt-get update as root first"
		say "apt-get update (no package lists yet)"
		apt-get update -qq >&2
		version=$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')
		[ -n "$version" ] && [ "$version" != "(none)" ] || die "apt has no prometheus package"
	fi
	local dir=${XDG_CACHE_HOME:-$HOME/.cache}/conntrace/prometheus-$version
	if [ ! -x "$dir/usr/bin/prometheus" ] || [ ! -x "$dir/usr/bin/promtool" ]; then
		local work
		work=$(mktemp -d)
		say "fetching Debian's prometheus $version"
		if ! (cd "$work" && apt-get download -qq "prometheus=$version" >&2); then
			rm -rf "$work"
			die "apt-get download prometheus=$version failed"
		fi
		mkdir -p "$dir"
		dpkg-deb -x "$work"/prometheus_*.deb "$dir"
		rm -rf "$work"
	fi
	echo "$dir/usr/bin"
}

case "${1:-}" in
bin) bin ;;
test-rules)
	dir=$(bin)
	v=$("$dir/promtool" --version 2>&1)
	echo "${v%%$'\n'*}"
	"$dir/promtool" check rules exporters/prometheus/alerts.yml exporters/prometheus/fleet.yml
	"$dir/promtool" test rules exporters/prometheus/alerts_test.yml exporters/prometheus/fleet_test.yml
	;;
run)
	dir=$(bin)
	data=$(mktemp -d)
	trap 'rm -rf "$data"' EXIT
	"$dir/prometheus" --config.file=scripts/prometheus.yml --enable-feature=exemplar-storage \
		--web.listen-address=127.0.0.1:9090 --storage.tsdb.path="$data" &
	pid=$!
	trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
	trap 'exit 130' INT TERM
	wait $pid
	;;
*)
	echo "usage: $0 bin|test-rules|run" >&2
	exit 2
	;;
esac
