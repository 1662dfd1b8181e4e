// A batch reads the clock once: processBatch fixes the time for every packet of the batch (the
// daemon's BatchClock is refreshed per batch; a read per packet was wasted work and, with a
// clock that moves, gave packets of one batch different seconds).
import t from "tap";
import type { Clock } from "../../../src/base/clock.js";
import { defaultNatConfig } from "../../../src/nat/config.js";
import { NatStats } from "../../../src/nat/stats.js";
import { newTranslator, SLOT } from "../../helpers/nat.js";
import { build, ip } from "../../helpers/packet.js";

class CountingClock implements Clock {
  reads = 0;
  now(): number {
    this.reads++;
    return 1_000_000;
  }
}

t.test("processBatch reads the clock once per batch, not once per packet", async (t) => {
  const clock = new CountingClock();
  const cfg = defaultNatConfig({
    natAddresses: [ip("203.0.113.1")],
    inside: [{ addr: ip("10.0.1.0"), len: 24 }],
    maxFlows: 64,
    hashSeed: 1,
  });
  const tr = newTranslator(cfg, clock, new NatStats());
  const N = 8;
  const arena = new Uint8Array(N * SLOT);
  const lens = new Int32Array(N);
  for (let i = 0; i < N; i++) {
    const b = build({ src: "10.0.1.2", dst: "203.0.113.10", proto: "udp", sport: 4000 + i });
    arena.set(b, i * SLOT);
    lens[i] = b.length;
  }
  const before = clock.reads;
  tr.processBatch(arena, SLOT, lens, N);
  t.equal(clock.reads - before, 1, "one read for 8 packets");
  t.equal(tr.table.active, N, "every packet was translated");
  const b = build({ src: "10.0.1.2", dst: "203.0.113.10", proto: "udp", sport: 5000 });
  arena.set(b, 0);
  tr.process(arena, 0, b.length);
  t.equal(clock.reads - before, 2, "a single process() call reads it once");
});
