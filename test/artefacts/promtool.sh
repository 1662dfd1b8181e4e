#!/usr/bin/env bash
# promtool checks of tunnat's Prometheus artefacts (needs the Debian package `prometheus`, which
# ships promtool, and a build: npm run build):
#   - `promtool check metrics` on a real exposition rendered by src/control/metrics.ts over a
#     translator that has carried TCP, UDP and ICMP traffic and counted drops (all series present);
#   - `promtool check rules` on monitoring/alerts.yml, and `promtool test rules` on its unit tests
#     (monitoring/alerts.test.yml);
#   - `promtool check config` on monitoring/prometheus.yml.
# Sends no packet anywhere: the translator runs in memory.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v promtool >/dev/null; then
  echo "promtool missing: apt-get install prometheus" >&2
  exit 1
fi
[ -f dist/src/control/metrics.js ] || npx tsc -p .
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

node --input-type=module - >"$tmp/metrics.txt" <<'JS'
import { ManualClock } from "./dist/src/base/clock.js";
import { createMetrics } from "./dist/src/control/metrics.js";
import { readTunCounters } from "./dist/src/control/tun-stats.js";
import { LoopStats } from "./dist/src/datapath/loop.js";
import { defaultNatConfig } from "./dist/src/nat/config.js";
import { NatStats } from "./dist/src/nat/stats.js";
import { Translator } from "./dist/src/nat/translate.js";
import { FlowTable } from "./dist/src/conntrack/table.js";
import { build, ip } from "./dist/test/helpers/packet.js";

const stats = new NatStats();
const cfg = defaultNatConfig({
  natAddresses: [ip("203.0.113.1"), ip("203.0.113.5")],
  inside: [{ addr: ip("10.0.0.0"), len: 8 }],
  maxFlows: 4096,
});
const tr = new Translator(cfg, new FlowTable(cfg, stats), new ManualClock(), stats);
const slot = new Uint8Array(65600);
const send = (s) => {
  const b = build(s);
  slot.set(b, 0);
  tr.process(slot, 0, b.length);
};
for (let h = 2; h < 40; h++) {
  send({ src: `10.0.1.${h}`, dst: "203.0.113.10", proto: "udp", sport: 4000 + h, dport: 53, payload: "q" });
  send({ src: `10.0.1.${h}`, dst: "203.0.113.10", proto: "tcp", sport: 5000 + h, dport: 80, flags: 2 });
  send({ src: `10.0.1.${h}`, dst: "203.0.113.10", proto: "icmp", icmpId: h });
}
send({ src: "203.0.113.10", dst: "203.0.113.1", proto: "udp", sport: 1, dport: 1 });
const ls = new LoopStats();
ls.batches = 3;
ls.packets = 115;
ls.batchSizeCounts[0] = 1;
ls.batchSizeCounts[7] = 2;
// The loopback device's real kernel counters stand in for the TUN's (same sysfs files).
const m = createMetrics(
  { stats, table: tr.table, loopStats: ls, tunCounters: () => readTunCounters("lo") },
  { topHosts: 5 },
);
process.stdout.write(await m.registry.metrics());
m.stop();
JS

lines=$(grep -c '^tunnat_' "$tmp/metrics.txt")
echo "rendered $lines tunnat_ samples"
[ "$lines" -gt 50 ] || { echo "too few samples rendered" >&2; exit 1; }
# promtool prints lint problems and exits non-zero on any.
promtool check metrics <"$tmp/metrics.txt"
echo "promtool check metrics: ok"
promtool check rules monitoring/alerts.yml
promtool test rules monitoring/alerts.test.yml
(cd monitoring && promtool check config prometheus.yml)
echo "promtool checks passed"
