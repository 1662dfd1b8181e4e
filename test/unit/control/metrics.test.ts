import { readFileSync } from "node:fs";
import { join } from "node:path";
import t from "tap";
import { parse as parseYaml } from "yaml";
import { ManualClock } from "../../../src/base/clock.js";
import type { FlowHooks } from "../../../src/conntrack/table.js";
import { startHttpServer } from "../../../src/control/http.js";
import { createMetrics } from "../../../src/control/metrics.js";
import { PeakRate } from "../../../src/control/peak.js";
import { readinessCheck } from "../../../src/control/readiness.js";
import { TopHosts } from "../../../src/control/top-hosts.js";
import { readTunCounters } from "../../../src/control/tun-stats.js";
import { LoopStats } from "../../../src/datapath/loop.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { DropReason, NatStats } from "../../../src/nat/stats.js";
import { newTranslator } from "../../helpers/nat.js";
import { build, ip } from "../../helpers/packet.js";

const NAT = "203.0.113.1";
const SRV = "203.0.113.10";

function rig(over: Parameters<typeof defaultNatConfig>[0] = {}, hooks?: FlowHooks) {
  const clock = new ManualClock();
  const stats = new NatStats();
  const cfg = defaultNatConfig({
    natAddresses: [ip(NAT)],
    inside: [{ addr: ip("10.0.0.0"), len: 8 }],
    maxFlows: 4096,
    hashSeed: 7,
    ...over,
  });
  const tr = newTranslator(cfg, clock, stats, hooks);
  const slot = new Uint8Array(65600);
  const send = (spec: Parameters<typeof build>[0]) => {
    const b = build(spec);
    slot.set(b, 0);
    return tr.process(slot, 0, b.length);
  };
  const loopStats = new LoopStats();
  return { clock, stats, tr, send, loopStats, table: tr.table };
}

/** name{labels} value -> value, from Prometheus text. */
function series(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || line.trim() === "") continue;
    const i = line.lastIndexOf(" ");
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

t.test("the NAT Gateway counters are read from the core's stats at scrape time", async (t) => {
  const r = rig();
  const m = createMetrics(
    { stats: r.stats, table: r.table, loopStats: r.loopStats },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  for (let i = 0; i < 5; i++)
    r.send({
      src: "10.0.1.2",
      dst: SRV,
      proto: "udp",
      sport: 4000 + i,
      dport: 53,
      payload: "x".repeat(100),
    });
  // UDP 100-byte payload: 20 IP + 8 UDP + 100 = 128 IP bytes each.
  r.stats.drops[DropReason.Unsolicited] = 3;
  let s = series(await m.registry.metrics());
  t.equal(s.get("tunnat_bytes_in_from_source_total"), 5 * 128);
  t.equal(s.get("tunnat_bytes_out_to_destination_total"), 5 * 128);
  t.equal(s.get("tunnat_packets_out_to_destination_total"), 5);
  t.equal(s.get('tunnat_flows{protocol="udp"}'), 5);
  t.equal(s.get('tunnat_flows{protocol="tcp"}'), 0);
  t.equal(s.get('tunnat_packets_dropped_total{reason="unsolicited"}'), 3);
  t.equal(s.get('tunnat_nat_ports_used{nat_address="203.0.113.1",protocol="udp"}'), 5);
  t.equal(s.get("tunnat_flows_capacity"), 4096);
  // A second scrape sees new traffic: nothing was cached at registration.
  r.send({
    src: "10.0.1.2",
    dst: SRV,
    proto: "udp",
    sport: 4000,
    dport: 53,
    payload: "x".repeat(100),
  });
  s = series(await m.registry.metrics());
  t.equal(s.get("tunnat_bytes_out_to_destination_total"), 6 * 128);
  t.equal(s.get('tunnat_host_bytes_total{host="10.0.1.2",direction="out"}'), 6 * 128);
  t.equal(s.get('tunnat_host_packets_total{host="10.0.1.2",direction="out"}'), 6);
});

t.test("TCP attempts, establishments and active connections follow the handshake", async (t) => {
  const r = rig();
  const m = createMetrics(
    { stats: r.stats, table: r.table, loopStats: r.loopStats },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  r.send({ src: "10.0.1.2", dst: SRV, proto: "tcp", sport: 5555, dport: 80, flags: 0x02 });
  const port = r.table.oport(0);
  r.send({ src: SRV, dst: NAT, proto: "tcp", sport: 80, dport: port, flags: 0x12 });
  const s = series(await m.registry.metrics());
  t.equal(s.get("tunnat_connection_attempts_total"), 1);
  t.equal(s.get("tunnat_connection_established_total"), 1);
  t.equal(s.get("tunnat_active_connections"), 1);
});

t.test("the batch-size histogram and time per batch mirror LoopStats", async (t) => {
  const r = rig();
  const m = createMetrics(
    { stats: r.stats, table: r.table, loopStats: r.loopStats },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  const ls = r.loopStats;
  ls.batchSizeCounts[0] = 4; // batches of 1
  ls.batchSizeCounts[3] = 2; // batches of 5..8
  ls.batchSizeCounts[ls.batchSizeCounts.length - 1] = 1; // > 256
  ls.batches = 7;
  ls.packets = 4 + 14 + 300;
  ls.batchSeconds = 0.07;
  const s = series(await m.registry.metrics());
  t.equal(s.get('tunnat_datapath_batch_size_bucket{le="1"}'), 4);
  t.equal(s.get('tunnat_datapath_batch_size_bucket{le="4"}'), 4);
  t.equal(s.get('tunnat_datapath_batch_size_bucket{le="8"}'), 6);
  t.equal(s.get('tunnat_datapath_batch_size_bucket{le="256"}'), 6);
  t.equal(s.get('tunnat_datapath_batch_size_bucket{le="+Inf"}'), 7);
  t.equal(s.get("tunnat_datapath_batch_size_count"), 7);
  t.equal(s.get("tunnat_datapath_batch_size_sum"), 318);
  t.equal(s.get("tunnat_datapath_batch_duration_seconds_count"), 7);
  t.equal(s.get("tunnat_datapath_batch_duration_seconds_sum"), 0.07);
  const text = await m.registry.metrics();
  t.match(text, /# TYPE tunnat_datapath_batch_size histogram/);
  t.match(text, /# TYPE tunnat_bytes_out_to_destination_total counter/);
});

t.test("per-host counters do not go down when a host's flows expire", async (t) => {
  const r = rig();
  const m = createMetrics(
    { stats: r.stats, table: r.table, loopStats: r.loopStats },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  r.send({
    src: "10.0.1.2",
    dst: SRV,
    proto: "udp",
    sport: 4000,
    dport: 53,
    payload: "x".repeat(100),
  });
  r.send({
    src: "10.0.1.2",
    dst: SRV,
    proto: "udp",
    sport: 4001,
    dport: 53,
    payload: "x".repeat(100),
  });
  const key = 'tunnat_host_bytes_total{host="10.0.1.2",direction="out"}';
  t.equal(series(await m.registry.metrics()).get(key), 256);
  r.clock.advanceSeconds(200);
  // A third flow keeps the host in the table while the first two expire.
  r.send({
    src: "10.0.1.2",
    dst: SRV,
    proto: "udp",
    sport: 4002,
    dport: 53,
    payload: "x".repeat(100),
  });
  r.clock.advanceSeconds(150);
  r.tr.sweep(4096);
  t.equal(r.table.active, 1, "the first two flows expired");
  t.equal(series(await m.registry.metrics()).get(key), 384);
  // The host's last flow expires: its traffic moves to "other", which must not lose any.
  r.clock.advanceSeconds(400);
  r.tr.sweep(4096);
  t.equal(r.table.active, 0);
  const s = series(await m.registry.metrics());
  t.equal(s.get(key), undefined, "the departed host has no series");
  t.equal(
    s.get('tunnat_host_bytes_total{host="other",direction="out"}'),
    0,
    "other only grows by traffic not already counted in a host series",
  );
});

t.test(
  "a thousand inside hosts give at most N+1 host series, and other is monotonic",
  async (t) => {
    // A fake source: 1000 hosts with totals we control.
    const bytes = new Map<number, number>();
    const departed = {
      departedBytesOut: 0,
      departedBytesIn: 0,
      departedPktsOut: 0,
      departedPktsIn: 0,
    };
    const src = {
      hostTraffic(fn: (a: number, po: number, bo: number, pi: number, bi: number) => void) {
        for (const [a, b] of bytes) fn(a, 1, b, 0, 0);
      },
      hosts: departed,
    };
    const top = new TopHosts(src, 20);
    for (let h = 1; h <= 1000; h++) bytes.set(0x0a000000 + h, h);
    let prevOther = 0;
    let total = 0;
    for (let round = 0; round < 30; round++) {
      const out = top.collect();
      t.ok(out.length <= 21, "bounded");
      const other = out.find((x) => x.host === "other")?.bytesOut ?? -1;
      t.ok(other >= prevOther, `other never decreases (round ${round}: ${prevOther} -> ${other})`);
      prevOther = other;
      total = out.reduce((a, x) => a + x.bytesOut, 0);
      // Shuffle the ranking: a low host shoots up, a top host leaves the table.
      bytes.set(0x0a000000 + 1 + round * 7, (bytes.get(0x0a000000 + 1 + round * 7) ?? 0) + 5000);
      const leaving = [...bytes.entries()].sort((a, b) => b[1] - a[1])[0];
      if (leaving && round % 3 === 0) {
        bytes.delete(leaving[0]);
        departed.departedBytesOut += leaving[1];
      }
    }
    const all = [...bytes.values()].reduce((a, b) => a + b, 0) + departed.departedBytesOut;
    t.ok(total >= all - 30 * 5000, "series sum tracks the real total");
    t.equal(top.collect().length, 21);
  },
);

t.test("peak rate is the highest 10-second average over the last minute", async (t) => {
  const p = new PeakRate();
  t.same(p.peak(), [0, 0], "no samples, no peak");
  let bytes = 0;
  let pkts = 0;
  // 100 s of samples: 1 kB/s, except 10..15 s at 100 kB/s (in the window until ~75 s).
  for (let s = 0; s <= 100; s++) {
    const rate = s > 10 && s <= 15 ? 100_000 : 1000;
    if (s > 0) {
      bytes += rate;
      pkts += rate / 100;
    }
    p.sample(s, bytes, pkts);
    if (s === 20) {
      const [b, k] = p.peak();
      // 5 s at 100 kB/s + 5 s at 1 kB/s over 10 s.
      t.equal(b, 50_500);
      t.equal(k, 505);
    }
  }
  t.same(p.peak(), [1000, 10], "the burst has left the one-minute window");
  const young = new PeakRate();
  young.sample(0, 0, 0);
  young.sample(1, 3000, 3);
  young.sample(2, 4000, 4);
  young.sample(3, 5000, 5);
  t.same(young.peak(), [5000 / 3, 5 / 3], "a daemon younger than 10 s shows its average so far");
});

t.test("every metric the Grafana dashboard and the alert rules use is exported", async (t) => {
  const r = rig();
  const m = createMetrics({
    stats: r.stats,
    table: r.table,
    loopStats: r.loopStats,
    // A real device's kernel counters stand where the TUN's are read (the loopback is always there).
    tunCounters: () => readTunCounters("lo"),
  });
  t.teardown(() => m.stop());
  r.send({ src: "10.0.1.2", dst: SRV, proto: "udp", sport: 4000, dport: 53 });
  const text = await m.registry.metrics();
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    const n = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line)?.[1];
    if (n && !line.startsWith("#")) names.add(n);
  }
  const root = process.cwd();
  const dash = JSON.parse(readFileSync(join(root, "monitoring", "grafana-dashboard.json"), "utf8"));
  const exprs: string[] = [];
  const walk = (o: unknown): void => {
    if (Array.isArray(o)) o.forEach(walk);
    else if (o && typeof o === "object")
      for (const [k, v] of Object.entries(o)) {
        if ((k === "expr" || k === "query") && typeof v === "string") exprs.push(v);
        else walk(v);
      }
  };
  walk(dash);
  t.ok(exprs.length >= 10, `the dashboard has queries (${exprs.length})`);
  const rules = parseYaml(readFileSync(join(root, "monitoring", "alerts.yml"), "utf8")) as {
    groups: { rules: { expr: string }[] }[];
  };
  const ruleExprs = rules.groups.flatMap((g) => g.rules.map((r) => r.expr));
  t.ok(ruleExprs.length >= 4, "the alert rules have expressions");
  exprs.push(...ruleExprs);
  const used = new Set<string>();
  for (const e of exprs)
    for (const n of e.match(/\b(tunnat_[a-z0-9_]+|nodejs_[a-z0-9_]+|process_[a-z0-9_]+)/g) ?? [])
      used.add(n);
  t.ok(used.size >= 10);
  for (const n of used) t.ok(names.has(n), `${n} is exported`);
});

t.test(
  "/readyz fails with the reason when the data path stops, while /healthz stays 200",
  async (t) => {
    const h = await startHttpServer({ host: "127.0.0.1", port: 0 });
    t.teardown(() => h.close());
    const loopStats = new LoopStats();
    const fake = {
      loop: { isRunning: true, loopStats },
      device: { closed: false },
    };
    h.setReadinessCheck(readinessCheck(fake, null, 200));
    const url = `http://127.0.0.1:${h.address.port}`;
    t.equal((await fetch(`${url}/readyz`)).status, 503, "not ready before setReady");
    h.setReady(true);
    t.equal((await fetch(`${url}/readyz`)).status, 200);
    // No batch and no tick for longer than the limit: stuck.
    await new Promise((r) => setTimeout(r, 300));
    let r = await fetch(`${url}/readyz`);
    t.equal(r.status, 503);
    t.match(await r.text(), /no batch or tick/);
    loopStats.sweeps++;
    t.equal((await fetch(`${url}/readyz`)).status, 200, "a tick makes it ready again");
    fake.device.closed = true;
    r = await fetch(`${url}/readyz`);
    t.equal(r.status, 503);
    t.match(await r.text(), /TUN device closed/);
    fake.device.closed = false;
    fake.loop.isRunning = false;
    t.match(await (await fetch(`${url}/readyz`)).text(), /data path not running/);
    t.equal((await fetch(`${url}/healthz`)).status, 200, "alive all along");
  },
);

t.test("--top-hosts bounds the per-host series; the rest is summed as other", async (t) => {
  const r = rig();
  const m = createMetrics(
    { stats: r.stats, table: r.table, loopStats: r.loopStats },
    { defaultMetrics: false, topHosts: 2 },
  );
  t.teardown(() => m.stop());
  // Five hosts; host i sends i+1 datagrams of the same size, so hosts .5 and .4 are the top two.
  for (let i = 0; i < 5; i++) {
    for (let k = 0; k <= i; k++) {
      r.send({ src: `10.0.1.${i + 1}`, dst: SRV, proto: "udp", sport: 5000 + k, dport: 53 });
    }
  }
  const s = series(await m.registry.metrics());
  const hosts = [...s.keys()]
    .filter((k) => k.startsWith("tunnat_host_packets_total{") && k.includes('direction="out"'))
    .map((k) => /host="([^"]+)"/.exec(k)?.[1]);
  t.same(hosts.sort(), ["10.0.1.4", "10.0.1.5", "other"]);
  t.equal(
    s.get('tunnat_host_packets_total{host="other",direction="out"}'),
    1 + 2 + 3,
    "the rest summed",
  );
  t.equal(s.get('tunnat_host_packets_total{host="10.0.1.5",direction="out"}'), 5);
});
