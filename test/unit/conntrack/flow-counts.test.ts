// The per-protocol, per-state flow counts (ConntrackStats.flowsByState) are kept incrementally on
// create, state change, expiry, eviction and removal; they must always equal a walk of the table.
import t from "tap";
import { PROTOCOLS, protoSlot } from "../../../src/base/protocols.js";
import { ConntrackStats, STATE_SLOTS } from "../../../src/conntrack/stats.js";
import { FlowTable, Proto, Refusal } from "../../../src/conntrack/table.js";
import { TcpFlag } from "../../../src/conntrack/tcp-state.js";
import { defaultNatConfig } from "../../../src/nat/config.js";

const NAT1 = 0xc6336401;
const H = 0x0a000100;
const S = 0xcb007100;

function walk(table: FlowTable): Float64Array {
  const n = new Float64Array(PROTOCOLS.length * STATE_SLOTS);
  table.forEach((f) => {
    n[protoSlot(table.proto(f)) * STATE_SLOTS + table.state(f)]++;
  });
  return n;
}

t.test("incremental flow counts equal a full walk after a random sequence", async (t) => {
  for (const mapping of ["endpoint-independent", "per-destination"] as const) {
    const stats = new ConntrackStats();
    const table = new FlowTable(
      defaultNatConfig({
        natAddresses: [NAT1],
        maxFlows: 64,
        mapping,
        filtering: "endpoint-independent",
        hashSeed: 7,
        timeouts: { tcpEstablished: 60, tcpTransitory: 5, udp: 10, icmp: 3 },
      }),
      stats,
    );
    let seed = 12345;
    const rnd = (k: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return (seed >>> 8) % k;
    };
    const protos = [Proto.TCP, Proto.UDP, Proto.ICMP];
    const flags = [TcpFlag.SYN, TcpFlag.SYN | TcpFlag.ACK, TcpFlag.ACK, TcpFlag.FIN, TcpFlag.RST];
    let now = 1000;
    let mismatches = 0;
    for (let step = 0; step < 20_000; step++) {
      const op = rnd(10);
      const proto = protos[rnd(3)]!;
      if (op < 4) {
        const r = table.createOutbound(proto, H + rnd(40), 1000 + rnd(64), S + rnd(4), 80, now);
        if (r >= 0 && proto === Proto.TCP) table.tcpUpdate(r, TcpFlag.SYN, true, now);
      } else if (op < 5) {
        table.createInbound(proto, NAT1, 1000 + rnd(64), S + rnd(8), 81, now);
      } else if (op < 8 && table.active > 0) {
        const f = rnd(table.capacity);
        if (table.proto(f) === 0) continue;
        if (table.proto(f) === Proto.TCP) {
          table.tcpUpdate(f, flags[rnd(flags.length)]!, rnd(2) === 0, now);
        } else table.touch(f, rnd(2) === 0, now);
      } else if (op < 9) {
        if (rnd(8) === 0) now++;
        table.sweep(now, 32);
      } else {
        const f = rnd(table.capacity);
        if (table.proto(f) !== 0) table.remove(f, now);
      }
      if (step % 97 === 0) {
        const w = walk(table);
        for (let i = 0; i < w.length; i++) if (w[i] !== stats.flowsByState[i]) mismatches++;
      }
    }
    t.ok(stats.evictions > 0, `${mapping}: evictions happened (${stats.evictions})`);
    t.ok(stats.idleTimeouts > 0, `${mapping}: expiries happened (${stats.idleTimeouts})`);
    t.equal(mismatches, 0, `${mapping}: counts matched the walk at every check`);
    t.same(Array.from(stats.flowsByState), Array.from(walk(table)), `${mapping}: final counts`);
    let total = 0;
    for (const p of PROTOCOLS) total += stats.flowsOf(p.slot);
    t.equal(total, table.active, `${mapping}: per-protocol counts sum to the live flows`);
  }
});

t.test("an inbound flow on a full table never uses a mapping its sweep just ended", async (t) => {
  // The table is full; the only flow of mapping M has expired. An inbound packet to M makes
  // createInbound sweep for room, which removes that flow and so ends M: the packet must then be
  // refused as unsolicited, and M's id must not be reused while freed (it used to be, leaking
  // mappings until the mapping index was full and a lookup looped for ever).
  const stats = new ConntrackStats();
  const table = new FlowTable(
    defaultNatConfig({
      natAddresses: [NAT1],
      maxFlows: 64,
      filtering: "endpoint-independent",
      hashSeed: 7,
      timeouts: { tcpEstablished: 60, tcpTransitory: 5, udp: 10, icmp: 3 },
    }),
    stats,
  );
  const now = 1000;
  const first = table.createOutbound(Proto.UDP, H, 1000, S, 80, now);
  t.ok(first >= 0);
  // Fill the rest with flows that stay alive (TCP established timer) and have replied.
  for (let i = 1; i < 64; i++) {
    const f = table.createOutbound(Proto.TCP, H + 1, 2000 + i, S, 80, now + 20);
    table.touch(f, false, now + 20);
  }
  t.equal(table.active, 64);
  const r = table.createInbound(Proto.UDP, NAT1, table.oport(first), S + 9, 81, now + 20);
  t.equal(r, -1 - Refusal.Unsolicited, "the mapping is gone with its expired flow");
  t.equal(table.mappings, 63, "no mapping leaked");
  t.equal(table.active, 63);
});
