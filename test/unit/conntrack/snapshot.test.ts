// The flow table as bytes and back (conntrack/snapshot.ts): a restored table holds the same
// flows on the same outside ports, with their TCP states, flags, lifetimes less the time that
// passed, counters, resting ports, per-host mapping counts and filtering state.
import t from "tap";
import { Prng } from "../../../src/conntrack/hash.js";
import {
  applyFlow,
  applyRemoval,
  checkBody,
  decodeFlow,
  encodeFlow,
  encodeRemoval,
  FLOW_RECORD_BYTES,
  fieldCounters,
  newFlowRecord,
  RecordKind,
  restoreTable,
  snapshotTable,
} from "../../../src/conntrack/snapshot.js";
import { FlowFlag, type FlowHooks, FlowTable, Proto } from "../../../src/conntrack/table.js";
import { TcpFlag, TcpState } from "../../../src/conntrack/tcp-state.js";
import { defaultNatConfig, type NatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";

const ip = (s: string): number => s.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const NAT1 = ip("198.51.100.1");
const NAT2 = ip("198.51.100.2");
const S1 = ip("203.0.113.10");
const T0 = 5000;
const { SYN, ACK } = TcpFlag;
const savedCounters = (s: NatStats) => fieldCounters("", s, ["tcpEstablishedNow"]);

function mk(over: Partial<NatConfig> = {}, seed = 42, hooks?: FlowHooks) {
  const stats = new NatStats();
  const cfg = defaultNatConfig({
    natAddresses: [NAT1, NAT2],
    maxFlows: 4096,
    hashSeed: seed,
    ...over,
  });
  return { table: new FlowTable(cfg, stats, hooks), stats, cfg };
}

/** Every live flow as a comparable line (expiry relative to `now`). */
function flows(table: FlowTable, now: number): string[] {
  const out: string[] = [];
  table.forEach((f) => {
    out.push(
      [
        table.proto(f),
        table.iaddr(f),
        table.iport(f),
        table.oaddr(f),
        table.oport(f),
        table.raddr(f),
        table.rport(f),
        table.state(f),
        table.flags(f),
        table.expires(f) - now,
        table.pktsOut(f),
        table.pktsIn(f),
        table.bytesOut(f),
        table.bytesIn(f),
      ].join(" "),
    );
  });
  return out.sort();
}

/** A table with a mix of TCP (several states), UDP and ICMP flows, replied and not. */
function populate(table: FlowTable, rng: Prng, n: number, now: number): void {
  for (let i = 0; i < n; i++) {
    const h = ip("10.0.0.0") + 1 + rng.below(200);
    const kind = rng.below(3);
    const proto = kind === 0 ? Proto.TCP : kind === 1 ? Proto.UDP : Proto.ICMP;
    const iport = 1024 + rng.below(60000);
    const rport = proto === Proto.ICMP ? 0 : 1 + rng.below(1000);
    const r = S1 + rng.below(50);
    if (table.lookupInside(proto, h, iport, r, rport, now) >= 0) continue;
    const f = table.createOutbound(proto, h, iport, r, rport, now);
    if (f < 0) continue;
    table.addOut(f, 1 + rng.below(10), 100 + rng.below(10000));
    if (proto === Proto.TCP) {
      table.tcpUpdate(f, SYN, true, now);
      if (rng.below(3) > 0) {
        table.tcpUpdate(f, SYN | ACK, false, now);
        table.tcpUpdate(f, ACK, true, now);
        table.addIn(f, 1, 60);
      }
    } else if (rng.below(2) === 0) {
      table.touch(f, false, now);
      table.addIn(f, 2, 300);
    }
  }
}

t.test("a restored table has every flow on its outside port, state and counters", async (t) => {
  const a = mk();
  populate(a.table, new Prng(7), 1500, T0);
  // Age a few flows: the snapshot stores what they have left.
  const body = snapshotTable(a.table, savedCounters(a.stats), T0 + 10);
  t.equal(checkBody(body), null);
  const b = mk({}, 99); // another hash seed: the indexes differ, the flows must not
  const r = restoreTable(b.table, b.stats, savedCounters(b.stats), body, 777, 0);
  if (typeof r === "string") throw new Error(r);
  t.equal(r.flows, a.table.active);
  t.equal(r.expired + r.refused + r.invalid, 0);
  t.same(flows(b.table, 777), flows(a.table, T0 + 10));
  t.equal(b.table.mappings, a.table.mappings);
  t.equal(b.stats.tcpEstablishedNow, a.stats.tcpEstablishedNow);
  t.equal(b.stats.flowsCreated, a.stats.flowsCreated, "the counters come back");
  t.equal(b.stats.connectionsEstablished, a.stats.connectionsEstablished);
  // Both directions find the flow, and a new flow of a known endpoint reuses its mapping.
  let checked = 0;
  a.table.forEach((f) => {
    const p = a.table.proto(f);
    const g = b.table.lookupOutside(
      p,
      a.table.oaddr(f),
      a.table.oport(f),
      a.table.raddr(f),
      a.table.rport(f),
      777,
    );
    t.ok(g >= 0 && b.table.iaddr(g) === a.table.iaddr(f), "found by its outside tuple");
    checked++;
  });
  t.equal(checked, a.table.active);
  // Per-host mapping counts (the quota) follow from the flows.
  for (let h = 1; h <= 200; h++) {
    const addr = ip("10.0.0.0") + h;
    for (let pi = 0; pi < 3; pi++)
      if (a.table.hosts.mappings(addr, pi) !== b.table.hosts.mappings(addr, pi))
        t.fail(`host ${h} proto slot ${pi} mapping count differs`);
  }
});

t.test("a restored endpoint keeps its mapping for a new destination (EIM)", async (t) => {
  const a = mk();
  const H = ip("10.0.0.9");
  const f = a.table.createOutbound(Proto.UDP, H, 5000, S1, 53, T0);
  const port = a.table.oport(f);
  const b = mk({}, 3);
  restoreTable(
    b.table,
    b.stats,
    savedCounters(b.stats),
    snapshotTable(a.table, savedCounters(a.stats), T0),
    T0,
    0,
  );
  const g = b.table.createOutbound(Proto.UDP, H, 5000, S1 + 1, 53, T0);
  t.equal(b.table.oport(g), port, "same outside port towards another remote");
  t.equal(b.table.mappings, 1);
});

t.test("time that passed is taken off; a flow that ran out is gone", async (t) => {
  const a = mk({ timeouts: { tcpEstablished: 7440, tcpTransitory: 240, udp: 300, icmp: 60 } });
  const u = a.table.createOutbound(Proto.UDP, ip("10.0.0.2"), 4000, S1, 53, T0); // 300 s
  a.table.createOutbound(Proto.ICMP, ip("10.0.0.2"), 7, S1, 0, T0); // 60 s
  const body = snapshotTable(a.table, savedCounters(a.stats), T0);
  const b = mk();
  const r = restoreTable(b.table, b.stats, savedCounters(b.stats), body, 100, 90.7);
  if (typeof r === "string") throw new Error(r);
  t.equal(r.flows, 1);
  t.equal(r.expired, 1, "the ICMP flow (60 s) did not survive 90 s");
  const g = b.table.lookupInside(Proto.UDP, ip("10.0.0.2"), 4000, S1, 53, 100);
  t.ok(g >= 0);
  t.equal(b.table.expires(g), 100 + 300 - 90, "300 s less the 90 s that passed");
  t.equal(b.table.oport(g), a.table.oport(u));
  t.equal(b.stats.idleTimeouts, a.stats.idleTimeouts + 1, "the expired flow is an idle timeout");
  t.equal(b.stats.flowsCreated - b.stats.flowsRemoved, b.table.active);
  t.equal(b.stats.mappingsCreated - b.stats.mappingsRemoved, b.table.mappings);
});

t.test("a freed port still rests after a restore (RFC 6888 REQ-8)", async (t) => {
  const a = mk({ natAddresses: [NAT1], portLo: 2000, portHi: 2003, portReuseDelay: 120 });
  const H = ip("10.0.0.3");
  const f = a.table.createOutbound(Proto.UDP, H, 2001, S1, 53, T0);
  t.equal(a.table.oport(f), 2001);
  a.table.remove(f, T0);
  const b = mk({ natAddresses: [NAT1], portLo: 2000, portHi: 2003, portReuseDelay: 120 });
  const r = restoreTable(
    b.table,
    b.stats,
    savedCounters(b.stats),
    snapshotTable(a.table, savedCounters(a.stats), T0 + 30),
    50,
    10,
  );
  if (typeof r === "string") throw new Error(r);
  t.equal(r.restingPorts, 1);
  t.equal(b.table.ports.get(0, 1, 2001), -(50 - 40 + 1), "freed 40 s before `now`");
  // While other ports are free, the resting one is not handed out, even when asked for.
  const g = b.table.createOutbound(Proto.UDP, ip("10.0.0.4"), 2001, S1, 53, 50);
  t.not(b.table.oport(g), 2001);
});

t.test("address-dependent filtering knows the restored remotes", async (t) => {
  const a = mk({ filtering: "address-dependent" });
  const H = ip("10.0.0.5");
  const f = a.table.createOutbound(Proto.UDP, H, 6000, S1, 3478, T0);
  const port = a.table.oport(f);
  const b = mk({ filtering: "address-dependent" }, 5);
  restoreTable(
    b.table,
    b.stats,
    savedCounters(b.stats),
    snapshotTable(a.table, savedCounters(a.stats), T0),
    T0,
    0,
  );
  t.ok(
    b.table.createInbound(Proto.UDP, NAT1, port, S1, 9999, T0) >= 0 ||
      b.table.createInbound(Proto.UDP, NAT2, port, S1, 9999, T0) >= 0,
    "same address, other port",
  );
  t.ok(
    b.table.createInbound(Proto.UDP, a.table.oaddr(f), port, S1 + 5, 3478, T0) < 0,
    "other address",
  );
});

t.test("per-destination mode round-trips, shared ports included", async (t) => {
  const a = mk({ mapping: "per-destination", natAddresses: [NAT1] });
  populate(a.table, new Prng(11), 800, T0);
  const b = mk({ mapping: "per-destination", natAddresses: [NAT1] }, 8);
  const r = restoreTable(
    b.table,
    b.stats,
    savedCounters(b.stats),
    snapshotTable(a.table, savedCounters(a.stats), T0),
    T0,
    0,
  );
  if (typeof r === "string") throw new Error(r);
  t.equal(r.refused, 0);
  t.same(flows(b.table, T0), flows(a.table, T0));
  for (let p = 1024; p < 65536; p++)
    if (a.table.ports.get(0, 1, p) !== b.table.ports.get(0, 1, p)) {
      t.fail(
        `UDP port ${p}: ${a.table.ports.get(0, 1, p)} users before, ${b.table.ports.get(0, 1, p)} after`,
      );
      break;
    }
});

t.test("the mapping log's creation times and totals survive", async (t) => {
  const removed: number[] = [];
  const hooks: FlowHooks = {
    mappingRemoved: (_p, _ia, _ip, _oa, _op, _ra, _rp, now, createdAt, bytesOut) => {
      removed.push(now - createdAt, bytesOut);
    },
  };
  const a = mk({}, 1, hooks);
  const H = ip("10.0.0.6");
  const f1 = a.table.createOutbound(Proto.UDP, H, 7000, S1, 53, T0);
  const f2 = a.table.createOutbound(Proto.UDP, H, 7000, S1 + 1, 53, T0 + 5);
  a.table.addOut(f1, 1, 100);
  a.table.addOut(f2, 1, 50);
  a.table.remove(f1, T0 + 10); // its 100 bytes now belong to the mapping
  const b = mk({}, 2, hooks);
  restoreTable(
    b.table,
    b.stats,
    savedCounters(b.stats),
    snapshotTable(a.table, savedCounters(a.stats), T0 + 20),
    300,
    30,
  );
  const g = b.table.lookupInside(Proto.UDP, H, 7000, S1 + 1, 53, 300);
  b.table.remove(g, 300);
  t.same(removed, [20 + 30, 150], "age 20 s at the save + 30 s down; 100 + 50 bytes");
});

t.test("what does not fit or conflicts is refused and counted, never thrown", async (t) => {
  const a = mk();
  populate(a.table, new Prng(3), 2000, T0);
  const body = snapshotTable(a.table, savedCounters(a.stats), T0);
  const small = mk({ maxFlows: 100 });
  const r = restoreTable(small.table, small.stats, savedCounters(small.stats), body, T0, 0);
  if (typeof r === "string") throw new Error(r);
  t.equal(r.flows, 100);
  t.equal(r.refused, a.table.active - 100);
  // A second copy of the same flows: every one conflicts with the first.
  const twice = new Uint8Array(body.byteLength * 2);
  twice.set(body);
  twice.set(body, body.byteLength);
  const c = mk();
  const r2 = restoreTable(c.table, c.stats, savedCounters(c.stats), twice, T0, 0);
  if (typeof r2 === "string") throw new Error(r2);
  t.equal(r2.flows, a.table.active);
  t.equal(r2.refused, a.table.active);
  t.equal(
    restoreTable(c.table, c.stats, savedCounters(c.stats), body, T0, 0),
    "the table is not empty",
  );
});

t.test("a flow record round-trips alone (the unit a sync protocol sends)", async (t) => {
  const a = mk();
  const f = a.table.createOutbound(Proto.TCP, ip("10.0.0.7"), 40000, S1, 443, T0);
  a.table.tcpUpdate(f, SYN, true, T0);
  a.table.tcpUpdate(f, SYN | ACK, false, T0);
  a.table.tcpUpdate(f, ACK, true, T0);
  const v = new DataView(new ArrayBuffer(FLOW_RECORD_BYTES + 8));
  t.ok(encodeFlow(a.table, f, T0, v, 8));
  const rec = newFlowRecord();
  t.equal(decodeFlow(v, 8, rec), null);
  t.equal(rec.state, TcpState.ESTABLISHED);
  t.ok(rec.flags & FlowFlag.REPLIED);
  t.equal(rec.ttl, 7440);
  const b = mk();
  const g = applyFlow(b.table, rec, T0);
  t.equal(b.table.oport(g), a.table.oport(f));
  t.equal(b.stats.tcpEstablishedNow, 1);
  v.setUint8(8, 99);
  t.equal(decodeFlow(v, 8, rec), "protocol");
  v.setUint8(8, Proto.UDP);
  v.setUint8(9, 7);
  t.equal(decodeFlow(v, 8, rec), "state");
  t.notOk(encodeFlow(a.table, 4000, T0, v, 8), "a free slot is not a flow");
});

t.test("a restored unreplied flow can still be evicted, a replied one cannot", async (t) => {
  const a = mk({ maxFlows: 2, natAddresses: [NAT1] });
  const u = a.table.createOutbound(Proto.UDP, ip("10.0.0.8"), 1000, S1, 53, T0);
  const rep = a.table.createOutbound(Proto.UDP, ip("10.0.0.8"), 1001, S1, 53, T0);
  a.table.touch(rep, false, T0);
  t.ok(u >= 0);
  const b = mk({ maxFlows: 2, natAddresses: [NAT1] });
  restoreTable(
    b.table,
    b.stats,
    savedCounters(b.stats),
    snapshotTable(a.table, savedCounters(a.stats), T0),
    T0,
    0,
  );
  const n = b.table.createOutbound(Proto.UDP, ip("10.0.0.8"), 1002, S1, 53, T0);
  t.ok(n >= 0, "the full table evicted the unreplied flow");
  t.equal(b.table.lookupInside(Proto.UDP, ip("10.0.0.8"), 1000, S1, 53, T0), -1);
  t.ok(b.table.lookupInside(Proto.UDP, ip("10.0.0.8"), 1001, S1, 53, T0) >= 0);
});

const FWD = {
  proto: Proto.TCP,
  natAddress: null,
  port: 443,
  inside: ip("10.0.0.9"),
  insidePort: 8443,
  text: "tcp:443=10.0.0.9:8443",
};

t.test("a connection through a static forward is restored as a forward's flow", async (t) => {
  const a = mk({ forwards: [FWD] });
  const f = a.table.createForward(Proto.TCP, NAT1, 443, S1, 50000, FWD.inside, 8443, T0);
  a.table.tcpUpdate(f, SYN, false, T0);
  a.table.tcpUpdate(f, SYN | ACK, true, T0);
  a.table.tcpUpdate(f, ACK, false, T0);
  populate(a.table, new Prng(9), 50, T0);
  const body = snapshotTable(a.table, savedCounters(a.stats), T0);
  const b = mk({ forwards: [FWD] });
  const r = restoreTable(b.table, b.stats, savedCounters(b.stats), body, T0, 0);
  if (typeof r === "string") throw new Error(r);
  t.equal(r.invalid, 0, `nothing invalid: ${r.invalidReason}`);
  t.equal(r.refused, 0, "nothing refused as a conflict");
  t.same(flows(b.table, T0), flows(a.table, T0));
  const g = b.table.lookupOutside(Proto.TCP, NAT1, 443, S1, 50000, T0);
  t.ok(g >= 0 && b.table.flags(g) & FlowFlag.FORWARD, "the forward's flow is back");
  // A second connection to the forward still opens (its port is the forward's, not a mapping's).
  t.ok(b.table.createForward(Proto.TCP, NAT1, 443, S1, 50001, FWD.inside, 8443, T0) >= 0);
  // Without that forward in the configuration the flow is not ours.
  const c = mk();
  const r2 = restoreTable(c.table, c.stats, savedCounters(c.stats), body, T0, 0);
  if (typeof r2 === "string") throw new Error(r2);
  t.equal(r2.invalid, 1);
  t.match(r2.invalidReason, /forward/);
  t.equal(c.table.lookupOutside(Proto.TCP, NAT1, 443, S1, 50000, T0), -1);
});

t.test("a removal record ends the flow and rests its port (the sync's delete)", async (t) => {
  const a = mk({ natAddresses: [NAT1] });
  const f = a.table.createOutbound(Proto.UDP, ip("10.0.0.7"), 40000, S1, 53, T0);
  const port = a.table.oport(f);
  const v = new DataView(new ArrayBuffer(FLOW_RECORD_BYTES));
  encodeRemoval(v, 0, Proto.UDP, ip("10.0.0.7"), 40000, NAT1, port, S1, 53, 30);
  const rec = newFlowRecord();
  t.equal(decodeFlow(v, 0, rec), null);
  t.equal(rec.kind, RecordKind.REMOVED);
  applyRemoval(a.table, rec, T0 + 10);
  t.equal(a.table.active, 0, "the flow is gone");
  t.ok(a.table.ports.get(0, 1, port) < 0, "its port rests");
  // A port this table never had: it rests from the sender's release time on.
  encodeRemoval(v, 0, Proto.UDP, 0, 0, NAT1, 5555, 0, 0, 100);
  decodeFlow(v, 0, rec);
  applyRemoval(a.table, rec, T0 + 10);
  t.equal(a.table.ports.get(0, 1, 5555), -(T0 + 10 - 100 + 1), "freed 100 s before");
  // In a state file's flows section a removal is no flow: skipped and counted.
  const c = mk({ natAddresses: [NAT1] });
  c.table.createOutbound(Proto.UDP, ip("10.0.0.7"), 40001, S1, 53, T0);
  const body = snapshotTable(c.table, savedCounters(c.stats), T0);
  body[8 + 3] = RecordKind.REMOVED; // the first section is FLOWS; byte 3 of its first record
  const d = mk({ natAddresses: [NAT1] });
  const r = restoreTable(d.table, d.stats, savedCounters(d.stats), body, T0, 0);
  if (typeof r === "string") throw new Error(r);
  t.equal(r.invalid, 1);
  t.equal(r.invalidReason, "kind");
});
