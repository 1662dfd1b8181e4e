/**
 * The guard's nft script, its rules and routes, and the parsers of `ip -j` / `nft -j` output
 * (src/control/guard.ts), plus the kernel half of readiness (src/control/readiness.ts), without a
 * kernel.
 */

import t from "tap";
import { ManualClock } from "../../../src/base/clock.js";
import {
  desiredGuard,
  GUARD_REASONS,
  type Guard,
  type GuardSpec,
  guardScript,
  PROHIBIT_METRIC,
  parseCounters,
  parseRoutes,
  parseRules,
  replaceScript,
  routeArgs,
  ruleArgs,
} from "../../../src/control/guard.js";
import { createMetrics } from "../../../src/control/metrics.js";
import {
  type KernelAnswers,
  KernelMonitor,
  kernelProblems,
  readinessCheck,
  tunTxDropped,
} from "../../../src/control/readiness.js";
import type { Runner } from "../../../src/control/runner.js";
import { LoopStats } from "../../../src/datapath/loop.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { parseCidr, parseIpv4 } from "../../../src/wire/addr.js";
import { newTranslator } from "../../helpers/nat.js";

const cidr = (s: string) => {
  const c = parseCidr(s);
  if (!c) throw new Error(s);
  return c;
};
const spec = (over: Partial<GuardSpec> = {}): GuardSpec => ({
  tun: "tunnat0",
  insideInterface: "in0",
  outsideInterface: "out0",
  inside: [cidr("10.0.1.0/24"), cidr("10.0.2.0/24")],
  natAddresses: [parseIpv4("203.0.113.1"), parseIpv4("203.0.113.3")],
  table: 4242,
  priority: 4242,
  ...over,
});

/** The chain's rules, one per line, without indentation. */
const chain = (script: string) =>
  script
    .slice(script.indexOf("chain forward"))
    .split("\n")
    .slice(2)
    .map((l) => l.trim())
    .filter((l) => l !== "" && l !== "}");

t.test(
  "two interfaces: TUN first, spoofed sources, intra-inside, routed-around, no TUN",
  async (t) => {
    const s = guardScript(spec());
    t.match(s, /^table ip tunnat_4242 \{/);
    t.match(
      s,
      /set inside \{[^}]*flags interval[^}]*elements = \{ 10\.0\.1\.0\/24, 10\.0\.2\.0\/24 \}/,
    );
    t.match(s, /set nat \{[^}]*elements = \{ 203\.0\.113\.1, 203\.0\.113\.3 \}/);
    for (const r of GUARD_REASONS)
      t.match(s, new RegExp(`counter ${r.name} \\{`), `counter ${r.name}`);
    t.match(s, /type filter hook forward priority filter; policy accept;/);
    t.same(chain(s), [
      'iifname "tunnat0" accept',
      'iifname "out0" ip saddr @inside counter name "spoofed_source" drop',
      'iifname "out0" ip saddr @nat counter name "spoofed_source" drop',
      'iifname "in0" ip saddr @nat counter name "spoofed_source" drop',
      'iifname "in0" ip saddr != @inside counter name "spoofed_source" drop',
      'iifname "in0" ip saddr @inside ip daddr @inside accept',
      'ip daddr @inside counter name "routed_inbound" drop',
      'iifname "in0" ip saddr @inside oifname != "tunnat0" counter name "no_tun" drop',
    ]);
  },
);

t.test(
  "single ENI: a foreign source is spoofed only when it is not on its way to the TUN",
  async (t) => {
    const s = guardScript(spec({ insideInterface: "eni0", outsideInterface: "eni0" }));
    const rules = chain(s);
    t.ok(
      rules.includes(
        'iifname "eni0" ip saddr != @inside ip daddr != @inside oifname != "tunnat0" counter name "spoofed_source" drop',
      ),
      "replies from the internet reach the NAT address in the TUN",
    );
    t.notOk(
      rules.includes('iifname "eni0" ip saddr != @inside counter name "spoofed_source" drop'),
    );
    t.ok(rules.includes('ip daddr @inside counter name "routed_inbound" drop'));
    t.notOk(
      rules.some((r) => r.includes("ip saddr @inside counter")),
      "an inside source on the one interface is a real inside host",
    );
  },
);

t.test("an interface name nft cannot take is refused", async (t) => {
  t.throws(() => guardScript(spec({ insideInterface: 'in"0' })), { code: "TUNNAT_ERR_CONFIG" });
});

t.test("the replace script is one transaction: add, delete, add", async (t) => {
  const s = replaceScript("tunnat_4242", guardScript(spec()));
  const lines = s.split("\n");
  t.equal(lines[0], "table ip tunnat_4242 {}");
  t.equal(lines[1], "delete table ip tunnat_4242");
  t.equal(lines[2], "table ip tunnat_4242 {");
});

t.test("rules and routes of the guard, as ip arguments", async (t) => {
  const d = desiredGuard(spec());
  t.same(d.rules, [
    { iif: "in0", from: "10.0.1.0/24" },
    { iif: "in0", from: "10.0.2.0/24" },
  ]);
  t.same(d.routes, [
    { type: "throw", dst: "10.0.1.0/24", metric: null },
    { type: "throw", dst: "10.0.2.0/24", metric: null },
    { type: "prohibit", dst: "default", metric: PROHIBIT_METRIC },
  ]);
  t.same(ruleArgs("add", { iif: "in0", from: "10.0.1.0/24" }, 4242, 4242), [
    "rule",
    "add",
    "iif",
    "in0",
    "from",
    "10.0.1.0/24",
    "lookup",
    "4242",
    "priority",
    "4242",
  ]);
  t.same(
    routeArgs("replace", { type: "prohibit", dst: "default", metric: PROHIBIT_METRIC }, 4242),
    ["route", "replace", "prohibit", "default", "table", "4242", "metric", "4294967295"],
  );
});

t.test("ip -j output: only the guard's rules (priority and table) and route types", async (t) => {
  const rules = JSON.stringify([
    { priority: 0, src: "all", table: "local" },
    { priority: 4242, iif: "in0", src: "10.0.1.0", srclen: 24, table: "4242" },
    { priority: 100, src: "10.9.0.0", srclen: 16, table: "4242" },
    { priority: 4242, src: "all", table: "4343" },
    { priority: 32766, src: "all", table: "main" },
  ]);
  t.same(parseRules(rules, 4242, 4242), [{ iif: "in0", from: "10.0.1.0/24" }]);
  const routes = JSON.stringify([
    { dst: "default", dev: "tunnat0", scope: "link", flags: [] },
    { type: "prohibit", dst: "default", metric: 4294967295, flags: [] },
    { type: "throw", dst: "10.0.1.0/24", flags: [] },
  ]);
  t.same(parseRoutes(routes), [
    { type: "prohibit", dst: "default", metric: 4294967295 },
    { type: "throw", dst: "10.0.1.0/24", metric: null },
  ]);
});

t.test("nft -j counters by reason; unknown counters are ignored", async (t) => {
  const json = JSON.stringify({
    nftables: [
      { metainfo: { version: "1.0.6" } },
      {
        counter: {
          family: "ip",
          name: "routed_inbound",
          table: "tunnat_4242",
          packets: 5,
          bytes: 300,
        },
      },
      {
        counter: {
          family: "ip",
          name: "spoofed_source",
          table: "tunnat_4242",
          packets: 2,
          bytes: 84,
        },
      },
      { counter: { family: "ip", name: "other", table: "tunnat_4242", packets: 9, bytes: 9 } },
    ],
  });
  t.same(parseCounters(json), {
    routed_inbound: { packets: 5, bytes: 300 },
    spoofed_source: { packets: 2, bytes: 84 },
    no_tun: { packets: 0, bytes: 0 },
  });
});

const plumbing = {
  ...spec(),
  inside: [cidr("10.0.1.0/24")],
  natAddresses: [parseIpv4("203.0.113.1")],
  tunAddress: null,
  setIpForward: false,
  stateFile: null,
};
const complete: KernelAnswers = {
  link: JSON.stringify([
    {
      ifname: "tunnat0",
      flags: ["POINTOPOINT", "UP", "LOWER_UP"],
      stats64: { tx: { dropped: 7 } },
    },
  ]),
  rules: JSON.stringify([
    { priority: 4242, iif: "in0", src: "10.0.1.0", srclen: 24, table: "4242" },
  ]),
  table: JSON.stringify([
    { dst: "default", dev: "tunnat0" },
    { type: "throw", dst: "10.0.1.0/24" },
    { type: "prohibit", dst: "default", metric: 4294967295 },
  ]),
  tunRoutes: JSON.stringify([{ dst: "203.0.113.1", scope: "link" }]),
  proxy: JSON.stringify([{ dst: "203.0.113.1", proxy: null }]),
  nftCounters: JSON.stringify({ nftables: [] }),
};

t.test("readiness: everything present is no problem; each missing piece is named", async (t) => {
  const e = { tun: "tunnat0", plumbing };
  t.same(kernelProblems(complete, e), []);
  t.equal(tunTxDropped(complete.link), 7);
  const without = (k: keyof KernelAnswers, v: string | null) =>
    kernelProblems({ ...complete, [k]: v }, e);
  t.same(without("rules", "[]"), ['policy rule "iif in0 from 10.0.1.0/24 lookup 4242" missing']);
  t.same(without("proxy", "[]"), ['proxy ARP entry "203.0.113.1 dev out0" missing']);
  t.same(without("tunRoutes", "[]"), ['route "203.0.113.1 dev tunnat0" missing']);
  t.same(without("nftCounters", null), ["guard nft table ip tunnat_4242 missing"]);
  t.same(without("link", JSON.stringify([{ flags: ["POINTOPOINT"] }])), ["TUN tunnat0 down"]);
  t.match(without("link", null), ["TUN tunnat0 missing"]);
  t.same(without("table", JSON.stringify([{ dst: "default", dev: "tunnat0" }])), [
    'route "throw 10.0.1.0/24 table 4242" missing',
    'route "prohibit default table 4242" missing',
  ]);
  t.same(
    kernelProblems({ ...complete, rules: null, proxy: null }, { tun: "tunnat0", plumbing: null }),
    [],
    "without --manage-routes only the TUN counts",
  );
});

t.test(
  "readiness: a loop that reads nothing while the TUN queue drops is stalled; idle is not",
  async (t) => {
    let dropped = 7;
    let read = 100;
    const runner: Runner = {
      where: "",
      ip: async (args) => {
        const a = args.join(" ");
        if (a.startsWith("-j -s link")) {
          const l = JSON.parse(complete.link ?? "[]") as { stats64: { tx: { dropped: number } } }[];
          if (l[0]) l[0].stats64.tx.dropped = dropped;
          return JSON.stringify(l);
        }
        if (a === "-j rule show") return complete.rules ?? "[]";
        if (a.startsWith("-j route show table")) return complete.table ?? "[]";
        if (a.startsWith("-j route show dev")) return complete.tunRoutes ?? "[]";
        if (a.startsWith("-j neigh")) return complete.proxy ?? "[]";
        throw new Error(a);
      },
      nft: async () => complete.nftCounters ?? "",
      readSysctl: async () => "1",
      writeSysctl: async () => undefined,
    };
    const guard = { nftTable: "tunnat_4242" } as unknown as Guard;
    const m = new KernelMonitor({ tun: "tunnat0", plumbing }, runner, guard, () => read);
    const loopStats = { batches: 1, sweeps: 1 };
    const check = readinessCheck(
      { loop: { isRunning: true, loopStats }, device: { closed: false } },
      m,
    );
    await m.poll();
    t.equal(check(), null, "everything there");
    await m.poll();
    t.equal(check(), null, "idle: nothing read, nothing dropped");
    dropped += 40;
    read += 5;
    await m.poll();
    t.equal(check(), null, "busy: drops while reading are load, not a stall");
    dropped += 40;
    await m.poll();
    t.match(check(), /data path not reading: 40 packets dropped unread/);
    read += 1;
    await m.poll();
    t.equal(check(), null, "reading again");
    t.same(await m.counters(0), {
      routed_inbound: { packets: 0, bytes: 0 },
      spoofed_source: { packets: 0, bytes: 0 },
      no_tun: { packets: 0, bytes: 0 },
    });
  },
);

t.test("the guard's counters are exported per reason, read when scraped", async (t) => {
  const stats = new NatStats();
  const cfg = defaultNatConfig({
    natAddresses: [parseIpv4("203.0.113.1")],
    inside: [cidr("10.0.0.0/8")],
    maxFlows: 1024,
  });
  const tr = newTranslator(cfg, new ManualClock(), stats);
  let reads = 0;
  const m = createMetrics(
    {
      stats,
      table: tr.table,
      loopStats: new LoopStats(),
      guardDrops: async () => {
        reads++;
        return { routed_inbound: { packets: 605 }, spoofed_source: { packets: 2 } };
      },
    },
    { defaultMetrics: false },
  );
  t.teardown(() => m.stop());
  t.equal(reads, 0, "nothing is read before a scrape");
  const text = await m.registry.metrics();
  t.equal(reads, 1, "one read per scrape");
  t.match(text, /^tunnat_guard_dropped_packets_total\{reason="routed_inbound"\} 605$/m);
  t.match(text, /^tunnat_guard_dropped_packets_total\{reason="spoofed_source"\} 2$/m);
  t.match(text, /^tunnat_guard_dropped_packets_total\{reason="no_tun"\} 0$/m);
});
