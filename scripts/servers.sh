#!/usr/bin/env bash
# servers.sh: real HTTP servers with their own keep-alive idle timers, from
# Debian, on loopback: what `conntrace probe` and conntrace's detectors must
# tell apart from a NAT or firewall that forgets flows.
#
#   scripts/servers.sh run     # install if missing, start, probe each, run the Go test, stop
#   scripts/servers.sh serve   # install if missing, start, and wait (Ctrl-C stops them)
#
# Each server runs in the foreground, as a child of this script, with a
# config written to a temporary directory, on 127.0.0.1 only, with an idle
# timeout of CONNTRACE_SERVERS_IDLE seconds (default 4):
#
#   nginx     keepalive_timeout 4s
#   haproxy   timeout http-keep-alive 4s, in front of a tiny backend (a
#             second HAProxy listener that answers 200)
#   lighttpd  server.max-keep-alive-idle = 4
#   caddy     servers { timeouts { idle 4s } }
#
# on ports CONNTRACE_SERVERS_PORT+1.. (default 18081 to 18085). They stop
# when the script exits, fails or is interrupted.
#
# 'run' checks, against each server:
#   (a) `conntrace probe` (the command itself, built from this checkout):
#       exit 0, a bracket that holds the timer, the kind "closed by peer
#       (FIN while idle)" or "(FIN on reuse)" (lighttpd answers a request
#       that comes after its timer with a FIN), and no TCP keep-alive
#       advice (it cannot beat a server's own timer). It prints its report
#       and "servers: PASS probe NAME: ..." for each.
#   (b) lab/servers' TestRealServers (go test -v): requests through
#       conntrace with idle gaps just below and just above the timeout raise
#       no false stale-reuse alert.
#
# Missing servers are installed with apt-get (needs root), with a
# policy-rc.d that denies every service start for the duration, so that
# none of their system services starts (or listens on port 80); any
# existing policy-rc.d is put back afterwards. The packages still enable
# their services for the next boot: on a machine you keep, run
# `systemctl disable nginx haproxy lighttpd caddy` once.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin

IDLE=${CONNTRACE_SERVERS_IDLE:-4}
BASE=${CONNTRACE_SERVERS_PORT:-18080}
case "$IDLE" in '' | *[!0-9]* | 0 | 1) echo "servers: CONNTRACE_SERVERS_IDLE must be whole seconds, at least 2 (got '$IDLE')" >&2; exit 2 ;; esac
case "$BASE" in '' | *[!0-9]*) echo "servers: CONNTRACE_SERVERS_PORT must be a port number (got '$BASE')" >&2; exit 2 ;; esac

SERVERS="nginx haproxy lighttpd caddy"
declare -A PORT=([nginx]=$((BASE + 1)) [haproxy]=$((BASE + 2)) [lighttpd]=$((BASE + 3)) [caddy]=$((BASE + 4)))
BACKEND_PORT=$((BASE + 5)) # HAProxy's tiny backend
declare -A PACKAGE=([nginx]=nginx [haproxy]=haproxy [lighttpd]=lighttpd [caddy]=caddy)

say() { printf 'servers: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

DIR=""
PIDS=()
POLICY=/usr/sbin/policy-rc.d
POLICY_SAVED=""
POLICY_OURS=""

cleanup() {
	# A second signal (timeout(1) signals the whole process group, for one)
	# must not cut the cleanup short.
	trap '' INT TERM
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
	restore_policy
	[ -z "$DIR" ] || rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# deny_services writes a policy-rc.d that forbids starting any service
# (exit 101: "action forbidden by policy"), keeping the one there was.
deny_services() {
	if [ -e "$POLICY" ]; then
		POLICY_SAVED=$(mktemp)
		cp -p "$POLICY" "$POLICY_SAVED"
	fi
	POLICY_OURS=1
	printf '#!/bin/sh\n# written by conntrace scripts/servers.sh while it installs packages\nexit 101\n' >"$POLICY"
	chmod 755 "$POLICY"
}

restore_policy() {
	[ -n "$POLICY_OURS" ] || return 0
	if [ -n "$POLICY_SAVED" ]; then
		cp -p "$POLICY_SAVED" "$POLICY"
		rm -f "$POLICY_SAVED"
	else
		rm -f "$POLICY"
	fi
	POLICY_OURS="" POLICY_SAVED=""
}

install_missing() {
	local s missing=()
	for s in $SERVERS; do
		command -v "$s" >/dev/null || missing+=("${PACKAGE[$s]}")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	[ "$(id -u)" = 0 ] || die "${missing[*]} not installed, and installing needs root: apt-get install ${missing[*]}"
	command -v apt-get >/dev/null || die "${missing[*]} not installed, and there is no apt-get"
	say "installing ${missing[*]} (services kept stopped by policy-rc.d)"
	deny_services
	local p policy
	for p in "${missing[@]}"; do
		policy=$(apt-cache policy "$p" 2>/dev/null || true)
		case "$policy" in
		*"Candidate: "[0-9]*) ;;
		*)
			say "apt-get update (apt knows no $p package yet)"
			apt-get update -qq >&2
			break
			;;
		esac
	done
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	restore_policy
	for s in $SERVERS; do
		command -v "$s" >/dev/null || die "$s is still not on PATH after apt-get install ${PACKAGE[$s]}"
	done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_configs() {
	mkdir -p "$DIR/www" "$DIR/nginx" "$DIR/caddy"
	printf 'hello from lighttpd\n' >"$DIR/www/index.html"

	cat >"$DIR/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
pid $DIR/nginx/nginx.pid;
error_log stderr warn;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path $DIR/nginx/body;
	proxy_temp_path $DIR/nginx/proxy;
	fastcgi_temp_path $DIR/nginx/fastcgi;
	uwsgi_temp_path $DIR/nginx/uwsgi;
	scgi_temp_path $DIR/nginx/scgi;
	keepalive_timeout ${IDLE}s;
	server {
		listen 127.0.0.1:${PORT[nginx]};
		location / { return 200 "hello from nginx\n"; }
	}
}
EOF

	cat >"$DIR/haproxy.cfg" <<EOF
defaults
	mode http
	timeout connect 5s
	timeout client 60s
	timeout server 60s
	timeout http-request 10s
	timeout http-keep-alive ${IDLE}s

frontend front
	bind 127.0.0.1:${PORT[haproxy]}
	default_backend app

backend app
	server app 127.0.0.1:$BACKEND_PORT

# The tiny backend HAProxy stands in front of.
frontend tiny
	bind 127.0.0.1:$BACKEND_PORT
	http-request return status 200 content-type text/plain string "hello from haproxy's backend"
EOF

	cat >"$DIR/lighttpd.conf" <<EOF
server.document-root = "$DIR/www"
server.bind = "127.0.0.1"
server.port = ${PORT[lighttpd]}
server.max-keep-alive-idle = $IDLE
server.errorlog = "$DIR/lighttpd.error.log"
index-file.names = ( "index.html" )
EOF

	cat >"$DIR/caddy/Caddyfile" <<EOF
{
	admin off
	auto_https off
	servers {
		timeouts {
			idle ${IDLE}s
		}
	}
}
http://127.0.0.1:${PORT[caddy]} {
	bind 127.0.0.1
	respond "hello from caddy"
}
EOF
}

version() {
	case "$1" in
	caddy) caddy version 2>&1 | head -1 ;;
	*) "$1" -v 2>&1 | head -1 ;;
	esac
}

# start NAME CMD...: runs CMD in the background, its output prefixed, and
# waits until NAME's port answers.
start() {
	local name=$1
	shift
	"$@" > >(sed -u "s/^/$name: /" >&2) 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	local port=${PORT[$name]} i
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || die "$name exited at start (see its output above)"
		if ! port_free "$port"; then
			say "$name ($(version "$name")) on http://127.0.0.1:$port/, idle timeout ${IDLE}s, pid $pid"
			return 0
		fi
		sleep 0.1
	done
	die "$name did not listen on 127.0.0.1:$port within 10s"
}

start_all() {
	local s p
	for p in "${PORT[@]}" "$BACKEND_PORT"; do
		port_free "$p" || die "127.0.0.1:$p is taken; set CONNTRACE_SERVERS_PORT to another base"
	done
	DIR=$(mktemp -d /tmp/conntrace-servers.XXXXXX)
	chmod 755 "$DIR"
	write_configs
	start nginx nginx -e stderr -p "$DIR/nginx/" -c "$DIR/nginx/nginx.conf"
	start haproxy haproxy -db -f "$DIR/haproxy.cfg"
	start lighttpd lighttpd -D -f "$DIR/lighttpd.conf"
	start caddy env HOME="$DIR/caddy" XDG_DATA_HOME="$DIR/caddy" XDG_CONFIG_HOME="$DIR/caddy" \
		caddy run --adapter caddyfile --config "$DIR/caddy/Caddyfile"
	URLS=""
	for s in $SERVERS; do
		URLS="$URLS $s=http://127.0.0.1:${PORT[$s]}/"
	done
	URLS=${URLS# }
}

# ms DURATION: a duration as `conntrace probe` prints it (500ms, 3.8s,
# 4.25s) in milliseconds.
ms() {
	awk -v d="$1" 'BEGIN {
		if (d ~ /^[0-9.]+ms$/) { sub(/ms$/, "", d); printf "%d\n", d + 0.5; exit }
		if (d ~ /^[0-9.]+s$/) { sub(/s$/, "", d); printf "%d\n", d * 1000 + 0.5; exit }
		exit 1
	}'
}

# probe NAME: runs `conntrace probe` against NAME, prints its report, and
# checks it; prints "servers: PASS probe NAME ..." or returns 1.
probe() {
	local name=$1 url="http://127.0.0.1:${PORT[$1]}/" out=$DIR/probe-$1.txt rc=0
	local idle_ms=$((IDLE * 1000))
	# A ladder around the timeout, then rounds down to an eighth of it:
	# for 4 s, 2s 3s 5s 8s, then 3.4s 3.8s 4.2s 4.6s: about 10 s a server.
	local ladder="$((IDLE * 500))ms,$((IDLE * 750))ms,$((IDLE * 1250))ms,$((IDLE * 2000))ms"
	say "conntrace probe $url ($name)"
	"$DIR/conntrace" probe --ladder "$ladder" --max "$((IDLE * 2))s" --resolution "$((IDLE * 125))ms" \
		--timeout 2s "$url" >"$out" 2>"$out.progress" || rc=$?
	cat "$out"
	[ "$rc" = 0 ] || { say "FAIL probe $name: exit code $rc; its progress:"; cat "$out.progress" >&2; return 1; }

	# The bracket (low, high] must hold the timer: nginx, HAProxy and
	# Caddy end a connection idle exactly IDLE s. lighttpd compares whole
	# seconds of a clock it updates about once a second, so its timer ends
	# connections idle between about IDLE-1 and IDLE+1 s (seen, for 4 s:
	# 3.84 s and 5.02 s): the bracket must meet that range.
	local line low high ok
	line=$(grep -m1 '^Idle timeout: between ' "$out") || { say "FAIL probe $name: no 'Idle timeout: between' line"; return 1; }
	set -- $line
	low=$(ms "$4") && high=$(ms "$6") || { say "FAIL probe $name: cannot read the bracket in: $line"; return 1; }
	if [ "$name" = lighttpd ]; then
		[ "$low" -lt $((idle_ms + 1000)) ] && [ "$high" -gt $((idle_ms - 1000)) ] && ok=1
	else
		[ "$low" -lt "$idle_ms" ] && [ "$high" -ge "$idle_ms" ] && ok=1
	fi
	[ -n "${ok:-}" ] || { say "FAIL probe $name: the bracket ($4, $6] does not hold its ${IDLE}s timer"; return 1; }
	local kind
	kind=$(grep -m1 -o '^Kind: closed by peer (FIN [a-z ]*)' "$out") ||
		{ say "FAIL probe $name: the kind is not 'closed by peer (FIN ...)': $(grep -m1 '^Kind:' "$out")"; return 1; }
	if grep -q 'KeepAliveConfig' "$out" || ! grep -q '// TCP keep-alive does not help here: a FIN' "$out"; then
		say "FAIL probe $name: it advises TCP keep-alive, which cannot beat the server's own timer"
		return 1
	fi
	say "PASS probe $name: bracket ($4, $6] holds its ${IDLE}s timer; ${kind#Kind: }; no keep-alive advice"
}

run() {
	install_missing
	start_all
	say "building conntrace"
	go build -o "$DIR/conntrace" ./cmd/conntrace
	local s failed=""
	for s in $SERVERS; do
		probe "$s" || failed="$failed $s"
	done
	say "go test ./lab/servers: idle gaps just below and above each timer"
	CONNTRACE_SERVERS=$URLS CONNTRACE_SERVERS_IDLE=$IDLE \
		go test -count=1 -v -parallel 8 -run '^TestRealServers$' ./lab/servers || failed="$failed go-test"
	[ -z "$failed" ] || die "FAILED:$failed"
	say "PASS: conntrace probe and TestRealServers against $SERVERS"
}

case "${1:-}" in
run) run ;;
serve)
	install_missing
	start_all
	say "serving: $URLS"
	say "Ctrl-C stops them"
	wait
	;;
*)
	echo "usage: $0 run|serve" >&2
	exit 2
	;;
esac
