/**
 * The packet ring between a native I/O thread and the JavaScript translator (src/io/ring.ts,
 * native/ring.h). The producer in the concurrent tests is a real second thread of this process
 * (the addon's ringProduce), which writes slots as an I/O thread does; this thread consumes.
 */
import t from "tap";
import { CTL_DONE, CTL_FILL, CTL_SLEEPING, SlotRing } from "../../../src/io/ring.js";
import { addonPath, loadAddon } from "../../../src/io/tun.js";

/** Play the producer from this thread: put `n` packets whose first word is their number. */
function produce(r: SlotRing, from: number, n: number): void {
  let fill = Atomics.load(r.ctl, CTL_FILL);
  const view = new DataView(r.arena.buffer);
  for (let k = from; k < from + n; k++) {
    const i = (fill >>> 0) % r.slots;
    view.setUint32(i * r.slotSize, k, true);
    r.lengths[i] = 4 + (k % (r.slotSize - 3));
    fill = (fill + 1) | 0;
  }
  Atomics.store(r.ctl, CTL_FILL, fill);
}

/** Consume every filled slot in runs; returns the sequence numbers seen, in order. */
function consume(r: SlotRing, seen: number[]): void {
  for (let run = r.nextRun(); run > 0; run = r.nextRun()) {
    const start = r.start;
    const a = r.arenaFrom[start]!;
    const dv = new DataView(a.buffer, a.byteOffset, run * r.slotSize);
    for (let i = 0; i < run; i++) seen.push(dv.getUint32(i * r.slotSize, true));
    r.release(run);
  }
}

t.test("packets come out in the order they went in, across the ring's end", (t) => {
  const r = new SlotRing(8, 64);
  const seen: number[] = [];
  let next = 0;
  // Uneven batches so runs start at every offset and wrap many times.
  for (const n of [3, 5, 7, 1, 8, 2, 6, 4, 8, 8, 5]) {
    produce(r, next, n);
    next += n;
    t.ok(r.available() <= r.slots);
    consume(r, seen);
  }
  t.same(
    seen,
    Array.from({ length: next }, (_, i) => i),
  );
  t.equal(r.available(), 0);
  t.end();
});

t.test("a run never crosses the end of the ring; the views start at the run", (t) => {
  const r = new SlotRing(4, 16);
  produce(r, 0, 3);
  consume(r, []); // done = 3
  produce(r, 3, 4); // slots 3, 0, 1, 2
  t.equal(r.available(), 4, "a full ring: four filled, none free");
  t.equal(r.start, 3);
  t.equal(r.nextRun(), 1, "only the slot before the end");
  t.equal(r.arenaFrom[3]!.byteOffset, 3 * 16);
  t.equal(r.lengthsFrom[3]![0], r.lengths[3]);
  r.release(1);
  t.equal(r.start, 0);
  t.equal(r.nextRun(), 3);
  t.end();
});

t.test("the cursors are free-running 32-bit counters: wrapping at 2^32 changes nothing", (t) => {
  const r = new SlotRing(8, 16);
  // Start both cursors just below the wrap of the 32-bit counters.
  const nearWrap = -3 | 0;
  Atomics.store(r.ctl, CTL_FILL, nearWrap);
  // Consume to the same point as the producer: the ring is empty at the new position.
  r.release(nearWrap);
  t.equal(Atomics.load(r.ctl, CTL_DONE), nearWrap);
  t.equal(r.available(), 0);
  const seen: number[] = [];
  produce(r, 0, 6);
  t.equal(r.available(), 6);
  consume(r, seen);
  produce(r, 6, 8);
  t.equal(r.available(), 8, "full across the wrap");
  consume(r, seen);
  t.same(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
  t.end();
});

t.test("release reports a sleeping producer, which must then be woken", (t) => {
  const r = new SlotRing(4, 16);
  produce(r, 0, 1);
  t.equal(r.release(1), false);
  Atomics.store(r.ctl, CTL_SLEEPING, 1);
  produce(r, 1, 1);
  t.equal(r.release(1), true);
  t.end();
});

t.test("bad sizes are refused", (t) => {
  t.throws(() => new SlotRing(0, 64), RangeError);
  t.throws(() => new SlotRing(1.5, 64), RangeError);
  t.end();
});

const noAddon = addonPath() === undefined ? "the native addon is not built" : false;

t.test(
  "a real second thread produces while this one consumes: order, lengths, a ring kept full",
  { skip: noAddon },
  async (t) => {
    const a = loadAddon();
    const r = new SlotRing(16, 64);
    const count = 200_000;
    a.ringProduce(r.arena, r.lengths, r.ctl, r.slots, r.slotSize, count);
    let expect = 0;
    let badOrder = 0;
    let badLength = 0;
    let overfull = 0;
    let sawFull = 0;
    const deadline = Date.now() + 60_000;
    while (expect < count && Date.now() < deadline) {
      const avail = r.available();
      if (avail > r.slots) overfull++;
      if (avail === r.slots) sawFull++;
      const run = r.nextRun();
      if (run === 0) {
        // Let the producer fill the ring now and then, so "full" is exercised too.
        if (expect % 4096 < 16) await new Promise((res) => setImmediate(res));
        continue;
      }
      const start = r.start;
      const arena = r.arenaFrom[start]!;
      const lengths = r.lengthsFrom[start]!;
      const dv = new DataView(arena.buffer, arena.byteOffset, run * r.slotSize);
      for (let i = 0; i < run; i++) {
        const k = dv.getUint32(i * r.slotSize, true);
        if (k !== expect) badOrder++;
        if (lengths[i] !== 4 + (expect % (r.slotSize - 3))) badLength++;
        expect++;
      }
      r.release(run);
    }
    a.ringJoin();
    t.equal(expect, count, "every packet arrived");
    t.equal(badOrder, 0, "in order, none twice");
    t.equal(badLength, 0, "each with the length written with it");
    t.equal(overfull, 0, "never more filled slots than the ring has");
    t.ok(sawFull > 0, "the producer filled the ring and waited for room");
    t.equal(r.available(), 0);
  },
);
