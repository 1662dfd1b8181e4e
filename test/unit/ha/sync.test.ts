// The HA sync protocol between two real flow tables over a pipe that loses, cuts and holds back
// datagrams, on a manual clock: bulk resync on join, events in order, resends, bounded queues
// with a fall-back to a bulk resync, the MAC, and a standby that restarts.
import t from "tap";
import { FlowFlag, Proto } from "../../../src/conntrack/table.js";
import { TcpFlag, TcpState } from "../../../src/conntrack/tcp-state.js";
import { Role } from "../../../src/ha/protocol.js";
import { SyncEndpoint } from "../../../src/ha/sync.js";
import { Clock, diff, End, gateway, ip, KEY, pair, pipe, run } from "./helpers.js";

const H = ip("10.0.1.2");
const S = ip("203.0.113.10");
const { SYN, ACK } = TcpFlag;

/** n established TCP flows and n replied UDP flows on `table`. */
function traffic(
  table: import("../../../src/conntrack/table.js").FlowTable,
  now: number,
  n: number,
  base = 20000,
) {
  for (let i = 0; i < n; i++) {
    const f = table.createOutbound(Proto.TCP, H, base + i, S, 80, now);
    table.tcpUpdate(f, SYN, true, now);
    table.tcpUpdate(f, SYN | ACK, false, now);
    table.tcpUpdate(f, ACK, true, now);
    const u = table.createOutbound(Proto.UDP, H, base + i, S, 53, now);
    table.touch(u, false, now);
  }
}

t.test(
  "a standby that joins gets the whole table by a bulk resync, same outside ports",
  async (t) => {
    const { clock, a, b } = pair();
    traffic(a.table, clock.sec, 300);
    run(clock, [a, b], 100);
    t.same(diff(a.table, b.table, clock.sec), [], "same flows, ports, states");
    t.equal(b.table.active, 600);
    t.equal(a.sync.stats.bulkResyncsSent, 1, "one bulk");
    t.ok(b.sync.isSynced, "the standby says it is synced");
    t.equal(a.sync.queued.messages, 0, "everything acknowledged");
    t.equal(a.sync.stats.eventsAcked, a.sync.stats.eventsSent);
    let est = 0;
    b.table.forEach((f) => {
      if (b.table.proto(f) === Proto.TCP && b.table.state(f) === TcpState.ESTABLISHED) est++;
    });
    t.equal(est, 300, "TCP flows established on the standby");
  },
);

t.test("creations, state changes and removals follow as events", async (t) => {
  const { clock, a, b } = pair();
  run(clock, [a, b], 30);
  traffic(a.table, clock.sec, 50);
  run(clock, [a, b], 10);
  t.same(diff(a.table, b.table, clock.sec), []);
  // Remove some, change some.
  let n = 0;
  a.table.forEach((f) => {
    if (n++ % 3 === 0) a.table.remove(f, clock.sec);
    else if (a.table.proto(f) === Proto.TCP)
      a.table.tcpUpdate(f, TcpFlag.FIN | ACK, true, clock.sec);
  });
  run(clock, [a, b], 10);
  t.same(diff(a.table, b.table, clock.sec), [], "the same after removals and FINs");
  t.equal(a.sync.stats.bulkResyncsSent, 1, "no further bulk");
});

t.test("a lossy link loses nothing: gaps are asked for and resent", async (t) => {
  const { clock, a, b } = pair();
  a.end.loss = 0.3;
  b.end.loss = 0.3;
  run(clock, [a, b], 20);
  for (let round = 0; round < 10; round++) {
    traffic(a.table, clock.sec, 40, 10000 + round * 100);
    run(clock, [a, b], 5);
  }
  a.end.loss = 0;
  b.end.loss = 0;
  run(clock, [a, b], 200);
  t.same(diff(a.table, b.table, clock.sec), []);
  t.ok(a.sync.stats.messagesResent > 0, `resent ${a.sync.stats.messagesResent}`);
  t.ok(b.sync.stats.gaps > 0, "gaps seen");
});

t.test("a datagram under another key is refused and changes nothing", async (t) => {
  const clock = new Clock();
  const [ea, eb] = pipe();
  const a = gateway(clock, ea);
  const b = new SyncEndpoint(
    {
      table: gateway(clock, new End()).table,
      ring: gateway(clock, new End()).ring,
      nowSec: () => clock.sec,
      nowMs: () => clock.ms,
      transport: eb,
    },
    { ...(await import("../../../src/ha/sync.js")).DEFAULT_SYNC, key: Buffer.alloc(32, 9) },
  );
  a.sync.setRole(Role.ACTIVE);
  traffic(a.table, clock.sec, 10);
  for (let i = 0; i < 30; i++) {
    clock.ms += 20;
    a.sync.tick();
    b.tick();
    ea.deliver();
    eb.deliver();
  }
  t.ok(b.stats.rejected.mac > 0, `refused ${b.stats.rejected.mac}`);
  t.equal(b.stats.eventsApplied, 0);
  t.equal(b.peerState, "unknown", "a peer with another key is never heard");
  // A tampered datagram (one bit) is refused as well.
  const good = gateway(clock, new End());
  const msg = Buffer.alloc(64);
  good.sync.receive(msg);
  t.equal(good.sync.stats.rejected.mac, 1);
  t.throws(() => gateway(clock, new End(), {}, { key: Buffer.alloc(31) }), /key shorter/);
  void KEY;
});

t.test(
  "a stopped standby bounds the active's queue and gets a bulk resync when it is back",
  async (t) => {
    const { clock, a, b } = pair({}, { windowMessages: 16 }, 256);
    run(clock, [a, b], 30);
    b.end.held = true; // b stops reading (SIGSTOP): its datagrams wait, then overflow
    b.end.holdLimit = 8;
    // b sends nothing while stopped either.
    b.end.cut = true;
    for (let round = 0; round < 20; round++) {
      traffic(a.table, clock.sec, 50, 1000 + round * 100);
      run(clock, [a], 2);
    }
    t.ok(a.sync.queued.messages <= 16, `unacked messages bounded: ${a.sync.queued.messages}`);
    t.ok(a.sync.queued.events <= 256, `queued events bounded: ${a.sync.queued.events}`);
    run(clock, [a], 60); // the peer falls silent
    t.equal(a.sync.peerState, "down");
    t.equal(a.sync.queued.messages, 0, "nothing kept for a silent peer");
    b.end.held = false;
    b.end.cut = false;
    run(clock, [a, b], 400);
    t.same(diff(a.table, b.table, clock.sec), [], "caught up");
    t.ok(a.sync.stats.bulkResyncsSent >= 2, "by a second bulk resync");
  },
);

t.test("an event ring that overflows leads to a bulk resync, not to lost flows", async (t) => {
  const { clock, a, b } = pair({}, {}, 256);
  run(clock, [a, b], 30);
  traffic(a.table, clock.sec, 1000, 1000); // 2,000 creations > 256
  t.ok(a.ring.overflowed);
  run(clock, [a, b], 200);
  t.same(diff(a.table, b.table, clock.sec), []);
  t.ok(a.sync.stats.overflows >= 1);
});

t.test("a bulk resync removes the flows the standby has and the active does not", async (t) => {
  const { clock, a, b } = pair();
  traffic(a.table, clock.sec, 20);
  run(clock, [a, b], 50);
  a.end.cut = true;
  b.end.cut = true;
  // While cut: a ends half its flows and makes others.
  let n = 0;
  a.table.forEach((f) => {
    if (n++ % 2 === 0) a.table.remove(f, clock.sec);
  });
  traffic(a.table, clock.sec, 20, 30000);
  run(clock, [a, b], 60);
  a.end.cut = false;
  b.end.cut = false;
  run(clock, [a, b], 300);
  t.same(diff(a.table, b.table, clock.sec), []);
  t.equal(b.table.active, a.table.active);
});

t.test("a standby that restarts (empty table, new epoch) is resynced", async (t) => {
  const { clock, a, b } = pair();
  traffic(a.table, clock.sec, 100);
  run(clock, [a, b], 50);
  const [ea2, eb2] = pipe();
  // The restarted standby is a new process: a new endpoint and table on a fresh pipe to a.
  (a.end as End).peer = eb2;
  eb2.peer = a.end;
  void ea2;
  const b2 = gateway(clock, eb2);
  run(clock, [a, b2], 300);
  t.same(diff(a.table, b2.table, clock.sec), []);
  t.ok(a.sync.stats.bulkResyncsSent >= 2);
  void b;
});

t.test(
  "the promoted standby forwards the synced flows and streams to the old active",
  async (t) => {
    const { clock, a, b } = pair();
    traffic(a.table, clock.sec, 50);
    run(clock, [a, b], 50);
    // a dies; b is promoted; a comes back as a new, empty standby.
    b.sync.setRole(Role.ACTIVE);
    a.end.cut = true;
    run(clock, [b], 60);
    const [, ea2] = pipe();
    (b.end as End).peer = ea2;
    ea2.peer = b.end;
    const a2 = gateway(clock, ea2);
    const f = b.table.lookupInside(Proto.TCP, H, 20000, S, 80, clock.sec);
    t.ok(f >= 0, "the flow is there on b");
    b.table.createOutbound(Proto.UDP, H, 40000, S, 5000, clock.sec);
    run(clock, [b, a2], 300);
    t.same(diff(b.table, a2.table, clock.sec), [], "the old active caught up from the new one");
  },
);

t.test("refreshes keep the standby's timers ahead of the active's", async (t) => {
  const { clock, a, b } = pair({}, { refreshSec: 2 });
  traffic(a.table, clock.sec, 10);
  run(clock, [a, b], 20);
  // Traffic keeps a's flows alive for 60 s; b only hears refreshes.
  for (let s = 0; s < 60; s++) {
    a.table.forEach((f) => {
      if (a.table.proto(f) === Proto.UDP) a.table.touch(f, true, clock.sec);
    });
    run(clock, [a, b], 50);
    a.table.sweep(clock.sec, 4096);
    b.table.sweep(clock.sec, 4096);
  }
  t.same(diff(a.table, b.table, clock.sec), [], "nothing expired on the standby");
  b.table.forEach((f) => {
    const g = a.table.lookupInside(
      b.table.proto(f),
      b.table.iaddr(f),
      b.table.iport(f),
      b.table.raddr(f),
      b.table.rport(f),
      clock.sec,
    );
    if (b.table.expires(f) < a.table.expires(g)) t.fail("standby expires before the active");
  });
});

t.test("per-destination mapping syncs the same way", async (t) => {
  const { clock, a, b } = pair({ mapping: "per-destination" });
  traffic(a.table, clock.sec, 100);
  run(clock, [a, b], 100);
  t.same(diff(a.table, b.table, clock.sec), []);
});

t.test(
  "the table reports transitions only: a packet of a known, replied flow records nothing",
  async (t) => {
    const { clock, a } = pair();
    traffic(a.table, clock.sec, 5);
    const n = a.ring.recorded;
    a.table.forEach((f) => {
      if (a.table.proto(f) === Proto.UDP)
        for (let i = 0; i < 100; i++) a.table.touch(f, i % 2 === 0, clock.sec);
      else for (let i = 0; i < 100; i++) a.table.tcpUpdate(f, ACK, i % 2 === 0, clock.sec);
    });
    t.equal(a.ring.recorded, n, "1,000 packets, no event");
  },
);

t.test(
  "adopt() refuses a conflict with a stale flow on the standby; the same mapping's port is fine",
  async (t) => {
    const { clock, b } = pair();
    // b holds a stale mapping of (H, 20000) to some port; the active says another.
    const f = b.table.createOutbound(Proto.UDP, H, 20000, S, 53, clock.sec);
    const stalePort = b.table.oport(f);
    const port = stalePort === 30000 ? 30001 : 30000;
    const r = b.table.adopt(
      Proto.UDP,
      H,
      20000,
      b.table.oaddr(f),
      port,
      S,
      54,
      1,
      1,
      clock.sec + 60,
      clock.sec,
    );
    t.equal(r, -2, "ADOPT_CONFLICT: the inside endpoint is mapped elsewhere");
    const g = b.table.adopt(
      Proto.UDP,
      H,
      20000,
      b.table.oaddr(f),
      stalePort,
      S,
      54,
      1,
      1,
      clock.sec + 60,
      clock.sec,
    );
    t.ok(g >= 0, "the same mapping's port installs a second flow on it");
    t.equal(
      b.table.adopt(Proto.UDP, H, 20000, 12345, stalePort, S, 55, 1, 1, clock.sec + 60, clock.sec),
      -1,
      "ADOPT_NOT_OURS",
    );
  },
);

const NAT = ip("198.51.100.1");
const FORWARD = {
  proto: Proto.TCP,
  natAddress: null,
  port: 443,
  inside: H,
  insidePort: 8443,
  text: "tcp:443=10.0.1.2:8443",
};

t.test(
  "a connection through a static forward reaches the standby and goes on after a failover",
  async (t) => {
    const { clock, a, b } = pair({ forwards: [FORWARD] });
    run(clock, [a, b], 30);
    const now = clock.sec;
    const f = a.table.createForward(Proto.TCP, NAT, 443, S, 55555, H, 8443, now);
    a.table.tcpUpdate(f, SYN, false, now);
    a.table.tcpUpdate(f, SYN | ACK, true, now);
    a.table.tcpUpdate(f, ACK, false, now);
    traffic(a.table, now, 5);
    run(clock, [a, b], 20);
    t.equal(b.sync.stats.applyFailures, 0, "nothing refused");
    t.same(diff(a.table, b.table, clock.sec), [], "the standby holds the same flows");
    const g = b.table.lookupOutside(Proto.TCP, NAT, 443, S, 55555, clock.sec);
    t.ok(g >= 0, "the forwarded connection is on the standby");
    t.ok(b.table.flags(g) & FlowFlag.FORWARD, "as a forward's flow");
    t.equal(b.table.state(g), TcpState.ESTABLISHED);
    t.equal(b.table.iaddr(g), H);
    t.equal(b.table.iport(g), 8443);
    // Failover: b forwards; a refresh of the same flow from a later stream updates it in place.
    b.sync.setRole(Role.ACTIVE);
    t.equal(b.table.lookupInside(Proto.TCP, H, 8443, S, 55555, clock.sec), g, "same flow");
    b.table.remove(g, clock.sec);
    t.equal(
      b.table.ports.get(0, 0, 443),
      0x7fffffff,
      "removing it leaves the forward's port reserved",
    );
  },
);

t.test("per-flow counters follow the active on its refreshes, at a bounded rate", async (t) => {
  const { clock, a, b } = pair({}, { refreshSec: 2 });
  traffic(a.table, clock.sec, 10);
  run(clock, [a, b], 20);
  const sent0 = a.sync.stats.eventsSent;
  // 10 s of traffic on every flow, counted and refreshed each second.
  for (let s = 0; s < 10; s++) {
    a.table.forEach((f) => {
      a.table.addOut(f, 3, 300);
      a.table.addIn(f, 2, 1000);
      if (a.table.proto(f) === Proto.UDP) a.table.touch(f, true, clock.sec);
      else a.table.tcpUpdate(f, ACK, true, clock.sec);
    });
    run(clock, [a, b], 50);
  }
  const perFlow = (a.sync.stats.eventsSent - sent0) / a.table.active;
  t.ok(perFlow <= 10 / 2 + 1, `each flow was sent ${perFlow} times in 10 s (refreshSec 2)`);
  // 3 s more with no traffic counted but the timers moving: the last refresh carries the totals.
  for (let s = 0; s < 3; s++) {
    a.table.forEach((f) => {
      if (a.table.proto(f) === Proto.UDP) a.table.touch(f, true, clock.sec);
      else a.table.tcpUpdate(f, ACK, true, clock.sec);
    });
    run(clock, [a, b], 50);
  }
  const off: string[] = [];
  a.table.forEach((f) => {
    const g = b.table.lookupInside(
      a.table.proto(f),
      a.table.iaddr(f),
      a.table.iport(f),
      a.table.raddr(f),
      a.table.rport(f),
      clock.sec,
    );
    const x = [a.table.pktsOut(f), a.table.bytesOut(f), a.table.pktsIn(f), a.table.bytesIn(f)];
    const y = [b.table.pktsOut(g), b.table.bytesOut(g), b.table.pktsIn(g), b.table.bytesIn(g)];
    if (x.join() !== y.join()) off.push(`${f}: ${x} != ${y}`);
  });
  t.same(off, [], "the standby's counters are the active's");
  let total = 0;
  b.table.forEach((g) => {
    total += b.table.pktsOut(g) + b.table.pktsIn(g);
  });
  t.equal(total, a.table.active * 10 * 5, "and not zero: 10 s of 5 packets a second per flow");
});

t.test(
  "a port freed just before a failover is not handed out by the new active before its rest ends",
  async (t) => {
    const { clock, a, b } = pair();
    // Before b joins: a port freed on a rests; the bulk resync carries its rest time.
    const early = a.table.createOutbound(Proto.UDP, H, 21000, S, 53, clock.sec);
    const earlyPort = a.table.oport(early);
    a.table.remove(early, clock.sec);
    run(clock, [a, b], 50);
    t.ok(b.sync.isSynced);
    t.ok(b.table.ports.get(0, 1, earlyPort) < 0, "the port freed before the bulk rests on b");
    // A flow made and ended between two ticks: b never sees it, only its removal.
    const f = a.table.createOutbound(Proto.UDP, H, 22000, S, 53, clock.sec);
    const port = a.table.oport(f);
    a.table.remove(f, clock.sec);
    run(clock, [a, b], 10);
    t.ok(b.table.ports.get(0, 1, port) < 0, "the port freed between two ticks rests on b");
    // Failover: b hands out ports; another host asking for that very port does not get it.
    b.sync.setRole(Role.ACTIVE);
    const other = ip("10.0.1.3");
    const g = b.table.createOutbound(Proto.UDP, other, port, S, 53, clock.sec);
    const h = b.table.createOutbound(Proto.UDP, other, earlyPort, S, 53, clock.sec);
    t.not(b.table.oport(g), port, "the resting port is not the new flow's");
    t.not(b.table.oport(h), earlyPort, "nor the one freed before the bulk");
    // Once the rest is over it may be used again (portReuseDelay 120 s).
    clock.ms += 121_000;
    const k = b.table.createOutbound(Proto.UDP, ip("10.0.1.4"), port, S, 53, clock.sec);
    t.equal(b.table.oport(k), port, "after its rest the port is free again");
  },
);
