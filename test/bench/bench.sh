#!/usr/bin/env bash
# `npm run bench`: iperf3 TCP throughput through tunnat versus Linux's own NAT (nftables snat),
# in one private topology and one run, alternating modes, several rounds (issue 3 item 6).
#
# Topology (addresses from lab/lab.json, the lab's only home; namespaces tnb-<pid>-*):
#   p1 (inside host) --veth-- br-in [nat] out0 --veth-- inet (iperf3 server)
# kernel mode: nft table ip tnbench, postrouting snat of the inside prefix to the NAT address out
#              of out0; the NAT address is an extra /32 on out0 (so ARP for it is answered).
# tunnat mode: that table and address removed; `tunnat run` in the nat namespace with the lab's
#              flags (it routes the NAT address into its TUN and proxy-ARPs for it on out0).
# Same NAT address, same veths and bridge, same iperf3 server; tunnat mode adds the TUN hop by design.
#
# Environment: BENCH_ROUNDS (3), BENCH_SECONDS (5), BENCH_STREAMS ("1 4"), BENCH_OUT (JSON file),
# BENCH_NODE_ARGS (extra node flags for the daemon, e.g. --cpu-prof --cpu-prof-dir=/tmp/x),
# BENCH_PERF (1: `perf stat` the daemon's syscalls during tunnat runs, if perf is installed),
# BENCH_DAEMON_ARGS (extra `tunnat run` flags, e.g. --no-offloads to measure without GSO),
# BENCH_NO_GUARD (1: empty the guard's nft forward chain in tunnat rounds, to measure its cost).
# Needs root, iproute2, nft, iperf3, curl, node.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ROUNDS="${BENCH_ROUNDS:-3}"
SECS="${BENCH_SECONDS:-5}"
STREAMS="${BENCH_STREAMS:-1 4}"
OUT="${BENCH_OUT:-}"
NODE_ARGS="${BENCH_NODE_ARGS:-}"
PERF="${BENCH_PERF:-0}"
NO_GUARD="${BENCH_NO_GUARD:-0}"
DAEMON_ARGS="${BENCH_DAEMON_ARGS:-}"
NODE="$(command -v node)"

die() { echo "bench: $*" >&2; exit 1; }
[[ "$(id -u)" == 0 ]] || die "needs root (ip netns)"
for t in ip nft iperf3 curl timeout node; do command -v "$t" >/dev/null || die "needs $t"; done
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "BENCH_ROUNDS must be 1..99"
[[ "$SECS" =~ ^[1-9][0-9]?$ ]] || die "BENCH_SECONDS must be 1..99"
[[ -f "$ROOT/build/Release/tunnat_tun.node" ]] || die "native addon not built (npm rebuild)"

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
SERVER_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
  fi
  if [[ -n "$SERVER_PID" ]]; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
  for ns in "$NS_P1" "$NS_NAT" "$NS_INET"; do
    if ip netns list | grep -qw "$ns"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do
        if [[ "$p" != "$$" ]]; then kill -KILL "$p" 2>/dev/null || true; fi
      done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: interrupted" >&2; exit 130' INT TERM

in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

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

in_ns "$NS_INET" iperf3 -s -B "$INET" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
disown "$SERVER_PID" # no job-control notice when cleanup kills it

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
  # Entries of the kernel NAT must not linger into the tunnat run.
  in_ns "$NS_NAT" sh -c 'command -v conntrack >/dev/null && conntrack -F >/dev/null 2>&1 || true'
}

host_cpu() { # "busy total" jiffies of all cores (busy = everything but idle and iowait)
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
busy_pct() { # busy% of all cores between two host_cpu samples
  echo "$1 $2" | awk '{ split($0, a, " "); printf "%.0f", ($3 - $1) / ($4 - $2) * 100 }'
}

daemon_cpu_ticks() { # "utime stime" of the daemon, in clock ticks
  awk '{ print $14, $15 }' "/proc/$DAEMON_PID/stat" 2>/dev/null || echo 0 0
}

tunnat_on() {
  # ip netns exec execs node, so $! is the daemon's own pid.
  # shellcheck disable=SC2086
  ip netns exec "$NS_NAT" "$NODE" $NODE_ARGS "$ROOT/bin/tunnat.js" run \
    --inside "$IN_PREFIX" --inside-interface "$BR" --nat-address "$NAT_ADDR" \
    --outside-interface "$OUTIF" --tun "$TUN" --metrics "$METRICS" \
    --control-socket "$TMP/ctl.sock" --log-level warn $DAEMON_ARGS >>"$TMP/daemon.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 100); do
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    if in_ns "$NS_NAT" curl -sf -m 1 -o /dev/null "http://$METRICS/healthz"; then
      [ "$NO_GUARD" = 1 ] && guard_off
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$TMP/daemon.log" >&2
  die "tunnat did not become healthy in 10 s"
}
# BENCH_NO_GUARD=1: empty the guard's forward chain (what the filter costs; never in production).
guard_off() {
  local t
  t="$(in_ns "$NS_NAT" nft list tables | awk '$3 ~ /^tunnat_/ { print $3; exit }')"
  [ -n "$t" ] || die "no guard table to empty"
  in_ns "$NS_NAT" nft flush chain ip "$t" forward
}
tunnat_off() {
  kill -TERM "$DAEMON_PID"
  for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -KILL "$DAEMON_PID"
    die "tunnat did not stop within 5 s after SIGTERM"
  fi
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
  # The guard outlives the daemon (fail closed); the kernel's round needs the gateway open.
  # shellcheck disable=SC2086
  ip netns exec "$NS_NAT" "$NODE" "$ROOT/bin/tunnat.js" down \
    --inside "$IN_PREFIX" --inside-interface "$BR" --nat-address "$NAT_ADDR" \
    --outside-interface "$OUTIF" --tun "$TUN" --metrics "$METRICS" \
    --control-socket "$TMP/ctl.sock" $DAEMON_ARGS >>"$TMP/daemon.log" 2>&1 ||
    die "tunnat down failed (see $TMP/daemon.log)"
}

# One iperf3 run; prints the receiver's bits/s.
iperf() {
  local streams="$1" json="$2"
  timeout -k 5 $((SECS + 20)) ip netns exec "$NS_P1" \
    iperf3 -c "$INET" -t "$SECS" -P "$streams" -J >"$json" || {
    echo "bench: iperf3 failed ($json):" >&2
    head -c 2000 "$json" >&2
    return 1
  }
  node -e '
    const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    if (j.error) { console.error(j.error); process.exit(1); }
    console.log(Math.round(j.end.sum_received.bits_per_second));
  ' "$json"
}

ping_check() {
  in_ns "$NS_P1" ping -c 1 -W 2 "$INET" >/dev/null || die "p1 cannot reach $INET in $1 mode"
}

RESULTS="$TMP/results.tsv" # mode streams round bps daemon_cpu
: >"$RESULTS"
CLK_TCK="$(getconf CLK_TCK)"

echo "tunnat bench: $ROUNDS round(s), ${SECS} s per run, streams: $STREAMS"
echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "kernel: $(uname -r)   node: $(node --version)   iperf3: $(iperf3 --version | head -n1)"
echo "topology: p1 $P1 -> $BR [nat] $OUTIF -> inet $INET, NAT address $NAT_ADDR (ns $NAME-*)"
sleep 0.3

for r in $(seq "$ROUNDS"); do
  for n in $STREAMS; do
    kernel_on
    ping_check kernel
    h0="$(host_cpu)"
    bps="$(iperf "$n" "$TMP/kernel-$n-$r.json")"
    host="$(busy_pct "$h0" "$(host_cpu)")"
    # The server must have seen the NAT address, not the private one.
    grep -q "$NAT_ADDR" "$TMP/server.log" || die "kernel mode: the server did not see $NAT_ADDR"
    printf 'kernel\t%s\t%s\t%s\t-\t%s\n' "$n" "$r" "$bps" "$host" >>"$RESULTS"
    printf '  round %s  kernel %s stream(s): %6.0f Mbit/s  (host CPU %s%% of %s cores)\n' \
      "$r" "$n" "$(echo "$bps / 1000000" | bc -l)" "$host" "$(nproc)"
    kernel_off
    : >"$TMP/server.log"

    tunnat_on
    ping_check tunnat
    c0="$(daemon_cpu_ticks)"
    h0="$(host_cpu)"
    perf_pid=""
    if [[ "$PERF" == 1 ]] && command -v perf >/dev/null; then
      perf stat -x, -o "$TMP/perf-$n-$r.txt" -p "$DAEMON_PID" \
        -e syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_epoll_pwait,task-clock \
        -- sleep "$SECS" 2>/dev/null &
      perf_pid=$!
    fi
    bps="$(iperf "$n" "$TMP/tunnat-$n-$r.json")"
    c1="$(daemon_cpu_ticks)"
    host="$(busy_pct "$h0" "$(host_cpu)")"
    read -r u0 s0 <<<"$c0"
    read -r u1 s1 <<<"$c1"
    cpu="$(echo "($u1 + $s1 - $u0 - $s0) / $CLK_TCK / $SECS * 100" | bc -l)"
    ucpu="$(echo "($u1 - $u0) / $CLK_TCK / $SECS * 100" | bc -l)"
    [[ -z "$perf_pid" ]] || wait "$perf_pid" || true
    in_ns "$NS_NAT" ip -s link show "$TUN" >"$TMP/tun-$n-$r.txt" 2>&1 || true
    grep -q "$NAT_ADDR" "$TMP/server.log" || die "tunnat mode: the server did not see $NAT_ADDR"
    tunnat_off
    : >"$TMP/server.log"
    printf 'tunnat\t%s\t%s\t%s\t%.0f\t%s\n' "$n" "$r" "$bps" "$cpu" "$host" >>"$RESULTS"
    printf '  round %s  tunnat %s stream(s): %6.0f Mbit/s  (host CPU %s%% of %s cores; daemon %.0f%% of one, %.0f%% user)\n' \
      "$r" "$n" "$(echo "$bps / 1000000" | bc -l)" "$host" "$(nproc)" "$cpu" "$ucpu"
    # Bytes per packet through the TUN: far above the MTU means GSO super-packets. TX = what the
    # daemon read, RX = what it wrote back.
    awk '/RX:|TX:/ { d = $1; getline; printf "    %s %s %d packets, %.0f bytes/packet, %d dropped\n", "'"$TUN"'", d, $2, ($2 ? $1 / $2 : 0), $4 }' \
      "$TMP/tun-$n-$r.txt"
    if [[ -n "$perf_pid" ]]; then
      echo "    perf stat of the daemon during the run (reads include one EAGAIN per batch):"
      grep -v '^#' "$TMP/perf-$n-$r.txt" | grep . | awk -F, '{ printf "      %-34s %s\n", $3, $1 }'
    fi
  done
done

# --- summary ---------------------------------------------------------------------------------
node - "$RESULTS" "$OUT" "$ROUNDS" "$SECS" <<'EOF'
const fs = require("fs");
const os = require("os");
const [file, out, rounds, secs] = process.argv.slice(2);
const rows = fs.readFileSync(file, "utf8").trim().split("\n").map((l) => l.split("\t"));
const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const groups = new Map();
for (const [mode, streams, , bps, cpu, host] of rows) {
  const k = `${mode}\t${streams}`;
  if (!groups.has(k)) groups.set(k, { mode, streams: Number(streams), bps: [], cpu: [], host: [] });
  groups.get(k).bps.push(Number(bps));
  groups.get(k).host.push(Number(host));
  if (cpu !== "-") groups.get(k).cpu.push(Number(cpu));
}
const gbit = (b) => (b / 1e9).toFixed(2);
const R = Number(rounds);
const head = ["mode  ", "streams", ...Array.from({ length: R }, (_, i) => `r${i + 1} Gbit/s`), "median"];
console.log(`\n${head.join("  ")}`);
const result = { rounds: R, seconds: Number(secs), cpu: { count: os.cpus().length,
  model: os.cpus()[0]?.model ?? "?" }, kernel: os.release(), node: process.version, runs: [], ratios: {} };
for (const g of groups.values()) {
  g.median = median(g.bps);
  const cells = [g.mode.padEnd(6), String(g.streams).padStart(7),
    ...g.bps.map((b) => gbit(b).padStart(11)), gbit(g.median).padStart(6)];
  console.log(cells.join("  ") + `   host CPU ${median(g.host)}%` +
    (g.cpu.length ? `, daemon ${median(g.cpu)}% of one core` : ""));
  result.runs.push({ mode: g.mode, streams: g.streams, bitsPerSecond: g.bps, median: g.median,
    hostCpuPercent: g.host, daemonCpuPercent: g.cpu.length ? g.cpu : undefined });
}
console.log("");
const streamsSet = [...new Set([...groups.values()].map((g) => g.streams))];
for (const s of streamsSet) {
  const k = groups.get(`kernel\t${s}`), t = groups.get(`tunnat\t${s}`);
  if (!k || !t) continue;
  const ratio = t.median / k.median;
  // Each round runs the two modes back to back, so a round's own ratio sees the same background
  // load on a shared machine; the median of those is steadier than the ratio of the medians.
  const paired = median(t.bps.map((b, i) => b / k.bps[i]));
  result.ratios[String(s)] = ratio;
  result.pairedRatios = { ...(result.pairedRatios ?? {}), [String(s)]: paired };
  const target = s === 1 ? 0.6 : 0.35;
  console.log(`ratio tunnat/kernel, ${s} stream(s): ${ratio.toFixed(2)}x of the medians, ` +
    `${paired.toFixed(2)}x median of per-round ratios  (target >= ${target}x)`);
}
if (out) {
  fs.writeFileSync(out, JSON.stringify(result, null, 2) + "\n");
  console.log(`\nwrote ${out}`);
}
EOF
