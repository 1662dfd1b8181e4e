import t from "tap";
import { VNET_HDR_LEN } from "../../../src/io/device.js";
import { MemoryDevice } from "../../../src/io/memory-device.js";

const bytes = (...b: number[]): Uint8Array => Uint8Array.from(b);

t.test("injected packets arrive as one batch with their bytes and lengths", (t) => {
  const dev = new MemoryDevice({ slots: 8, slotSize: 64 });
  const batches: number[] = [];
  const seen: number[][] = [];
  dev.start((count) => {
    batches.push(count);
    for (let i = 0; i < count; i++) {
      const off = i * dev.slotSize;
      seen.push([...dev.buffer.subarray(off, off + dev.lengths[i])]);
    }
  });
  dev.inject(bytes(0x45, 1, 2));
  dev.inject(bytes(0x45, 3));
  dev.inject(bytes(0x45, 4, 5, 6, 7));
  t.equal(dev.pending, 3);
  t.equal(dev.flush(), 3);
  t.same(batches, [3], "one handler call for the three packets");
  t.same(seen, [
    [0x45, 1, 2],
    [0x45, 3],
    [0x45, 4, 5, 6, 7],
  ]);
  t.equal(dev.pending, 0);
  t.equal(dev.flush(), 0, "a second flush delivers nothing");
  t.same(batches, [3], "and calls no handler");
  t.end();
});

t.test("more packets than slots are delivered in batches of at most `slots`", (t) => {
  const dev = new MemoryDevice({ slots: 4, slotSize: 32 });
  const batches: number[] = [];
  dev.start((count) => batches.push(count));
  for (let i = 0; i < 10; i++) dev.inject(bytes(0x45, i));
  t.equal(dev.flush(), 10);
  t.same(batches, [4, 4, 2]);
  t.end();
});

t.test("write sends the slots with a non-zero length, in one call, as copies", (t) => {
  const dev = new MemoryDevice({ slots: 4, slotSize: 32 });
  let written = -1;
  dev.start((count) => {
    // Rewrite slot 0 in place, drop slot 1, keep slot 2 as is.
    dev.buffer[0] = 0x99;
    dev.lengths[1] = 0;
    written = dev.write(count);
  });
  dev.inject(bytes(0x45, 1));
  dev.inject(bytes(0x45, 2));
  dev.inject(bytes(0x45, 3, 3));
  dev.flush();
  t.equal(written, 2);
  t.equal(dev.writeCalls, 1);
  t.same(
    dev.sent.map((p) => [...p]),
    [
      [0x99, 1],
      [0x45, 3, 3],
    ],
  );
  dev.buffer.fill(0);
  t.same([...dev.sent[0]], [0x99, 1], "recorded packets do not alias the arena");
  t.end();
});

t.test("a device with vnetHdr reports the header as headroom", (t) => {
  t.equal(new MemoryDevice({ vnetHdr: true }).headroom, VNET_HDR_LEN);
  t.equal(new MemoryDevice().headroom, 0);
  t.end();
});

t.test("a packet larger than a slot is refused at inject", (t) => {
  const dev = new MemoryDevice({ slots: 2, slotSize: 16 });
  t.throws(() => dev.inject(new Uint8Array(17)), RangeError);
  t.end();
});

t.test("flush before start and a second start are errors", (t) => {
  const dev = new MemoryDevice();
  t.throws(() => dev.flush());
  dev.start(() => {});
  t.throws(() => dev.start(() => {}));
  t.end();
});

t.test("after close nothing is delivered or written", (t) => {
  const dev = new MemoryDevice({ slots: 2, slotSize: 16 });
  let calls = 0;
  dev.start(() => calls++);
  dev.inject(bytes(0x45));
  dev.close();
  t.equal(dev.closed, true);
  t.equal(dev.flush(), 0);
  t.equal(calls, 0);
  dev.lengths[0] = 1;
  t.equal(dev.write(1), 0);
  t.same(dev.sent, []);
  dev.close();
  t.end();
});
