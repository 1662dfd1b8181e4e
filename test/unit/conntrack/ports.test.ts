// Mapping and port allocation through the FlowTable: RFC 4787 REQ-1..4, RFC 5382 REQ-1/7,
// RFC 5508 REQ-1 (echo ids), RFC 6888 REQ-2/4/8, per-destination mode, and the filtering modes
// (RFC 4787 REQ-8, RFC 5382 REQ-3, RFC 7857 §3.5 protocol-dependent mappings).
import t from "tap";
import { Prng } from "../../../src/conntrack/hash.js";
import { PortAllocator } from "../../../src/conntrack/ports.js";
import { ConntrackStats } from "../../../src/conntrack/stats.js";
import { type FlowHooks, FlowTable, Proto, Refusal } from "../../../src/conntrack/table.js";
import { defaultNatConfig, type NatConfig } from "../../../src/nat/config.js";

type Assert = { ok: typeof t.ok };
const ip = (s: string): number => s.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const NAT1 = ip("198.51.100.1");
const NAT2 = ip("198.51.100.2");
const H1 = ip("10.0.1.2");
const H2 = ip("10.0.1.3");
const S1 = ip("203.0.113.10");
const S2 = ip("203.0.113.11");
const NOW = 1000;

function mk(over: Partial<NatConfig> = {}, hooks?: FlowHooks) {
  const stats = new ConntrackStats();
  const cfg = defaultNatConfig({
    natAddresses: [NAT1],
    maxFlows: 4096,
    hashSeed: 0x1234,
    ...over,
  });
  return { table: new FlowTable(cfg, stats, hooks), stats };
}

/** Create an outbound flow and return it, failing the test on a refusal. */
function out(
  t: Assert,
  table: FlowTable,
  proto: number,
  iaddr: number,
  iport: number,
  raddr: number,
  rport: number,
  now = NOW,
): number {
  const f = table.createOutbound(proto, iaddr, iport, raddr, rport, now);
  t.ok(f >= 0, `flow for ${iaddr}:${iport} -> ${raddr}:${rport} created`);
  return f;
}

t.test("one inside endpoint keeps one outside port for every destination (EIM)", async (t) => {
  for (const proto of [Proto.UDP, Proto.TCP, Proto.ICMP]) {
    const { table } = mk();
    const f1 = out(t, table, proto, H1, 40000, S1, proto === Proto.ICMP ? 0 : 3478);
    const f2 = out(t, table, proto, H1, 40000, S2, proto === Proto.ICMP ? 0 : 3479);
    t.not(f1, f2);
    t.equal(table.oport(f1), table.oport(f2), `proto ${proto}: same outside port`);
    t.equal(table.oaddr(f1), table.oaddr(f2));
    t.equal(table.mappings, 1, "one mapping shared by two flows");
  }
});

t.test("the inside port is kept when it is free", async (t) => {
  const { table } = mk();
  const f = out(t, table, Proto.UDP, H1, 40000, S1, 53);
  t.equal(table.oport(f), 40000);
  t.equal(table.oaddr(f), NAT1);
  const e = out(t, table, Proto.ICMP, H1, 4242, S1, 0);
  t.equal(table.oport(e), 4242, "an echo id is kept too");
});

t.test("two inside hosts with the same source port get distinct outside ports", async (t) => {
  const { table } = mk();
  const a = out(t, table, Proto.TCP, H1, 40000, S1, 80);
  const b = out(t, table, Proto.TCP, H2, 40000, S1, 80);
  t.not(table.oport(a), table.oport(b));
  t.equal(table.lookupOutside(Proto.TCP, NAT1, table.oport(a), S1, 80, NOW), a);
  t.equal(table.lookupOutside(Proto.TCP, NAT1, table.oport(b), S1, 80, NOW), b);
  const ea = out(t, table, Proto.ICMP, H1, 4242, S1, 0);
  const eb = out(t, table, Proto.ICMP, H2, 4242, S1, 0);
  t.not(table.oport(ea), table.oport(eb), "two hosts pinging with one echo id get distinct ids");
});

t.test("a colliding port keeps its parity across 100 forced collisions", async (t) => {
  for (const want of [40000, 40001]) {
    const { table } = mk();
    const seen = new Set<number>();
    for (let h = 0; h <= 100; h++) {
      const f = out(t, table, Proto.UDP, ip("10.0.2.0") + h, want, S1, 3478);
      const p = table.oport(f);
      if (h === 0) t.equal(p, want, "the first host keeps its port");
      t.equal(p & 1, want & 1, `host ${h}: parity kept`);
      t.ok(p >= 1024, "class kept");
      seen.add(p);
    }
    t.equal(seen.size, 101, "no port overloaded");
  }
});

t.test("a colliding port below 1024 maps below 1024 (class kept)", async (t) => {
  const { table } = mk({ portLo: 1, portHi: 65535 });
  const first = out(t, table, Proto.UDP, H1, 700, S1, 3478);
  t.equal(table.oport(first), 700);
  for (let h = 0; h < 100; h++) {
    const f = out(t, table, Proto.UDP, ip("10.0.3.0") + h, 700, S1, 3478);
    t.ok(table.oport(f) < 1024 && table.oport(f) >= 1, `port ${table.oport(f)} below 1024`);
    t.equal(table.oport(f) & 1, 0, "and even like 700");
  }
});

t.test("with a range from 1024 up a port below 1024 maps into the range", async (t) => {
  const { table } = mk({ portLo: 1024, portHi: 65535 });
  const f = out(t, table, Proto.TCP, H1, 700, S1, 80);
  t.ok(table.oport(f) >= 1024, "1024-65535 is what the operator gave");
  t.equal(table.oport(f) & 1, 0, "parity still kept");
});

t.test("the class falls back to the other class when its own is full", async (t) => {
  const { table } = mk({ portLo: 1022, portHi: 1025 });
  const ports = [1022, 1023].map((p) => table.oport(out(t, table, Proto.UDP, H1, p, S1, 1)));
  t.same(ports, [1022, 1023]);
  const f = out(t, table, Proto.UDP, H2, 1022, S1, 1);
  t.ok(table.oport(f) === 1024 || table.oport(f) === 1025);
});

t.test("a freed port is not reused within portReuseDelay while another is free", async (t) => {
  const { table } = mk({ portLo: 5000, portHi: 5001, portReuseDelay: 120 });
  const f1 = out(t, table, Proto.UDP, H1, 5000, S1, 53);
  t.equal(table.oport(f1), 5000);
  table.remove(f1, NOW);
  t.same(table.portUsage(0, Proto.UDP), { used: 0, free: 2 });
  // H2 asks for 5000 (free, but resting): it gets the other port.
  const f2 = out(t, table, Proto.UDP, H2, 5000, S1, 53, NOW + 119);
  t.equal(table.oport(f2), 5001, "the resting port is skipped");
  // Nothing else is free: the resting port is better than a refusal.
  const f3 = out(t, table, Proto.UDP, ip("10.0.1.4"), 5000, S1, 53, NOW + 119);
  t.equal(table.oport(f3), 5000, "resting port used as the last resort");
});

t.test("a freed port may be reused once portReuseDelay has passed", async (t) => {
  const { table } = mk({ portLo: 5000, portHi: 5001, portReuseDelay: 120 });
  table.remove(out(t, table, Proto.UDP, H1, 5000, S1, 53), NOW);
  const f = out(t, table, Proto.UDP, H2, 5000, S1, 53, NOW + 120);
  t.equal(table.oport(f), 5000);
});

t.test("with every port resting, the longest-resting one is used first", async (t) => {
  const { table } = mk({ portLo: 5000, portHi: 5009, portReuseDelay: 120 });
  const flows = new Map<number, number>();
  for (let p = 5000; p <= 5009; p++) flows.set(p, out(t, table, Proto.UDP, H1, p, S1, 53));
  const order = [5003, 5007, 5001, 5009, 5000, 5002, 5008, 5004, 5006, 5005];
  for (const [i, p] of order.entries()) table.remove(flows.get(p) ?? -1, NOW + i);
  // 30 s later every port still rests: they come back in the order they were freed.
  const got = order.map((_, i) =>
    table.oport(out(t, table, Proto.UDP, H2, 5000 + i, S1, 53, NOW + 30)),
  );
  t.same(got, order, "release order (RFC 6888 REQ-8: the least recently used first)");
});

t.test("ports whose rest is over are free again, every one of them", async (t) => {
  const { table, stats } = mk({ portLo: 5000, portHi: 5099, portReuseDelay: 120 });
  const flows: number[] = [];
  for (let p = 5000; p <= 5099; p++) flows.push(out(t, table, Proto.UDP, H1, p, S1, 53));
  for (const f of flows) table.remove(f, NOW);
  // A backlog of 100 rested ports (moved back a few per allocation): all are handed out, each
  // once, and none is refused.
  const ports = new Set<number>();
  for (let i = 0; i < 100; i++) {
    ports.add(table.oport(out(t, table, Proto.UDP, H2, 6000 + i, S1, 53, NOW + 200)));
  }
  t.equal(ports.size, 100, "100 distinct ports");
  t.equal(stats.portAllocationErrors, 0);
  t.equal(
    table.createOutbound(Proto.UDP, H2, 7000, S1, 53, NOW + 200),
    -1 - Refusal.PortExhausted,
    "the 101st is refused",
  );
});

t.test("no free port refuses the flow as PortExhausted and counts it", async (t) => {
  const { table, stats } = mk({ portLo: 5000, portHi: 5001 });
  out(t, table, Proto.UDP, H1, 5000, S1, 53);
  out(t, table, Proto.UDP, H1, 5001, S1, 53);
  const r = table.createOutbound(Proto.UDP, H2, 5000, S1, 53, NOW);
  t.equal(r, -1 - Refusal.PortExhausted);
  t.equal(stats.portAllocationErrors, 1);
  t.equal(table.active, 2, "no flow leaked");
  t.same(table.portUsage(0, Proto.UDP), { used: 2, free: 0 });
  t.ok(out(t, table, Proto.TCP, H2, 5000, S1, 53) >= 0, "TCP ports are separate from UDP");
});

t.test("a host over its quota is refused and counted, others are not", async (t) => {
  const { table } = mk({ perHostQuota: 8 });
  for (let i = 0; i < 8; i++) out(t, table, Proto.UDP, H1, 41000 + i, S1, 53);
  t.equal(
    table.createOutbound(Proto.UDP, H1, 41100, S1, 53, NOW),
    -1 - Refusal.QuotaExceeded,
    "the 9th mapping is refused",
  );
  t.ok(
    out(t, table, Proto.UDP, H1, 41000, S2, 53) >= 0,
    "a new flow on an existing mapping is fine",
  );
  t.ok(out(t, table, Proto.TCP, H1, 41100, S1, 80) >= 0, "the quota is per protocol");
  t.ok(out(t, table, Proto.UDP, H2, 41100, S1, 53) >= 0, "another host is unaffected");
  t.equal(table.hosts.mappings(H1, 1), 8);
  // Freeing one mapping makes room again.
  const f = table.lookupInside(Proto.UDP, H1, 41003, S1, 53, NOW);
  table.remove(f, NOW);
  t.ok(out(t, table, Proto.UDP, H1, 41100, S1, 53) >= 0, "room again after a mapping ends");
});

t.test("paired pooling keeps every mapping of a host on one NAT address", async (t) => {
  const { table } = mk({ natAddresses: [NAT1, NAT2] });
  const byHost = new Map<number, Set<number>>();
  for (let h = 0; h < 64; h++) {
    const host = ip("10.0.4.0") + h;
    const set = new Set<number>();
    for (const proto of [Proto.TCP, Proto.UDP, Proto.ICMP]) {
      for (let i = 0; i < 3; i++)
        set.add(table.oaddr(out(t, table, proto, host, 30000 + i, S1, 0)));
    }
    t.equal(set.size, 1, `host ${h}: one NAT address for TCP, UDP and ICMP`);
    t.equal([...set][0], table.natAddressFor(host));
    byHost.set(host, set);
  }
  const used = new Set([...byHost.values()].map((s) => [...s][0]));
  t.same([...used].sort(), [NAT1, NAT2].sort(), "both NAT addresses are used");
});

t.test("the NAT address set answers membership for the hairpin test", async (t) => {
  const { table } = mk({ natAddresses: [NAT1, ip("192.0.2.77"), NAT2] });
  t.ok(table.isNatAddress(NAT1));
  t.ok(table.isNatAddress(ip("192.0.2.77")));
  t.ok(table.isNatAddress(NAT2));
  t.notOk(table.isNatAddress(ip("198.51.100.3")));
  t.notOk(table.isNatAddress(H1));
  t.equal(table.natAddressIndex(NAT2), 2);
});

t.test("per-destination mapping reuses one outside port across destinations", async (t) => {
  const { table } = mk({ mapping: "per-destination", portLo: 5000, portHi: 5003 });
  // Eight inside endpoints, four ports: only possible because destinations differ.
  const flows: number[] = [];
  for (let h = 0; h < 8; h++) {
    flows.push(out(t, table, Proto.TCP, ip("10.0.5.0") + h, 5000, ip("203.0.113.20") + h, 443));
  }
  t.equal(flows.filter((f) => table.oport(f) === 5000).length, 8, "all kept port 5000");
  t.equal(table.portUsage(0, Proto.TCP).used, 1, "one port in use");
  for (const f of flows) {
    t.equal(table.lookupOutside(Proto.TCP, NAT1, 5000, table.raddr(f), 443, NOW), f);
  }
});

t.test("per-destination mapping changes the port only when the 5-tuple is taken", async (t) => {
  const { table } = mk({ mapping: "per-destination" });
  const a = out(t, table, Proto.UDP, H1, 40000, S1, 53);
  const b = out(t, table, Proto.UDP, H2, 40000, S1, 53);
  const c = out(t, table, Proto.UDP, H2, 40000, S2, 53);
  t.equal(table.oport(a), 40000);
  t.not(table.oport(b), 40000, "same destination: another port");
  t.equal(table.oport(b) & 1, 0, "with the same parity");
  t.equal(table.oport(c), 40000, "another destination: the port is reused");
  t.equal(table.mappings, 0, "no mapping table in this mode");
  // A shared port names no single inside endpoint, so nothing opens from outside.
  t.equal(table.createInbound(Proto.UDP, NAT1, 40000, S2, 99, NOW), -1 - Refusal.Filtered);
  t.equal(table.createInbound(Proto.UDP, NAT1, 40002, S2, 99, NOW), -1 - Refusal.Unsolicited);
});

t.test(
  "per-destination mode fills a destination up to the range and refuses the next",
  async (t) => {
    const { table, stats } = mk({ mapping: "per-destination", portLo: 5000, portHi: 5009 });
    for (let h = 0; h < 10; h++) out(t, table, Proto.TCP, ip("10.0.6.0") + h, 6000, S1, 443);
    t.equal(
      table.createOutbound(Proto.TCP, ip("10.0.6.99"), 6000, S1, 443, NOW),
      -1 - Refusal.PortExhausted,
    );
    t.equal(stats.portAllocationErrors, 1);
    t.ok(out(t, table, Proto.TCP, ip("10.0.6.99"), 6000, S2, 443) >= 0, "another destination fits");
  },
);

t.test("address-and-port-dependent filtering admits only the exact remote", async (t) => {
  const { table } = mk();
  const f = out(t, table, Proto.UDP, H1, 40000, S1, 3478);
  t.equal(table.lookupOutside(Proto.UDP, NAT1, 40000, S1, 3478, NOW), f);
  t.equal(table.createInbound(Proto.UDP, NAT1, 40000, S1, 3479, NOW), -1 - Refusal.Filtered);
  t.equal(table.createInbound(Proto.UDP, NAT1, 40000, S2, 3478, NOW), -1 - Refusal.Filtered);
});

t.test("address-dependent filtering admits a new port of a known address only", async (t) => {
  const { table } = mk({ filtering: "address-dependent" });
  const f = out(t, table, Proto.UDP, H1, 40000, S1, 3478);
  const g = table.createInbound(Proto.UDP, NAT1, 40000, S1, 3479, NOW);
  t.ok(g >= 0, "same address, new port: admitted");
  t.equal(table.iaddr(g), H1);
  t.equal(table.iport(g), 40000);
  t.equal(table.createInbound(Proto.UDP, NAT1, 40000, S2, 3478, NOW), -1 - Refusal.Filtered);
  // The address is forgotten when its last flow goes, while the mapping lives on (flow to S2).
  out(t, table, Proto.UDP, H1, 40000, S2, 3478);
  table.remove(f, NOW);
  t.ok(table.createInbound(Proto.UDP, NAT1, 40000, S1, 3480, NOW) >= 0, "g still vouches for S1");
  table.remove(g, NOW);
  table.remove(table.lookupOutside(Proto.UDP, NAT1, 40000, S1, 3480, NOW), NOW);
  t.equal(table.createInbound(Proto.UDP, NAT1, 40000, S1, 3481, NOW), -1 - Refusal.Filtered);
  t.ok(table.createInbound(Proto.UDP, NAT1, 40000, S2, 1, NOW) >= 0, "S2 still admitted");
});

t.test("endpoint-independent filtering admits any remote on an existing mapping", async (t) => {
  const { table } = mk({ filtering: "endpoint-independent" });
  const f = out(t, table, Proto.TCP, H1, 40000, S1, 5000);
  const g = table.createInbound(Proto.TCP, NAT1, 40000, S2, 5001, NOW);
  t.ok(g >= 0);
  t.equal(table.iaddr(g), H1);
  t.equal(table.iport(g), 40000);
  t.equal(table.lookupOutside(Proto.TCP, NAT1, 40000, S2, 5001, NOW), g);
  t.equal(table.lookupInside(Proto.TCP, H1, 40000, S2, 5001, NOW), g);
  t.not(f, g);
});

t.test("an inbound packet without a mapping is unsolicited in every filtering mode", async (t) => {
  for (const filtering of [
    "address-and-port-dependent",
    "address-dependent",
    "endpoint-independent",
  ] as const) {
    const { table } = mk({ filtering });
    t.equal(table.createInbound(Proto.UDP, NAT1, 40000, S1, 1, NOW), -1 - Refusal.Unsolicited);
    t.equal(
      table.createInbound(Proto.UDP, ip("198.51.100.9"), 40000, S1, 1, NOW),
      -1 - Refusal.Unsolicited,
      "not a NAT address",
    );
  }
});

t.test("a UDP mapping does not admit TCP (mappings are per protocol)", async (t) => {
  const { table } = mk({ filtering: "endpoint-independent" });
  out(t, table, Proto.UDP, H1, 40000, S1, 3478);
  t.equal(table.createInbound(Proto.TCP, NAT1, 40000, S1, 3478, NOW), -1 - Refusal.Unsolicited);
  t.notOk(table.hasMapping(Proto.TCP, NAT1, 40000));
  t.ok(table.hasMapping(Proto.UDP, NAT1, 40000));
});

t.test("mapping hooks fire once per mapping with its times and bytes", async (t) => {
  const created: number[][] = [];
  const removed: number[][] = [];
  const { table } = mk(
    {},
    {
      mappingCreated: (...a) => created.push(a),
      mappingRemoved: (...a) => removed.push(a),
    },
  );
  const f1 = out(t, table, Proto.UDP, H1, 40000, S1, 53);
  const f2 = out(t, table, Proto.UDP, H1, 40000, S2, 53);
  t.same(created, [[Proto.UDP, H1, 40000, NAT1, 40000, S1, 53, NOW]]);
  table.addOut(f1, 0, 100);
  table.addIn(f1, 0, 1000);
  table.addOut(f2, 0, 5);
  table.remove(f1, NOW + 10);
  t.equal(removed.length, 0, "the mapping outlives its first flow");
  table.remove(f2, NOW + 20);
  t.same(removed, [[Proto.UDP, H1, 40000, NAT1, 40000, S2, 53, NOW + 20, NOW, 105, 1000]]);
});

t.test("per-destination mode logs each flow as a mapping", async (t) => {
  const removed: number[][] = [];
  const { table, stats } = mk(
    { mapping: "per-destination" },
    { mappingRemoved: (...a) => removed.push(a) },
  );
  const f = out(t, table, Proto.TCP, H1, 40000, S1, 443, NOW);
  table.addOut(f, 0, 7);
  table.remove(f, NOW + 3);
  t.same(removed, [[Proto.TCP, H1, 40000, NAT1, 40000, S1, 443, NOW + 3, NOW, 7, 0]]);
  t.equal(stats.mappingsCreated, 1);
  t.equal(stats.mappingsRemoved, 1);
});

t.test("the allocator's first random port differs between seeds (RFC 6056)", async (t) => {
  const firsts = new Set<number>();
  for (let seed = 1; seed <= 20; seed++) {
    const a = new PortAllocator(1, 1024, 65535, 120, new Prng(seed), null);
    a.take(0, 0, 40000, 1);
    firsts.add(a.allocate(0, 0, 40000, 0));
  }
  t.ok(firsts.size >= 18, `20 seeds gave ${firsts.size} distinct first choices`);
});
