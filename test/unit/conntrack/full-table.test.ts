// Issue 8: an insert into a full table costs about what a normal insert costs. A flood of new
// flows into a full table evicts one never-answered flow per insert, and each eviction frees a
// port that then rests for portReuseDelay (RFC 6888 REQ-8); within a minute every port of the
// range is resting. The work of each insert (flow slots and eviction-ring entries the table
// examines, plus what the port allocator examines) must stay bounded by a constant however many
// ports rest, answered flows must never be evicted, and every refusal must be counted.
import t from "tap";
import { MAX_TUPLE_PROBES } from "../../../src/conntrack/ports.js";
import { ConntrackStats } from "../../../src/conntrack/stats.js";
import { FlowTable, Proto, Refusal } from "../../../src/conntrack/table.js";
import { TcpFlag, TcpState } from "../../../src/conntrack/tcp-state.js";
import { defaultNatConfig, type NatConfig } from "../../../src/nat/config.js";

const ip = (s: string): number => s.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const NAT1 = ip("198.51.100.1");
const H1 = ip("10.0.1.2");
const H2 = ip("10.0.1.3");
const S1 = ip("203.0.113.10");
const T0 = 1000;
const { SYN, ACK } = TcpFlag;

/** Work the table and its allocator have done so far (see FlowTable.examined). */
const work = (table: FlowTable) => table.examined + table.ports.examined;

/**
 * Slots swept per insert into a full table (FULL_SWEEP_BUDGET in table.ts) plus a small constant:
 * a few ring entries and allocator words. A scan of the port range (64 k ports) is far above it.
 */
const BOUND = 64 + 64;

function mk(over: Partial<NatConfig> = {}) {
  const stats = new ConntrackStats();
  const cfg = defaultNatConfig({ natAddresses: [NAT1], maxFlows: 2048, hashSeed: 8, ...over });
  return { table: new FlowTable(cfg, stats), stats };
}

/** Five established TCP flows from H1 (answered, so never evictable). */
function established(table: FlowTable): number[] {
  const flows: number[] = [];
  for (let i = 0; i < 5; i++) {
    const f = table.createOutbound(Proto.TCP, H1, 50000 + i, S1, 443, T0);
    table.tcpUpdate(f, SYN, true, T0);
    table.tcpUpdate(f, SYN | ACK, false, T0);
    table.tcpUpdate(f, ACK, true, T0);
    flows.push(f);
  }
  return flows;
}

/**
 * `n` new UDP flows from H2, a new source port (cycling 1024..65535) and destination each, 1000
 * per second of table time; the established flows are refreshed each second. Returns the largest
 * and the mean work per insert and how many were refused.
 */
function flood(table: FlowTable, tcp: number[], n: number) {
  let max = 0;
  let total = 0;
  let refused = 0;
  let now = T0;
  for (let i = 0; i < n; i++) {
    if (i % 1000 === 0) {
      now++;
      for (const f of tcp) table.tcpUpdate(f, ACK, true, now);
    }
    const before = work(table);
    const f = table.createOutbound(
      Proto.UDP,
      H2,
      1024 + (i % 64512),
      (S1 + (i % 251)) >>> 0,
      1 + (i % 60000),
      now,
    );
    const w = work(table) - before;
    if (w > max) max = w;
    total += w;
    if (f < 0) refused++;
  }
  return { max, mean: total / n, refused };
}

t.test("an insert into a full table does bounded work while every freed port rests", async (t) => {
  const { table, stats } = mk();
  const tcp = established(table);
  // 150,000 flows over 150 s of table time: the whole port range is churned twice, every freed
  // port rests 120 s, and the first ones come back from rest during the run.
  const r = flood(table, tcp, 150_000);
  t.comment(`work per insert: max ${r.max}, mean ${r.mean.toFixed(1)}`);
  t.ok(r.max <= BOUND, `largest work of one insert ${r.max} <= ${BOUND}`);
  t.equal(r.refused, 0, "no flow refused: there is always a never-answered flow to evict");
  t.equal(stats.evictions, 150_000 - (2048 - 5), "each insert beyond the free slots evicted one");
  t.equal(stats.portAllocationErrors, 0);
  t.equal(table.active, 2048);
  for (const f of tcp) {
    t.equal(table.state(f), TcpState.ESTABLISHED, `established flow ${f} is still there`);
  }
  t.equal(stats.tcpEstablishedNow, 5);
});

t.test("a full table of answered flows refuses each new flow in bounded work", async (t) => {
  const { table, stats } = mk({ maxFlows: 1024 });
  for (let i = 0; i < 1024; i++) {
    const f = table.createOutbound(Proto.UDP, H1, 2000 + i, S1, 53, T0);
    table.touch(f, false, T0);
  }
  let max = 0;
  let other = 0;
  for (let i = 0; i < 10_000; i++) {
    const before = work(table);
    const r = table.createOutbound(Proto.UDP, H2, 10000 + i, S1, 53, T0 + 1);
    if (r !== -1 - Refusal.TableFull) other++;
    max = Math.max(max, work(table) - before);
  }
  t.equal(other, 0, "every new flow refused as table_full");
  t.ok(max <= BOUND, `largest work of one refusal ${max} <= ${BOUND}`);
  t.equal(stats.tableFullEvents, 10_000, "every refusal counted");
  t.equal(stats.evictions, 0, "no answered flow evicted");
  t.equal(table.active, 1024);
});

t.test("per-destination mode: a flood into a full table does bounded work too", async (t) => {
  const { table, stats } = mk({ mapping: "per-destination" });
  const tcp = established(table);
  const r = flood(table, tcp, 150_000);
  t.comment(`work per insert: max ${r.max}, mean ${r.mean.toFixed(1)}`);
  // Sharing a port in use costs tuple probes (at most MAX_TUPLE_PROBES); with destinations that
  // differ the first probe succeeds, so the constant bound holds.
  t.ok(r.max <= BOUND, `largest work of one insert ${r.max} <= ${BOUND} (cap ${MAX_TUPLE_PROBES})`);
  t.equal(r.refused, 0);
  t.equal(stats.evictions, 150_000 - (2048 - 5));
  for (const f of tcp) t.equal(table.state(f), TcpState.ESTABLISHED);
});

t.test(
  "eviction always takes the oldest live never-answered flow (random operations)",
  async (t) => {
    const { table, stats } = mk({ maxFlows: 64, filtering: "endpoint-independent", hashSeed: 3 });
    // The model: live flows by inside port, in creation order, and whether a reply came.
    type M = {
      port: number;
      raddr: number;
      rport: number;
      f: number;
      replied: boolean;
      inbound: boolean;
    };
    let live: M[] = [];
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    let port = 20000;
    let now = T0;
    let bad = 0;
    let inbound = 0;
    for (let step = 0; step < 20_000; step++) {
      if (step % 500 === 0) now++;
      const op = rnd(10);
      if (op < 6 || live.length === 0) {
        // A new outbound flow; when the table is full the model says which one must go.
        const expect = live.length === 64 ? live.find((m) => !m.replied) : undefined;
        const p = port++;
        const f = table.createOutbound(Proto.UDP, H1, p, S1, 53, now);
        if (live.length === 64 && expect === undefined) {
          if (f !== -1 - Refusal.TableFull) bad++;
          continue;
        }
        if (f < 0) {
          bad++;
          continue;
        }
        if (expect) {
          const gone = table.lookupInside(
            Proto.UDP,
            H1,
            expect.port,
            expect.raddr,
            expect.rport,
            now,
          );
          if (gone !== -1) bad++;
          live = live.filter((m) => m !== expect);
        }
        live.push({ port: p, raddr: S1, rport: 53, f, replied: false, inbound: false });
      } else if (op < 8) {
        // A reply (or, for an inbound-opened flow, an outbound packet) to a random live flow.
        const m = live[rnd(live.length)] as M;
        table.touch(m.f, m.inbound, now);
        m.replied = true;
      } else if (op < 9) {
        const m = live[rnd(live.length)] as M;
        table.remove(m.f, now);
        live = live.filter((x) => x !== m);
      } else if (live.length < 64) {
        // An inbound flow on an existing mapping (endpoint-independent filtering): evictable too.
        const m = live[rnd(live.length)] as M;
        const o = table.oport(m.f);
        const ra = (S1 + 1 + rnd(200)) >>> 0;
        if (table.lookupOutside(Proto.UDP, NAT1, o, ra, 99, now) >= 0) continue;
        const f = table.createInbound(Proto.UDP, NAT1, o, ra, 99, now);
        if (f < 0) bad++;
        else {
          inbound++;
          live.push({ port: m.port, raddr: ra, rport: 99, f, replied: false, inbound: true });
        }
      }
    }
    t.equal(bad, 0, "every eviction and refusal as the model says");
    t.equal(table.active, live.length);
    t.ok(stats.evictions > 1000, `${stats.evictions} evictions exercised`);
    t.ok(inbound > 100, `${inbound} inbound-opened flows among them`);
  },
);
