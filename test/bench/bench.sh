#!/usr/bin/env bash
# `npm run bench`: the NAT benchmark (issue 11). tunnat against Linux's own NAT (nftables snat) on
# one private topology in one run: rounds alternate the modes (kernel first in odd rounds, tunnat
# first in even ones) and the summary is the median of per-round ratios, so both modes of a round
# see the same background load. test/bench/report.ts turns the raw records into the table and
# the JSON; README "Benchmark" explains every column.
#
#   npm run bench [-- --quick] [-- --rounds N --seconds S --flows N --queues N --direct --out FILE]
#
# What one mode's block measures (in this order): ping RTT at idle; TCP 1-byte request/response
# over one connection (rate, p50, p99); new TCP connections per second; TCP throughput with 1, 4
# and 16 streams (iperf3); UDP 64 B and 1400 B datagrams through the NAT (several senders, several
# receivers), with the NAT path's loss (sent - arrived at the server's host) and the receiver's
# loss (arrived - read, the server's UDP RcvbufErrors) apart; then the table is filled with
# --flows live UDP flows and TCP 1 stream and request/response run again, with the daemon's RSS.
# Every load figure records the daemon's CPU (/proc/PID/stat), the kernel's softirq time and the
# host's busy and steal time (/proc/stat), and the senders' own CPU.
#
# Topology (addresses from lab/lab.json, the lab's only home; namespaces tnb-<pid>-*):
#   p1 (inside host) --veth-- br-in [nat] out0 --veth-- inet (servers)
# kernel mode: nft table ip tnbench, postrouting snat of the inside prefix to the NAT address out
#              of out0; the NAT address is an extra /32 on out0 (so ARP for it is answered).
# tunnat mode: that table and address removed; `tunnat run` in the nat namespace with the lab's
#              flags (it routes the NAT address into its TUN and proxy-ARPs for it on out0).
# direct mode (--direct): no NAT at all, inet routes the inside prefix back via the nat
#              namespace: what the endpoints and the forwarding alone can do on this machine.
# Same NAT address, veths, bridge and servers in every mode; tunnat mode adds the TUN hop by design.
#
# Flags (and the environment variables they override):
#   --quick            1 round of 2 s per test, 200,000 flows: about a minute
#   --rounds N         BENCH_ROUNDS (3)        --seconds S   BENCH_SECONDS (5)
#   --flows N          BENCH_FLOWS (1000000; 0 skips the full-table phase)
#   --queues N         BENCH_QUEUES (unset: the daemon's default): passed as `tunnat run --queues N`
#   --direct           BENCH_DIRECT=1: add the no-NAT baseline mode
#   --out FILE         BENCH_OUT: write the JSON there (default: bench-result.json in the cwd)
#   --profile DIR      BENCH_PROFILE: record a system-wide CPU profile (perf record -a -g) during
#                      each load test of each mode and write DIR/<mode>-r<round>-<test>.txt: the
#                      share of CPU time by thread (the daemon's own threads, the senders, the
#                      kernel's softirq threads, idle) and the hottest symbols of the daemon's
#                      threads and of all CPUs. Needs perf (linux-perf). The profiler costs CPU
#                      too: take figures from a run without it.
# Also: BENCH_NODE_ARGS (extra node flags for the daemon), BENCH_DAEMON_ARGS (extra `tunnat run`
# flags), BENCH_NO_GUARD=1 (empty the guard's nft forward chain in tunnat rounds, to measure its
# cost), BENCH_DAEMON_NICE (renice the daemon's threads to N once it is up; default: the Nice= of
# systemd/tunnat.service, as it runs in production; empty = leave it at 0), BENCH_UDP_SENDERS (default: CPUs), BENCH_FILL_PPS (200000).
# Needs root, iproute2, nft, iperf3, curl, ping, cc, node. Sends only inside its own namespaces.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS="${BENCH_ROUNDS:-3}"
SECS="${BENCH_SECONDS:-5}"
FLOWS="${BENCH_FLOWS:-1000000}"
QUEUES="${BENCH_QUEUES:-}"
DIRECT="${BENCH_DIRECT:-0}"
OUT="${BENCH_OUT:-bench-result.json}"
PROFILE="${BENCH_PROFILE:-}"
QUICK=0
NODE_ARGS="${BENCH_NODE_ARGS:-}"
NO_GUARD="${BENCH_NO_GUARD:-0}"
DAEMON_ARGS="${BENCH_DAEMON_ARGS:-}"
# The daemon runs at the nice level its systemd unit gives it, unless BENCH_DAEMON_NICE says else.
UNIT_NICE="$(sed -n 's/^Nice=\(-\{0,1\}[0-9]*\)$/\1/p' "$ROOT/systemd/tunnat.service" | head -n 1)"
DAEMON_NICE="${BENCH_DAEMON_NICE-$UNIT_NICE}"
UDP_SENDERS="${BENCH_UDP_SENDERS:-$(nproc)}"
FILL_PPS="${BENCH_FILL_PPS:-200000}"
NODE="$(command -v node)"

die() { echo "bench: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; SECS=2; FLOWS="${BENCH_FLOWS:-200000}" ;;
    --rounds) ROUNDS="${2:-}"; shift ;;
    --seconds) SECS="${2:-}"; shift ;;
    --flows) FLOWS="${2:-}"; shift ;;
    --queues) QUEUES="${2:-}"; shift ;;
    --direct) DIRECT=1 ;;
    --out) OUT="${2:-}"; shift ;;
    --profile) PROFILE="${2:-}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || { echo "bench: --rounds must be 1..99, not '$ROUNDS'" >&2; exit 2; }
[[ "$SECS" =~ ^[1-9][0-9]?$ ]] || { echo "bench: --seconds must be 1..99, not '$SECS'" >&2; exit 2; }
[[ "$FLOWS" =~ ^[0-9]{1,7}$ && "$FLOWS" -le 4000000 ]] || { echo "bench: --flows must be 0..4000000, not '$FLOWS'" >&2; exit 2; }
[[ -z "$QUEUES" || "$QUEUES" =~ ^[1-9][0-9]?$ ]] || { echo "bench: --queues must be 1..99, not '$QUEUES'" >&2; exit 2; }
[[ "$UDP_SENDERS" =~ ^[1-9][0-9]?$ ]] || { echo "bench: BENCH_UDP_SENDERS must be 1..99" >&2; exit 2; }
[[ -z "$DAEMON_NICE" || "$DAEMON_NICE" =~ ^-?[0-9]{1,2}$ ]] || { echo "bench: BENCH_DAEMON_NICE must be -20..19" >&2; exit 2; }
[[ "$FILL_PPS" =~ ^[0-9]{4,7}$ ]] || { echo "bench: BENCH_FILL_PPS must be 1000..9999999" >&2; exit 2; }
[[ -n "$OUT" ]] || { echo "bench: --out needs a file name" >&2; exit 2; }
if [[ -n "$PROFILE" ]]; then
  command -v perf >/dev/null || { echo "bench: --profile needs perf (apt install linux-perf)" >&2; exit 2; }
  mkdir -p "$PROFILE" || { echo "bench: --profile: cannot create '$PROFILE'" >&2; exit 2; }
  PROFILE="$(cd "$PROFILE" && pwd)"
fi

[[ "$(id -u)" == 0 ]] || die "needs root (ip netns)"
for t in ip nft iperf3 curl timeout ping cc node; do command -v "$t" >/dev/null || die "needs $t"; done
[[ -f "$ROOT/build/Release/tunnat_tun.node" ]] || die "native addon not built (npm rebuild)"
[[ -f "$ROOT/dist/test/bench/report.js" ]] || die "not built (npm run build)"

# --- addresses from lab/lab.json -------------------------------------------------------------
# shellcheck disable=SC2016 # the JS is single-quoted on purpose
eval "$(node -e '
  const l = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const q = (s) => JSON.stringify(String(s));
  console.log(`IN_PREFIX=${q(l.inside.prefix)} GW=${q(l.inside.gateway)} BR=${q(l.inside.bridge)}`);
  console.log(`P1=${q(l.inside.hosts.p1)} OUT_PREFIX=${q(l.outside.prefix)}`);
  console.log(`OUTIF=${q(l.outside.natInterface)} OUT_ADDR=${q(l.outside.natInterfaceAddress)}`);
  console.log(`NAT_ADDR=${q(l.outside.natAddress)} INET=${q(l.outside.inet[0])}`);
  console.log(`TUN=${q(l.daemon.tun)} METRICS=${q(l.daemon.metrics)}`);
' "$ROOT/lab/lab.json")"
IN_LEN="${IN_PREFIX#*/}"
OUT_LEN="${OUT_PREFIX#*/}"

NAME="tnb-$$"
NS_P1="$NAME-p1"
NS_NAT="$NAME-nat"
NS_INET="$NAME-inet"
TMP="$(mktemp -d /tmp/tunnat-bench.XXXXXX)"
DAEMON_PID=""
BG_PIDS=()
RR_PORT=9001
UDP_PORT=9000
# The full-table phase: source ports SPORT0.. times destination ports DPORT0.. (dropped by inet).
SPORT0=20000
NSPORTS=1000
DPORT0=30000

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
  fi
  for p in "${BG_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for ns in "$NS_P1" "$NS_NAT" "$NS_INET"; do
    if ip netns list | grep -qw "$ns"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do
        if [[ "$p" != "$$" ]]; then kill -KILL "$p" 2>/dev/null || true; fi
      done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  if [[ "$rc" != 0 && -s "${RESULTS:-}" ]]; then
    cp "$RESULTS" "$OUT.partial.jsonl" 2>/dev/null &&
      echo "bench: failed; the records so far are in $OUT.partial.jsonl" >&2
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

# The load generators and servers (test/bench/natload.c), built for this run.
LOAD="$TMP/natload"
cc -O2 -Wall -o "$LOAD" "$ROOT/test/bench/natload.c" || die "cannot build natload.c"

# --- topology --------------------------------------------------------------------------------
for ns in "$NS_P1" "$NS_NAT" "$NS_INET"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "$NS_NAT" link add "$BR" type bridge
ip -n "$NS_NAT" addr add "$GW/$IN_LEN" dev "$BR"
ip -n "$NS_NAT" link set "$BR" up
ip -n "$NS_P1" link add eth0 type veth peer name in-p1 netns "$NS_NAT"
ip -n "$NS_NAT" link set in-p1 master "$BR" up
ip -n "$NS_P1" addr add "$P1/$IN_LEN" dev eth0
ip -n "$NS_P1" link set eth0 up
ip -n "$NS_P1" route add default via "$GW"
ip -n "$NS_INET" link add eth0 type veth peer name "$OUTIF" netns "$NS_NAT"
ip -n "$NS_NAT" addr add "$OUT_ADDR/$OUT_LEN" dev "$OUTIF"
ip -n "$NS_NAT" link set "$OUTIF" up
ip -n "$NS_INET" addr add "$INET/$OUT_LEN" dev eth0
ip -n "$NS_INET" link set eth0 up
in_ns "$NS_NAT" sysctl -q -w net.ipv4.ip_forward=1
in_ns "$NS_NAT" sysctl -q -w "net.ipv4.neigh.$OUTIF.proxy_delay=0"
# The kernel's unreplied-UDP lifetime is 30 s; tunnat's UDP timeout is 300 s. The same 300 s here,
# so the full-table phase keeps its flows in both modes.
in_ns "$NS_NAT" sysctl -q -w net.netfilter.nf_conntrack_udp_timeout=300 2>/dev/null || true
# New connections per second: more ephemeral ports and TIME_WAIT reuse on the client.
in_ns "$NS_P1" sysctl -q -w net.ipv4.ip_local_port_range="1024 65000"
in_ns "$NS_P1" sysctl -q -w net.ipv4.tcp_tw_reuse=1
# The full-table phase's datagrams end at inet without an answer (no ICMP port unreachable).
in_ns "$NS_INET" nft -f - <<EOF
table ip tnbfill {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport $DPORT0-65535 drop
  }
}
EOF

# Servers in inet for the whole run (bounded: the run cannot outlast them by design).
SERVER_SECS=$((ROUNDS * 3 * (SECS * 9 + 120) + 600))
in_ns "$NS_INET" iperf3 -s -B "$INET" >"$TMP/server.log" 2>&1 &
BG_PIDS+=($!)
in_ns "$NS_INET" "$LOAD" rr-server "$RR_PORT" "$SERVER_SECS" "$(nproc)" >/dev/null &
RR_PID=$!
BG_PIDS+=("$RR_PID")
for p in "${BG_PIDS[@]}"; do disown "$p"; done # no job-control notice when cleanup kills them

# --- modes -----------------------------------------------------------------------------------
kernel_on() {
  ip -n "$NS_NAT" addr add "$NAT_ADDR/32" dev "$OUTIF"
  in_ns "$NS_NAT" nft -f - <<EOF
table ip tnbench {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "$OUTIF" ip saddr $IN_PREFIX snat to $NAT_ADDR
  }
}
EOF
}
kernel_off() {
  in_ns "$NS_NAT" nft delete table ip tnbench
  ip -n "$NS_NAT" addr del "$NAT_ADDR/32" dev "$OUTIF"
  ct_flush
}
# Entries of one block (the kernel NAT's bindings, the full-table phase's flows, connections in
# TIME_WAIT) must not linger into the next: empty the nat namespace's connection tracking table.
ct_flush() { in_ns "$NS_NAT" "$LOAD" ct-flush >/dev/null || die "cannot empty the nat namespace's conntrack table"; }
direct_on() { ip -n "$NS_INET" route add "$IN_PREFIX" via "$OUT_ADDR"; }
direct_off() {
  ip -n "$NS_INET" route del "$IN_PREFIX" via "$OUT_ADDR"
  ct_flush
}

# The daemon's flags. The table is sized for the full-table phase in every tunnat block, so the
# only difference that phase makes is the live flows.
MAX_FLOWS=262144
while [[ "$MAX_FLOWS" -lt $((FLOWS + FLOWS / 4 + 100000)) ]]; do MAX_FLOWS=$((MAX_FLOWS * 2)); done
TUNNAT_FLAGS=(--inside "$IN_PREFIX" --inside-interface "$BR" --nat-address "$NAT_ADDR"
  --outside-interface "$OUTIF" --tun "$TUN" --metrics "$METRICS" --control-socket "$TMP/ctl.sock"
  --max-flows "$MAX_FLOWS" --table-state-file none)
# --table-state-file none: every block starts with an empty table (by default the daemon saves
# its table at SIGTERM beside the control socket and the next block's daemon would restore it).
[[ -z "$QUEUES" ]] || TUNNAT_FLAGS+=(--queues "$QUEUES")

tunnat_on() {
  # ip netns exec execs node, so $! is the daemon's own pid.
  # shellcheck disable=SC2086
  ip netns exec "$NS_NAT" "$NODE" $NODE_ARGS "$ROOT/bin/tunnat.js" run "${TUNNAT_FLAGS[@]}" \
    --log-level warn $DAEMON_ARGS >>"$TMP/daemon.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 100); do
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    if in_ns "$NS_NAT" curl -sf -m 1 -o /dev/null "http://$METRICS/healthz"; then
      [ "$NO_GUARD" = 1 ] && guard_off
      daemon_nice
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$TMP/daemon.log" >&2
  die "tunnat did not become healthy in 10 s"
}
# BENCH_DAEMON_NICE=N: renice every thread of the daemon (as `Nice=N` in its unit would).
daemon_nice() {
  [[ -n "$DAEMON_NICE" ]] || return 0
  local tid
  for tid in /proc/"$DAEMON_PID"/task/*; do renice -n "$DAEMON_NICE" -p "${tid##*/}" >/dev/null; done
}
# BENCH_NO_GUARD=1: empty the guard's forward chain (what the filter costs; never in production).
guard_off() {
  local t
  t="$(in_ns "$NS_NAT" nft list tables | awk '$3 ~ /^tunnat_/ { print $3; exit }')"
  [ -n "$t" ] || die "no guard table to empty"
  in_ns "$NS_NAT" nft flush chain ip "$t" forward
}
tunnat_off() {
  # What the daemon dropped during the block, by reason (a figure that looks wrong often has one).
  in_ns "$NS_NAT" "$NODE" "$ROOT/bin/tunnat.js" stats --json --socket "$TMP/ctl.sock" 2>/dev/null |
    node -e '
      const s = JSON.parse(require("fs").readFileSync(0, "utf8"));
      const d = Object.entries(s.drops ?? {}).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
      console.log(`    tunnat drops in this block: ${d.length ? d.join(", ") : "none"}; TUN: ${JSON.stringify(s.tun ?? {})}`);
    ' || true
  kill -TERM "$DAEMON_PID"
  for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -KILL "$DAEMON_PID"
    die "tunnat did not stop within 10 s after SIGTERM"
  fi
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
  # The guard outlives the daemon (fail closed); the kernel's round needs the gateway open.
  # shellcheck disable=SC2086
  ip netns exec "$NS_NAT" "$NODE" "$ROOT/bin/tunnat.js" down "${TUNNAT_FLAGS[@]}" $DAEMON_ARGS \
    >>"$TMP/daemon.log" 2>&1 || die "tunnat down failed (see $TMP/daemon.log)"
  ct_flush
}

# --- samples ---------------------------------------------------------------------------------
# One sample as JSON: the host's /proc/stat "cpu" line (jiffies), the daemon's utime+stime, the
# TUN's tx_dropped (packets the kernel dropped because the daemon did not read them in time),
# the server namespace's UDP counters (/proc/net/snmp) and the time.
sample() {
  local stat d=0 tund=0 udp srv c
  stat="$(awk '/^cpu / { $1 = ""; gsub(/^ /, ""); gsub(/ /, ","); print; exit }' /proc/stat)"
  if [[ -n "$DAEMON_PID" ]]; then
    d="$(awk '{ print $14 + $15 }' "/proc/$DAEMON_PID/stat" 2>/dev/null || echo 0)"
    tund="$(in_ns "$NS_NAT" cat "/sys/class/net/$TUN/statistics/tx_dropped" 2>/dev/null || echo 0)"
  fi
  srv="$(for c in $(pgrep -P "$RR_PID"); do cat "/proc/$c/stat" 2>/dev/null; done | awk '{ s += $14 + $15 } END { print s + 0 }')"
  udp="$(in_ns "$NS_INET" awk '/^Udp:/ { if (h) { print "{\"inDatagrams\":" $2 ",\"noPorts\":" $3 ",\"inErrors\":" $4 ",\"rcvbufErrors\":" $6 "}"; exit } h = 1 }' /proc/net/snmp)"
  printf '{"t":%s,"cpu":[%s],"daemonTicks":%s,"serverTicks":%s,"tunDropped":%s,"udp":%s}' \
    "$(date +%s.%N)" "$stat" "$d" "$srv" "$tund" "$udp"
}

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
# record MODE ROUND TEST BEFORE AFTER TOOL-JSON [EXTRA-JSON]
record() {
  local extra="${7:-}"
  [[ -n "$extra" ]] || extra='{}'
  printf '{"mode":"%s","round":%s,"test":"%s","before":%s,"after":%s,"tool":%s,"extra":%s}\n' \
    "$1" "$2" "$3" "$4" "$5" "$6" "$extra" >>"$RESULTS"
}

daemon_rss_kb() {
  if [[ -n "$DAEMON_PID" ]]; then awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status"; else echo 0; fi
}

# --- profiles (--profile) --------------------------------------------------------------------
# prof_begin MODE ROUND TEST starts perf on every CPU; prof_end stops it and writes the summary.
PERF_PID=""
PERF_NAME=""
prof_begin() {
  [[ -n "$PROFILE" ]] || return 0
  PERF_NAME="$1-r$2-$3"
  perf record -a -g -F 497 -o "$TMP/$PERF_NAME.data" >/dev/null 2>"$TMP/perf.err" &
  PERF_PID=$!
  BG_PIDS+=("$PERF_PID")
  sleep 0.2
}
prof_end() {
  [[ -n "$PERF_PID" ]] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
  local data="$TMP/$PERF_NAME.data" txt="$PROFILE/$PERF_NAME.txt"
  {
    echo "# $PERF_NAME: perf record -a -g -F 497 during the test; shares of all samples of all CPUs"
    echo "# (swapper = idle). The daemon's threads: $(daemon_comms)"
    echo "## by thread (comm)"
    perf_top "$data" 25 --sort comm
    echo "## by thread and object (dso)"
    perf_top "$data" 30 --sort comm,dso
    echo "## the daemon's threads: hottest symbols"
    perf_top "$data" 40 --comms "$(daemon_comms)" --sort sym
    echo "## every CPU: hottest symbols"
    perf_top "$data" 40 --sort comm,sym
  } >"$txt"
  rm -f "$data"
}
# perf_top DATA LINES REPORT-ARGS...: a flat report's first lines (no call graphs, no comments).
perf_top() {
  local data="$1" lines="$2"
  shift 2
  perf report -i "$data" --stdio --no-children -g none --percent-limit 0.5 "$@" 2>/dev/null |
    awk -v n="$lines" 'NF && !/^#/ && c < n { print; c++ }' || true
}
# The daemon's thread names (comm): node's main thread and the I/O threads tunnat-q<N>.
daemon_comms() {
  if [[ -n "$DAEMON_PID" ]]; then
    cat /proc/"$DAEMON_PID"/task/*/comm 2>/dev/null | sort -u | paste -sd, -
  else
    echo node
  fi
}

# --- tests -----------------------------------------------------------------------------------
# Each prints one line for people and appends one record.
t_ping() {
  local mode="$1" r="$2" n=$((SECS * 25)) times b a
  b="$(sample)"
  times="$(in_ns "$NS_P1" ping -n -c "$n" -i 0.02 -W 1 -w $((SECS + 5)) "$INET" |
    sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | paste -sd, -)"
  a="$(sample)"
  record "$mode" "$r" ping "$b" "$a" "{\"sent\":$n,\"rttMs\":[${times}]}"
  echo "    ping: $(echo "$times" | tr ',' '\n' | grep -c .)/$n replies"
}

t_rr() { # TEST-NAME
  local mode="$1" r="$2" name="$3" b a out
  prof_begin "$mode" "$r" "$name"
  b="$(sample)"
  out="$(timeout -k 5 $((SECS + 20)) ip netns exec "$NS_P1" "$LOAD" rr-client "$INET" "$RR_PORT" "$SECS")"
  a="$(sample)"
  prof_end
  record "$mode" "$r" "$name" "$b" "$a" "$out" "{\"rssKb\":$(daemon_rss_kb)}"
  echo "    $name: $out"
}

t_crr() {
  local mode="$1" r="$2" b a i outs=() pids=() clients=2 inflight=16
  prof_begin "$mode" "$r" crr
  b="$(sample)"
  for i in $(seq "$clients"); do
    timeout -k 5 $((SECS + 20)) ip netns exec "$NS_P1" "$LOAD" crr-client "$INET" "$RR_PORT" "$SECS" "$inflight" \
      >"$TMP/crr-$i.json" &
    pids+=($!)
  done
  wait "${pids[@]}"
  a="$(sample)"
  prof_end
  for i in $(seq "$clients"); do outs+=("$(cat "$TMP/crr-$i.json")"); done
  record "$mode" "$r" crr "$b" "$a" "[$(IFS=,; echo "${outs[*]}")]"
  echo "    crr: ${outs[*]}"
}

t_tcp() { # STREAMS TEST-NAME
  local mode="$1" r="$2" streams="$3" name="$4" b a json="$TMP/iperf.json" sum
  prof_begin "$mode" "$r" "$name"
  b="$(sample)"
  timeout -k 5 $((SECS + 20)) ip netns exec "$NS_P1" \
    iperf3 -c "$INET" -t "$SECS" -P "$streams" -J >"$json" || {
    echo "bench: iperf3 failed:" >&2
    head -c 2000 "$json" >&2
    return 1
  }
  a="$(sample)"
  prof_end
  # The fields the report uses, from iperf3's JSON (bytes and CPU of both ends).
  sum="$(node -e '
    const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    if (j.error) { console.error(j.error); process.exit(1); }
    const e = j.end;
    console.log(JSON.stringify({ streams: Number(process.argv[2]), bytes: e.sum_received.bytes,
      seconds: e.sum_received.seconds, bitsPerSecond: e.sum_received.bits_per_second,
      retransmits: e.sum_sent.retransmits ?? 0,
      senderCpuPercent: e.cpu_utilization_percent.host_total,
      receiverCpuPercent: e.cpu_utilization_percent.remote_total }));
  ' "$json" "$streams")"
  record "$mode" "$r" "$name" "$b" "$a" "$sum" "{\"rssKb\":$(daemon_rss_kb)}"
  echo "    $name: $(echo "$sum" | node -e 'const s = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log((s.bitsPerSecond / 1e9).toFixed(2) + " Gbit/s, sender CPU " + s.senderCpuPercent.toFixed(0) + "%")')"
}

t_udp() { # SIZE TEST-NAME
  local mode="$1" r="$2" size="$3" name="$4" b a i sends=() pids=() sink
  in_ns "$NS_INET" "$LOAD" udp-sink "$INET" "$UDP_PORT" $((SECS + 3)) "$(nproc)" >"$TMP/sink.json" &
  sink=$!
  sleep 0.3
  prof_begin "$mode" "$r" "$name"
  b="$(sample)"
  for i in $(seq "$UDP_SENDERS"); do
    timeout -k 5 $((SECS + 20)) ip netns exec "$NS_P1" "$LOAD" udp-send "$INET" "$UDP_PORT" "$size" "$SECS" 100000000 \
      >"$TMP/send-$i.json" &
    pids+=($!)
  done
  wait "${pids[@]}"
  sleep 0.5 # what is still in flight arrives
  a="$(sample)"
  prof_end
  wait "$sink"
  for i in $(seq "$UDP_SENDERS"); do sends+=("$(cat "$TMP/send-$i.json")"); done
  record "$mode" "$r" "$name" "$b" "$a" "{\"size\":$size,\"senders\":[$(IFS=,; echo "${sends[*]}")],\"sink\":$(cat "$TMP/sink.json")}"
  echo "    $name: sent $(cat "$TMP"/send-*.json | node -e 'let n = 0; for (const l of require("fs").readFileSync(0, "utf8").trim().split("\n")) n += JSON.parse(l).packets; console.log(n)'), read $(cat "$TMP/sink.json")"
}

# Live flows in the table: the kernel's (nf_conntrack_count of the nat namespace) or tunnat's.
live_flows() {
  if [[ "$1" == tunnat ]]; then
    in_ns "$NS_NAT" "$NODE" "$ROOT/bin/tunnat.js" stats --json --socket "$TMP/ctl.sock" |
      node -e 'console.log(JSON.parse(require("fs").readFileSync(0, "utf8")).table?.flows ?? 0)'
  else
    in_ns "$NS_NAT" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0
  fi
}

# Fill the table with TARGET live UDP flows (NSPORTS source ports x the destination ports needed),
# paced; passes again over the same flows (refreshing them, adding those lost) while any are
# missing (less than 98% there), at half the pace after such a pass (not below 25,000/s), up to 6 passes of at most 60 s each.
# The kernel's table is capped by nf_conntrack_max (a host-wide setting this bench does not
# change): its target is what fits.
fill() {
  local mode="$1" target="$FLOWS" max ndp pass out live=0 base t0 pps="$FILL_PPS"
  base="$(live_flows "$mode")"
  if [[ "$mode" == kernel ]]; then
    max="$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo 262144)"
    [[ "$target" -le $((max - base - 16384)) ]] || target=$((max - base - 16384))
  fi
  [[ "$target" -ge "$NSPORTS" ]] || die "no room for a full table in the $mode mode ($base flows already)"
  ndp=$(((target + NSPORTS - 1) / NSPORTS))
  t0="$(date +%s%N)"
  for pass in 1 2 3 4 5 6; do
    out="$(timeout -k 5 120 ip netns exec "$NS_P1" "$LOAD" flow-fill "$P1" "$INET" "$SPORT0" "$NSPORTS" "$DPORT0" "$ndp" "$pps" 60)"
    sleep 0.5
    live="$(live_flows "$mode")"
    echo "    fill pass $pass at $pps packets/s: $out; $live live flows ($base before)"
    [[ $((live - base)) -lt $((target * 98 / 100)) ]] || break
    [[ "$pps" -le 25000 ]] || pps=$((pps / 2))
  done
  FILL_JSON="{\"target\":$target,\"requested\":$FLOWS,\"before\":$base,\"live\":$live,\"passes\":$pass,\"seconds\":$((($(date +%s%N) - t0) / 1000000))e-3}"
}

ping_check() {
  in_ns "$NS_P1" ping -c 1 -W 2 "$INET" >/dev/null || die "p1 cannot reach $INET in $1 mode"
}

# A mode's block of tests in round R.
block() {
  local mode="$1" r="$2" b a
  echo "  round $r, $mode:"
  "${mode}_on"
  ping_check "$mode"
  : >"$TMP/server.log"
  t_ping "$mode" "$r"
  t_rr "$mode" "$r" rr
  t_crr "$mode" "$r"
  t_tcp "$mode" "$r" 1 tcp1
  # The server must have seen the NAT address, not the private one (none in direct mode).
  if [[ "$mode" != direct ]]; then
    grep -q "$NAT_ADDR" "$TMP/server.log" || die "$mode mode: the server did not see $NAT_ADDR"
  fi
  t_tcp "$mode" "$r" 4 tcp4
  t_tcp "$mode" "$r" 16 tcp16
  t_udp "$mode" "$r" 64 udp64
  t_udp "$mode" "$r" 1400 udp1400
  if [[ "$FLOWS" -gt 0 && "$mode" != direct ]]; then
    b="$(sample)"
    fill "$mode"
    a="$(sample)"
    record "$mode" "$r" fill "$b" "$a" "$FILL_JSON" "{\"rssKb\":$(daemon_rss_kb)}"
    t_tcp "$mode" "$r" 1 tcp1-full
    t_rr "$mode" "$r" rr-full
  fi
  "${mode}_off"
}

CLK_TCK="$(getconf CLK_TCK)"
MODES=(kernel tunnat)
[[ "$DIRECT" != 1 ]] || MODES+=(direct)
echo "tunnat bench: $ROUNDS round(s), ${SECS} s per test, modes: ${MODES[*]}, full table: $FLOWS flows$([[ -z "$QUEUES" ]] || echo ", --queues $QUEUES")"
echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel: $(uname -r)   node: $(node --version)   iperf3: $(iperf3 --version | head -n1)"
echo "daemon: nice ${DAEMON_NICE:-0}$([[ -n "${BENCH_DAEMON_NICE+x}" ]] && echo " (BENCH_DAEMON_NICE)" || echo " (Nice= of systemd/tunnat.service)")"
echo "topology: p1 $P1 -> $BR [nat] $OUTIF -> inet $INET, NAT address $NAT_ADDR (ns $NAME-*)"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "load average before: $LOAD_BEFORE"
# What two wake-ups of an idle CPU cost here (natload.c "wake"): the least a userspace NAT adds
# to an idle ping, whatever its code does.
WAKE="$("$LOAD" wake 100 20)"
echo "idle wake-ups: $WAKE"
sleep 0.3

for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then order=("${MODES[@]}"); else order=(tunnat kernel); [[ "$DIRECT" != 1 ]] || order+=(direct); fi
  for m in "${order[@]}"; do block "$m" "$r"; done
done

LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
node "$ROOT/dist/test/bench/report.js" "$RESULTS" "$OUT" "$(printf '{"rounds":%s,"seconds":%s,"quick":%s,"flows":%s,"queues":%s,"clkTck":%s,"cpus":%s,"loadBefore":"%s","loadAfter":"%s","maxFlows":%s,"wake":%s,"daemonNice":%s}' \
  "$ROUNDS" "$SECS" "$([[ $QUICK == 1 ]] && echo true || echo false)" "$FLOWS" "${QUEUES:-null}" "$CLK_TCK" "$(nproc)" "$LOAD_BEFORE" "$LOAD_AFTER" "$MAX_FLOWS" "$WAKE" "${DAEMON_NICE:-0}")"
