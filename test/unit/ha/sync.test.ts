// The HA sync protocol between two real flow tables over a pipe that loses, cuts and holds back
// datagrams, on a manual clock: bulk resync on join, events in order, resends, bounded queues
// with a fall-back to a bulk resync, the MAC, and a standby that restarts.
import t from "tap";
import { Proto } from "../../../src/conntrack/table.js";
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

t.test("install resolves a conflict with a stale flow on the standby", async (t) => {
  const { clock, b } = pair();
  // b holds a stale mapping of (H, 20000) to some port; the active says another.
  const f = b.table.createOutbound(Proto.UDP, H, 20000, S, 53, clock.sec);
  const stalePort = b.table.oport(f);
  const port = stalePort === 30000 ? 30001 : 30000;
  const r = b.table.install(
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
  t.equal(r, -2, "INSTALL_CONFLICT: the inside endpoint is mapped elsewhere");
  const g = b.table.install(
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
    b.table.install(Proto.UDP, H, 20000, 12345, stalePort, S, 55, 1, 1, clock.sec + 60, clock.sec),
    -1,
    "INSTALL_BAD_ADDRESS",
  );
});
