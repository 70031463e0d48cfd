#!/usr/bin/env bash
# natlab.sh: a real stateful NAT in the Linux kernel, to prove what the
# in-process natsim cannot: that conntrace detects a flow the kernel's
# conntrack forgot, and that TCP keep-alive (whose probes carry no payload)
# or a short IdleConnTimeout cures it.
#
#   scripts/natlab.sh run    # build the lab, run the tests, tear it down
#   scripts/natlab.sh probe  # build the lab, run `conntrace probe` against it, tear it down
#   scripts/natlab.sh up     # build the lab and leave it (for poking around)
#   scripts/natlab.sh down   # tear down what 'up' built
#
# 'run' runs the tests of lab/natlab (TestNATLab: five scenarios of
# detection and cure; TestNATLabMatrix: the fault matrix of issue 11,
# scored, and a sweep across the timeout; TestNATLabProbe: the probe must
# find the conntrack timeout; TestNATLabStreams and TestNATLabWatch: streams,
# long polls and a client-go watch whose flow the NAT forgets during a pause
# (stream_stall and its cure); TestNATLabCure: the cure of issue 14, closing a
# dead connection and keep-alive below the timeout, timed with and without
# it); arguments after 'run' go to the test binary
# (run -test.run TestNATLabMatrix: the matrix alone). 'probe' runs the real
# command line in the client namespace; flags given after 'probe' replace
# its defaults, which suit the timeout.
#
# The server (the test binary in serve mode, keep-alive off) listens on
# three ports of 203.0.113.2: 8080 plain HTTP (?delay=2s answers 2 s late:
# a slow but alive server); 8443 HTTP/2 over TLS (a self-signed
# certificate); 8081 a reverse proxy to 8080 that, for /blackhole, reads
# the request and never answers (an L7 hop that ACKs and black-holes).
#
# Three network namespaces joined by veth pairs, on documentation addresses
# (RFC 5737) that exist only inside them:
#
#   client 198.51.100.2 -- 198.51.100.1 router 203.0.113.1 -- 203.0.113.2 server
#
# The router forwards with MASQUERADE, nf_conntrack_tcp_loose=0 (a mid-flow
# packet never recreates a forgotten entry), an established-flow timeout of
# CONNTRACE_NATLAB_CONNTRACK_TIMEOUT seconds (default 3), FORWARD policy
# DROP, ctstate INVALID dropped, ESTABLISHED accepted: after the timeout a
# reused connection's packets vanish, exactly as behind a cloud NAT.
#
# Needs root. Installs iproute2 and iptables with apt-get if missing. Touches only
# namespaces it created itself (recorded in $STATE) and refuses to start if
# one of its names is already taken by something else.
set -euo pipefail
cd "$(dirname "$0")/.."

# CONNTRACE_NATLAB_PREFIX names the namespaces (and the state file), so two
# labs can run side by side, from two worktrees say: each its own prefix.
PREFIX=${CONNTRACE_NATLAB_PREFIX:-conntrace-lab}
case "$PREFIX" in
conntrace-lab*) ;;
*) echo "natlab: CONNTRACE_NATLAB_PREFIX must start with conntrace-lab (got '$PREFIX')" >&2; exit 2 ;;
esac
NS_C=$PREFIX-client
NS_R=$PREFIX-router
NS_S=$PREFIX-server
STATE=/run/$PREFIX.state
CT_TIMEOUT=${CONNTRACE_NATLAB_CONNTRACK_TIMEOUT:-3}
CLIENT_IP=198.51.100.2
ROUTER_C_IP=198.51.100.1
ROUTER_S_IP=203.0.113.1
SERVER_IP=203.0.113.2
SERVER_PORT=8080
H2_PORT=8443    # the fault matrix's HTTP/2 over TLS
PROXY_PORT=8081 # the fault matrix's black-holing reverse proxy

say() { printf 'natlab: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

preflight() {
	[ "$(id -u)" = 0 ] || die "needs root (network namespaces and iptables)"
	local missing=""
	command -v ip >/dev/null || missing="$missing iproute2"
	command -v iptables >/dev/null || missing="$missing iptables"
	if [ -n "$missing" ]; then
		say "installing$missing"
		apt-get update -qq && apt-get install -y -qq $missing >/dev/null
	fi
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

up() {
	if [ -e "$STATE" ]; then
		say "a previous lab run left its namespaces behind; removing them"
		down
	fi
	for ns in $NS_C $NS_R $NS_S; do
		if ip netns list | grep -qw "^$ns"; then
			die "namespace $ns exists but this script did not create it; remove it yourself (ip netns del $ns) if it is a leftover"
		fi
	done
	: >"$STATE"
	for ns in $NS_C $NS_R $NS_S; do
		ip netns add "$ns"
		echo "$ns" >>"$STATE"
		in_ns "$ns" ip link set lo up
	done

	# client <-> router, router <-> server. The veth ends are created inside
	# the namespaces, so they go away with them.
	ip -n $NS_C link add ctl-c type veth peer name ctl-rc netns $NS_R
	ip -n $NS_S link add ctl-s type veth peer name ctl-rs netns $NS_R
	ip -n $NS_C addr add $CLIENT_IP/24 dev ctl-c
	ip -n $NS_R addr add $ROUTER_C_IP/24 dev ctl-rc
	ip -n $NS_R addr add $ROUTER_S_IP/24 dev ctl-rs
	ip -n $NS_S addr add $SERVER_IP/24 dev ctl-s
	for pair in "$NS_C ctl-c" "$NS_R ctl-rc" "$NS_R ctl-rs" "$NS_S ctl-s"; do
		set -- $pair
		ip -n "$1" link set "$2" up
	done
	ip -n $NS_C route add default via $ROUTER_C_IP
	ip -n $NS_S route add default via $ROUTER_S_IP

	# The router: a stateful NAT that forgets idle flows after CT_TIMEOUT s.
	in_ns $NS_R sysctl -qw net.ipv4.ip_forward=1
	in_ns $NS_R iptables -t nat -A POSTROUTING -o ctl-rs -j MASQUERADE
	in_ns $NS_R sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
	in_ns $NS_R sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established="$CT_TIMEOUT"
	in_ns $NS_R iptables -P FORWARD DROP
	in_ns $NS_R iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP
	in_ns $NS_R iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
	in_ns $NS_R iptables -A FORWARD -i ctl-rc -o ctl-rs -m conntrack --ctstate NEW -j ACCEPT
	say "up: $NS_C ($CLIENT_IP) -> $NS_R (NAT, conntrack established timeout ${CT_TIMEOUT}s) -> $NS_S ($SERVER_IP)"
}

down() {
	[ -e "$STATE" ] || return 0
	while read -r ns; do
		case "$ns" in
		$PREFIX-*) ip netns del "$ns" 2>/dev/null || true ;;
		*) say "ignoring '$ns' in $STATE: not one of ours" ;;
		esac
	done <"$STATE"
	rm -f "$STATE"
	say "down"
}

# Globals, not locals: the EXIT trap runs after run() has returned.
tmp=""
server_pid=""
client_pid=""

cleanup() {
	local rc=$?
	set +e # clean up everything, whatever fails on the way
	for pid in $client_pid $server_pid; do
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	[ -n "$tmp" ] && rm -rf "$tmp"
	down
	exit $rc
}

# start_lab builds the lab and the test binary (which is also the lab's
# server), starts the server and waits for it.
start_lab() {
	# Tear down on success, failure and interrupt alike.
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	tmp=$(mktemp -d)
	up
	go test -c -o "$tmp/natlab.test" ./lab/natlab

	# The server: the same binary in serve mode, keep-alive off on accepted
	# connections (Go's default probes would refresh the NAT entry).
	CONNTRACE_NATLAB_SERVE=$SERVER_IP:$SERVER_PORT \
		CONNTRACE_NATLAB_SERVE_H2=$SERVER_IP:$H2_PORT \
		CONNTRACE_NATLAB_SERVE_PROXY=$SERVER_IP:$PROXY_PORT \
		ip netns exec $NS_S "$tmp/natlab.test" &
	server_pid=$!
	local port ready
	for port in $SERVER_PORT $H2_PORT $PROXY_PORT; do
		ready=""
		for _ in $(seq 50); do
			if timeout 2 ip netns exec $NS_C bash -c "exec 3<>/dev/tcp/$SERVER_IP/$port" 2>/dev/null; then
				ready=1
				break
			fi
			sleep 0.1
		done
		[ -n "$ready" ] || die "the lab server on $SERVER_IP:$port did not come up"
	done
}

# in_client runs a command in the client namespace and returns its exit code.
in_client() {
	local rc=0
	ip netns exec $NS_C "$@" &
	client_pid=$!
	# wait, unlike a foreground child, lets an interrupt's trap run at once.
	wait "$client_pid" || rc=$?
	client_pid=""
	return $rc
}

run() {
	local rc=0
	start_lab
	local start=$SECONDS
	CONNTRACE_NATLAB_SERVER=$SERVER_IP:$SERVER_PORT \
		CONNTRACE_NATLAB_SERVER_H2=$SERVER_IP:$H2_PORT \
		CONNTRACE_NATLAB_SERVER_PROXY=$SERVER_IP:$PROXY_PORT \
		CONNTRACE_NATLAB_ROUTER=$NS_R \
		CONNTRACE_NATLAB_CONNTRACK_TIMEOUT=$CT_TIMEOUT \
		in_client "$tmp/natlab.test" -test.v -test.count=1 -test.run '^TestNATLab' "$@" || rc=$?
	say "lab finished in $((SECONDS - start))s with exit code $rc"
	return $rc
}

# dur writes a number of milliseconds as a duration flag: 1s, or 500ms.
dur() { if (($1 % 1000 == 0)); then echo "$(($1 / 1000))s"; else echo "$1ms"; fi; }

probe() {
	local rc=0
	start_lab
	go build -o "$tmp/conntrace" ./cmd/conntrace
	# By default a ladder of T/3 .. 8T/3 refined to T/6 (T the conntrack
	# timeout), as TestNATLabProbe uses, and a 5 s timeout that the
	# kernel's verdict (about 1 s) makes moot; flags given replace these.
	local t=$((CT_TIMEOUT * 1000))
	local flags=(--ladder "$(dur $((t / 3))),$(dur $((2 * t / 3))),$(dur $((4 * t / 3))),$(dur $((8 * t / 3)))"
		--max "$(dur $((8 * t / 3)))" --resolution "$(dur $((t / 6)))" --timeout 5s)
	if [ $# -gt 0 ]; then flags=("$@"); fi
	local start=$SECONDS
	say "conntrace probe ${flags[*]} http://$SERVER_IP:$SERVER_PORT/ (in $NS_C; conntrack timeout ${CT_TIMEOUT}s)"
	in_client "$tmp/conntrace" probe "${flags[@]}" "http://$SERVER_IP:$SERVER_PORT/" || rc=$?
	say "probe finished in $((SECONDS - start))s with exit code $rc"
	return $rc
}

preflight
case "${1:-}" in
up) up ;;
down) down ;;
run) shift; run "$@" ;;
probe) shift; probe "$@" ;;
*) die "usage: $0 run|probe|up|down" ;;
esac
