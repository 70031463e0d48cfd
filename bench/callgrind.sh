#!/usr/bin/env bash
# Counts the user-space instructions that one GET costs the client, per
# variant (bare transport, conntrace's modes, otelhttp and otelhttptrace),
# with valgrind's callgrind, and prints them next to the allocations.
#
#   bash bench/callgrind.sh [VARIANT...]     # default: every variant
#
# VARIANT@N is a variant over N servers: GETs round-robin over N host names,
# each with its own pooled connection (servers_test.go). By default the
# variants of spread=() below are also measured over each number of servers
# in CALLGRIND_SERVERS (default "10 1000 10000"; empty: none), in a second
# table; given VARIANTs, only those are measured (after bare, unless the
# first is bare or bare@N).
#
# Instruction counts repeat within 1 to 3% on a busy machine, where
# wall-clock benchmarks drift by tens of percent. How:
# - the bench module's test binary, built with CGO_ENABLED=0, runs one
#   variant for a fixed number of GETs (count_test.go) under callgrind,
#   with GOMAXPROCS=1 and GODEBUG=asyncpreemptoff=1 (no preemption signals)
#   and cpu.rdtscp=off (valgrind 3.19 cannot run RDTSCP where the host CPU
#   lacks it, yet reports it: the runtime's cputicks would die of SIGILL);
# - the server is the same binary in server mode, in its own process, not
#   under valgrind: only the client is counted;
# - each one-server variant runs at N1 and at N2 GETs, after the same warm-up; the
#   difference of the two totals divided by N2-N1 is the cost of one GET,
#   with start-up, warm-up and exit cancelled out. N1 is 0 by default: what
#   still varies from run to run is the scheduler's share (sysmon, idle
#   spinning), and the difference of two long runs would count it twice;
# - allocations and bytes per GET come from runtime.MemStats in the same
#   runs, over the same difference (all goroutines of the client);
# - all of it is repeated RUNS times, and the median is printed, with the
#   spread (max-min) of the instruction counts.
# - over N servers, the warm-up is at least two rounds (every connection
#   dialled, pooled and reused once, every server's state built before the
#   count) and
#   N2 is rounded up to a whole number of rounds; the process runs with the
#   garbage collector off (count_test.go): with every pooled connection's
#   buffers in the heap, one collection more or less in a run (the pacer's
#   timing decides) moved its figure by 10k instructions per GET and more.
#   Over N servers, then, instructions are without the collector's work
#   (which follows the bytes, printed beside them); the one-server figures
#   include it;
# - over N servers, each run is counted once, over its N2 GETs alone:
#   callgrind zeroes its counts when the count starts and dumps them when it
#   ends (--zero-before, --dump-before on count_test.go's countStart and
#   countEnd; every thread, every goroutine). The difference of two runs
#   carried the warm-up's N dials twice, whose cost varies from run to run:
#   at 10,000 servers the three runs of one variant spread by up to 10%;
#   counted this way, by at most about 2%;
# Environment: CALLGRIND_N1 (default 0; one-server variants), CALLGRIND_N2 (4000),
# CALLGRIND_WARMUP (500), CALLGRIND_RUNS (3), CALLGRIND_SERVERS. Needs Go;
# installs valgrind with apt-get if it is missing. Takes about three minutes
# for the one-server variants, and about twenty more for the many-server
# ones (10,000 servers: 30,000 GETs and 10,000 dials a run, under valgrind).
set -euo pipefail
cd "$(dirname "$0")"

# The variants of variants_test.go, bare first (TestCallgrindVariants keeps
# this list and that one the same).
variants=(bare conntrace conntrace-unsampled conntrace-unsampled-remote-parent conntrace-metrics-only
	otelhttp otelhttp-unsampled otelhttp-unsampled-remote-parent
	otelhttp+otelhttptrace otelhttp+otelhttptrace-nosubspans otelhttp-over-conntrace)
# The variants measured over many servers (TestCallgrindVariants keeps this
# list the same as spreadVariants).
spread=(bare conntrace conntrace-unsampled conntrace-metrics-only otelhttp)
servers=${CALLGRIND_SERVERS-10 1000 10000}
for s in $servers; do
	for v in "${spread[@]}"; do
		variants+=("$v@$s")
	done
done
if [ $# -gt 0 ]; then
	variants=(bare "$@")
	[[ "$1" = bare || "$1" = bare@* ]] && variants=("$@")
fi
n1=${CALLGRIND_N1:-0}
n2=${CALLGRIND_N2:-4000}
warmup=${CALLGRIND_WARMUP:-500}
runs=${CALLGRIND_RUNS:-3}
if ! [ "$n1" -ge 0 ] 2>/dev/null || ! [ "$n2" -gt "$n1" ] 2>/dev/null; then
	echo "callgrind.sh: want 0 <= CALLGRIND_N1 ($n1) < CALLGRIND_N2 ($n2)" >&2
	exit 2
fi
if ! [ "$runs" -ge 1 ] 2>/dev/null || ! [ "$warmup" -ge 1 ] 2>/dev/null; then
	echo "callgrind.sh: CALLGRIND_RUNS ($runs) and CALLGRIND_WARMUP ($warmup) must be at least 1" >&2
	exit 2
fi

if ! command -v valgrind >/dev/null; then
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
		echo "callgrind.sh: valgrind is not installed (Debian: apt-get install valgrind)" >&2
		exit 1
	fi
	echo "installing valgrind" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

work=$(mktemp -d)
server=
cleanup() {
	exec 3>&- # the server's stdin: it exits when this closes
	if [ -n "$server" ]; then
		kill "$server" 2>/dev/null || true
		wait "$server" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

echo "building the bench test binary (CGO_ENABLED=0)" >&2
CGO_ENABLED=0 go test -c -o "$work/bench.test" .

# The server runs until its stdin, a fifo this script holds open, ends.
mkfifo "$work/server.in"
CONNTRACE_BENCH_SERVE=1 "$work/bench.test" <"$work/server.in" >"$work/server.out" &
server=$!
exec 3>"$work/server.in"
url=
for _ in $(seq 100); do
	url=$(sed -n 's/^conntrace-bench-server //p' "$work/server.out")
	[ -n "$url" ] && break
	kill -0 "$server" 2>/dev/null || break
	sleep 0.1
done
if [ -z "$url" ]; then
	echo "callgrind.sh: the benchmark server did not start" >&2
	exit 1
fi

# run VARIANT N prints "instructions mallocs bytes" of one run in which
# every GET reused a connection: one dial per server (over many servers,
# at most one more per thousand GETs). net/http drops a connection whose
# write it has not seen reported 50 ms after the response
# (maxWriteWaitBeforeConnReuse), which valgrind's slowness can cause now and
# then: such a run, with a second dial in its count, is run again.
run() {
	local out ir line attempt window=() dump="$work/callgrind.out" key=summary
	if [[ "$1" == *@* ]]; then
		# Over many servers, only the counted GETs: callgrind's counts
		# are zeroed when countStart is called and dumped (to .1) when
		# countEnd is (count_test.go).
		window=(--zero-before='*bench.countStart' --dump-before='*bench.countEnd')
		dump="$work/callgrind.out.1" key=totals # a dump's summary is not of its part alone
	fi
	for attempt in 1 2 3; do
		rm -f "$work"/callgrind.out*
		if ! out=$(GOMAXPROCS=1 GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off CONNTRACE_BENCH_URL="$url" \
			CONNTRACE_BENCH_COUNT="$1" CONNTRACE_BENCH_REQUESTS="$2" CONNTRACE_BENCH_WARMUP="$warmup" \
			valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "${window[@]}" \
			"$work/bench.test" 2>"$work/valgrind.err"); then
			cat "$work/valgrind.err" >&2
			echo "callgrind.sh: variant $1 failed" >&2
			return 1
		fi
		ir=$(awk -v key="$key:" '$1 == key {print $2}' "$dump" 2>/dev/null)
		[ -n "$ir" ] || { echo "callgrind.sh: no instruction total in callgrind's output ($dump)" >&2; return 1; }
		line=$(awk -v ir="$ir" '
			/^variant=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } }
			END { if (f["mallocs"] == "") exit 1; print ir, f["mallocs"], f["bytes"], f["dials"] - f["servers"] + 1 }' <<<"$out") || {
			echo "callgrind.sh: variant $1 printed no counts: $out" >&2
			return 1
		}
		# Over many servers, a few redials are let through: one per
		# thousand GETs of the run, warm-up included (at least two rounds,
		# count_test.go), costs the figure under 0.3%.
		local s=1 w
		[[ "$1" == *@* ]] && s=${1##*@}
		w=$((warmup > 2 * s ? warmup : 2 * s))
		if [ "${line##* }" = 1 ] || { [[ "$1" == *@* ]] && [ $((${line##* } - 1)) -le $((($2 + w) / 1000)) ]; }; then
			echo "${line% *}"
			return 0
		fi
		echo "callgrind.sh: $1 at N=$2 dialled $((${line##* } - 1)) connections more than one per server; running it again" >&2
	done
	echo "callgrind.sh: $1 at N=$2 did not keep its connection in 3 runs" >&2
	return 1
}

# One line per variant and run: variant instr/GET allocs/GET bytes/GET.
: >"$work/results"
for r in $(seq "$runs"); do
	for v in "${variants[@]}"; do
		start=$SECONDS
		# Over N servers, whole rounds: N1 and N2 rounded up to multiples of N.
		s=1
		[[ "$v" == *@* ]] && s=${v##*@}
		v1=$(((n1 + s - 1) / s * s)) v2=$(((n2 + s - 1) / s * s))
		if [ "$s" -gt 1 ]; then
			# One run, its counted GETs alone (run).
			v1=0 ir1=0 m1=0 b1=0
			b=$(run "$v" "$v2") || exit 1
		else
			a=$(run "$v" "$v1") && b=$(run "$v" "$v2") || exit 1
			read -r ir1 m1 b1 <<<"$a"
		fi
		read -r ir2 m2 b2 <<<"$b"
		awk -v v="$v" -v dn=$((v2 - v1)) -v ir=$((ir2 - ir1)) -v m=$((m2 - m1)) -v by=$((b2 - b1)) \
			'BEGIN { printf "%s %.1f %.2f %.1f\n", v, ir / dn, m / dn, by / dn }' | tee -a "$work/results" |
			awk -v r="$r" -v s=$((SECONDS - start)) '{ printf "run %d: %-34s %9.0f instr %6.1f allocs %6.0f B per GET (%d s)\n", r, $1, $2, $3, $4, s }' >&2
	done
done

printf '\nconntrace client cost per GET over a reused loopback connection\n'
printf '%s; %s; valgrind %s; callgrind, GOMAXPROCS=1; (N=%d) - (N=%d) GETs after %d warm-up; median of %d runs\n' \
	"$(date -u +%Y-%m-%d)" "$(go version | awk '{print $3, $4}')" "$(valgrind --version | sed 's/valgrind-//')" \
	"$n2" "$n1" "$warmup" "$runs"
[[ "${variants[*]}" == *@* ]] && printf 'over N servers: N2 rounded up to whole rounds, after at least two rounds of warm-up, counted alone in one run (no difference of two)\n'
order=$(printf '%s ' "${variants[@]}")
awk -v order="$order" '
	function median(s,    a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function spread(s,    a, n, i, lo, hi) {
		n = split(s, a, " "); lo = hi = a[1]
		for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
		return hi - lo
	}
	function k(x) { return sprintf("%.1fk", x / 1000) }
	function signed(x, f) { return (x >= 0 ? "+" : "-") sprintf(f, x >= 0 ? x : -x) }
	{ IRS[$1] = IRS[$1] " " $2; ALS[$1] = ALS[$1] " " $3; BYS[$1] = BYS[$1] " " $4 }
	END {
		n = split(order, vs, " ")
		printf "%-34s %10s %10s %7s %8s %8s %8s %8s %7s\n", "variant", "instr/GET", "vs bare", "spread", "allocs", "vs bare", "bytes", "vs bare", "x bare"
		for (i = 1; i <= n; i++) {
			v = vs[i]; ir = median(IRS[v]); al = median(ALS[v]); by = median(BYS[v])
			IR[v] = ir; AL[v] = al; BY[v] = by
			# Over N servers, compared with bare over as many.
			split(v, at, "@")
			base = i == 1 || at[1] == "bare"
			if (base) { ir0 = ir; al0 = al; by0 = by }
			if (at[2] != "" && at[2] != lastN) { printf "over %d servers (round-robin, a pooled connection each; instructions without garbage collection)\n", at[2]; lastN = at[2] }
			printf "%-34s %10s %10s %6.1f%% %8.1f %8s %8.0f %8s %7.2f\n", v, k(ir),
				base ? "" : signed((ir - ir0) / 1000, "%.1fk"), 100 * spread(IRS[v]) / ir,
				al, base ? "" : signed(al - al0, "%.1f"),
				by, base ? "" : signed(by - by0, "%.0f"), ir / ir0
			if (at[2] != "") {
				if (!(at[1] in FIRST)) { FIRST[at[1]] = at[2]; SPREAD[++ns] = at[1] }
				LAST[at[1]] = at[2]
			}
		}
		# How the cost per GET of each variant changes from the fewest servers
		# to the most.
		for (j = 1; j <= ns; j++) {
			v = SPREAD[j]; f = v "@" FIRST[v]; l = v "@" LAST[v]
			if (j == 1) printf "\nper GET, %d servers -> %d servers\n", FIRST[v], LAST[v]
			printf "%-34s %9.1fk -> %9.1fk instr (%+.1f%%) %6.1f -> %6.1f allocs (%+.1f%%)\n", v,
				IR[f] / 1000, IR[l] / 1000, 100 * (IR[l] - IR[f]) / IR[f], AL[f], AL[l], 100 * (AL[l] - AL[f]) / AL[f]
		}
		# Stacked under otelhttp, what conntrace adds to otelhttp alone.
		a = "otelhttp-over-conntrace"; b = "otelhttp"
		if ((a in IR) && (b in IR))
			printf "\n%s vs %s (conntrace annotating otelhttp\047s span): %s instructions, %s allocs, %s bytes per GET\n",
				a, b, signed((IR[a] - IR[b]) / 1000, "%.1fk"), signed(AL[a] - AL[b], "%.1f"), signed(BY[a] - BY[b], "%.0f")
	}' "$work/results"
