#!/usr/bin/env bash
# jaeger.sh: a real Jaeger v2 on loopback, for conntrace's traces.
#
#   scripts/jaeger.sh build   # print the path of the Jaeger binary, building it if needed
#   scripts/jaeger.sh run     # run Jaeger in the foreground (Ctrl-C stops it)
#
# Jaeger v2 is built from the Go module proxy, not downloaded as a release
# binary: `go mod download` the module, copy it out of the read-only module
# cache and `go build ./cmd/jaeger` there (`go install ...@version` refuses
# the module because its go.mod has a replace line). The binary is cached
# outside the repository, keyed by version, so only the first build takes
# minutes (about 2.4 GB of RAM); later runs start it at once:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/conntrace/jaeger-$JAEGER_VERSION/jaeger
#
# `run` uses scripts/jaeger.yaml: in-memory storage, and every listener on
# 127.0.0.1 (OTLP/HTTP :4318, UI and HTTP API :16686, query gRPC :16685,
# health :13133). Override an address with the CONNTRACE_JAEGER_* variables
# named in that file.
set -euo pipefail
cd "$(dirname "$0")/.."

# v1.76.0 of the Go module is Jaeger 2.13.
JAEGER_VERSION=${JAEGER_VERSION:-v1.76.0}
JAEGER_BIN=${XDG_CACHE_HOME:-$HOME/.cache}/conntrace/jaeger-$JAEGER_VERSION/jaeger

say() { printf 'jaeger: %s\n' "$*" >&2; }

build() {
	if [ -x "$JAEGER_BIN" ]; then
		echo "$JAEGER_BIN"
		return
	fi
	local start=$SECONDS src work
	say "building Jaeger $JAEGER_VERSION from the Go module proxy (first time only; takes minutes)"
	src=$(go mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$src" ] || { say "go mod download did not give a module directory"; exit 1; }
	work=$(mktemp -d)
	# A RETURN trap would fire in the caller too; clean up explicitly.
	cp -r "$src/." "$work/"
	chmod -R u+w "$work"
	mkdir -p "$(dirname "$JAEGER_BIN")"
	if ! (cd "$work" && GOFLAGS=-buildvcs=false go build -trimpath -o "$JAEGER_BIN.tmp" ./cmd/jaeger); then
		rm -rf "$work" "$JAEGER_BIN.tmp"
		say "building Jaeger failed"
		exit 1
	fi
	rm -rf "$work"
	mv "$JAEGER_BIN.tmp" "$JAEGER_BIN"
	say "built $JAEGER_BIN in $((SECONDS - start))s"
	echo "$JAEGER_BIN"
}

case "${1:-}" in
build) build ;;
run)
	bin=$(build)
	exec "$bin" --config "$PWD/scripts/jaeger.yaml"
	;;
*)
	echo "usage: $0 build|run" >&2
	exit 2
	;;
esac
