/**
 * Who reads and writes a queue's packets (native/mq.cc WriteInline, ReadInline): the queue's I/O
 * thread, or this (the translator's) thread when the I/O thread sleeps: it writes a run of a few
 * small packets itself, and after a batch it reads what is already waiting.
 *
 * Real threads on a real fd: the addon's IoQueues runs one queue on one end of an AF_UNIX stream
 * socket pair, and this test is the peer on the other end. The I/O thread reads what the peer sent
 * into the ring, this thread hands every run back unchanged (as the translator does, through
 * `kick` when the thread sleeps), and whoever writes it sends it back to the peer. A stream socket
 * keeps no boundaries, so the bytes that come back equal the bytes sent if and only if every slot
 * was written exactly once and in ring order; a slot left in the ring with nobody awake to write
 * it (a lost wakeup) shows as a round that never completes.
 */
import { closeSync, readSync, writeSync } from "node:fs";
import { Socket } from "node:net";
import t from "tap";
import { QUEUE_COUNTERS } from "../../../src/io/queues.js";
import { SlotRing } from "../../../src/io/ring.js";
import { addonPath, loadAddon, type NativeIoQueues } from "../../../src/io/tun.js";

type Counters = Record<(typeof QUEUE_COUNTERS)[number], number>;

class Echo {
  readonly ring: SlotRing;
  readonly native: NativeIoQueues;
  readonly peer: Socket;
  readonly fd: number;
  readonly peerFd: number;
  readonly sent: Buffer[] = [];
  readonly got: Buffer[] = [];
  sentBytes = 0;
  gotBytes = 0;
  #out: Float64Array;

  constructor(slots: number, slotSize: number, pollUs: number) {
    const a = loadAddon();
    const [fd, peerFd] = a.socketPair();
    this.fd = fd;
    this.peerFd = peerFd;
    this.ring = new SlotRing(slots, slotSize);
    const r = this.ring;
    const native = new a.IoQueues(
      [fd],
      [r.arena],
      [r.lengths],
      [r.ctl],
      slots,
      slotSize,
      pollUs,
      () => this.drain(),
    );
    this.native = native;
    this.#out = new Float64Array(QUEUE_COUNTERS.length);
    this.peer = new Socket({ fd: peerFd, readable: true, writable: true });
    this.peer.on("data", (b: Buffer) => {
      this.got.push(b);
      this.gotBytes += b.length;
    });
    native.start();
  }

  /** Hand every published run back unchanged, as the translator does. */
  drain(): void {
    const r = this.ring;
    for (let run = r.nextRun(); run > 0; run = r.nextRun()) if (r.release(run)) this.native.kick(0);
  }

  /** Send the chunks (one write each) and wait until as many bytes came back, or 10 s. */
  async round(chunks: Buffer[]): Promise<boolean> {
    for (const c of chunks) {
      this.sent.push(c);
      this.sentBytes += c.length;
      this.peer.write(c);
    }
    return this.waitBack(this.sentBytes, 10_000);
  }

  /** Wait until `bytes` came back in all, or `ms`; whether they did. */
  async waitBack(bytes: number, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.gotBytes < bytes && Date.now() < deadline)
      await new Promise((res) => setTimeout(res, 1));
    return this.gotBytes === bytes;
  }

  counters(): Counters {
    this.native.counters(this.#out);
    const c = {} as Counters;
    QUEUE_COUNTERS.forEach((k, i) => {
      c[k] = this.#out[i]!;
    });
    return c;
  }

  /** Index of the first byte that differs between what was sent and what came back, or -1. */
  firstDifference(): number {
    const a = Buffer.concat(this.sent);
    const b = Buffer.concat(this.got);
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
    return a.length === b.length ? -1 : n;
  }

  close(): void {
    this.native.stop();
    this.peer.destroy();
    closeSync(this.fd);
  }
}

/** A small seeded generator (xorshift32), so a failing run can be repeated. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function chunk(rand: () => number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) b[i] = (rand() * 256) | 0;
  return b;
}

const noAddon = addonPath() === undefined ? "the native addon is not built" : false;

t.test(
  "a small packet for a sleeping I/O thread is written by this thread, which does not wake it",
  { skip: noAddon },
  async (t) => {
    const e = new Echo(16, 2048, 0);
    t.teardown(() => e.close());
    const rand = rng(7);
    const rounds = 40;
    let complete = 0;
    for (let i = 0; i < rounds; i++) {
      // Let the thread fall asleep first, as between the pings of an idle gateway.
      await new Promise((res) => setTimeout(res, 3));
      if (await e.round([chunk(rand, 64)])) complete++;
    }
    const c = e.counters();
    t.equal(complete, rounds, "every packet came back");
    t.equal(e.firstDifference(), -1, "byte-exact, in order");
    t.ok(
      c.writtenInline > 0,
      `written here while the thread slept (${c.writtenInline} of ${c.written})`,
    );
    t.ok(c.kicks < rounds, `fewer wakeups sent than packets (${c.kicks} for ${rounds})`);
    t.equal(c.writeDropped + c.writeRejected + c.writeOversize, 0, "no write refused");
  },
);

t.test(
  "a large run is handed to the I/O thread: the kernel work of big writes stays there",
  {
    skip: noAddon,
  },
  async (t) => {
    const e = new Echo(16, 2048, 0);
    t.teardown(() => e.close());
    const rand = rng(11);
    const rounds = 20;
    let complete = 0;
    for (let i = 0; i < rounds; i++) {
      await new Promise((res) => setTimeout(res, 3));
      // 24 KB arrive as about 12 slots of 2 KB: more than a WriteInline may take.
      if (await e.round([chunk(rand, 24 * 1024)])) complete++;
    }
    const c = e.counters();
    t.equal(complete, rounds, "every byte came back");
    t.equal(e.firstDifference(), -1, "byte-exact, in order");
    t.ok(c.kicks > 0, `the thread was woken to write (${c.kicks} kicks)`);
    t.ok(
      c.written - c.writtenInline > 0,
      `the thread wrote ${c.written - c.writtenInline} of ${c.written}`,
    );
  },
);

// Both readers and both writers at once: chunks of random sizes and counts arrive while earlier ones are being
// written, small rings fill (the thread then sleeps without the fd and must be woken to read
// again), and --poll-us keeps the thread awake for part of the time.
for (const [slots, slotSize, pollUs] of [
  [4, 512, 0],
  [16, 512, 0],
  [16, 512, 20],
] as const) {
  t.test(
    `both readers and writers, ${slots} slots of ${slotSize} bytes, poll ${pollUs} µs: every byte comes back once, in order`,
    { skip: noAddon },
    async (t) => {
      const e = new Echo(slots, slotSize, pollUs);
      t.teardown(() => e.close());
      const rand = rng(slots * 1000 + slotSize + pollUs);
      const rounds = 300;
      let complete = 0;
      for (let i = 0; i < rounds; i++) {
        const chunks: Buffer[] = [];
        const n = 1 + ((rand() * 24) | 0);
        for (let k = 0; k < n; k++) chunks.push(chunk(rand, 1 + ((rand() * 2500) | 0)));
        if (i % 10 === 0) await new Promise((res) => setTimeout(res, 2));
        if (!(await e.round(chunks))) break;
        complete++;
      }
      const c = e.counters();
      t.equal(
        complete,
        rounds,
        `every round completed (${e.gotBytes} of ${e.sentBytes} bytes back)`,
      );
      t.equal(e.firstDifference(), -1, "byte-exact, in order: no slot written twice, none skipped");
      t.equal(c.writeDropped + c.writeRejected + c.writeOversize, 0, "no write refused");
      // Spinning, the thread is mostly awake when a run comes back and writes it itself.
      if (pollUs === 0) {
        t.ok(c.writtenInline > 0, `this thread wrote ${c.writtenInline} slots`);
        t.ok(c.readInline > 0, `this thread read ${c.readInline} slots`);
      }
      t.ok(c.written - c.writtenInline > 0, `the I/O thread wrote ${c.written - c.writtenInline}`);
      t.ok(c.read - c.readInline > 0, `the I/O thread read ${c.read - c.readInline}`);
      if (slots === 4) t.ok(c.ringFull > 0, `the ring filled (${c.ringFull} times)`);
      t.comment(JSON.stringify(c));
    },
  );
}

t.test(
  "pauseReads + awaitWritten (a handover's quiesce): what the thread read is all written, the rest stays unread",
  { skip: noAddon },
  async (t) => {
    // 4 slots of 512 bytes: the thread reads 2 KB of the 6 KB sent and stops with the ring full,
    // while this thread is kept from draining it; that ring is what a handover used to lose.
    const e = new Echo(4, 512, 0);
    t.teardown(() => e.close());
    const sent = chunk(rng(5), 6000);
    t.equal(writeSync(e.peerFd, sent), sent.length, "6000 bytes in the socket");
    // Keep this thread from its event loop (the drain) until the thread has filled the ring.
    const nap = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 0; i < 400 && e.counters().read < 4; i++) Atomics.wait(nap, 0, 0, 5);
    const before = e.counters();
    t.equal(before.read, 4, "the thread filled the ring while this thread was busy");
    t.ok(e.native.pauseReads(200), "every read ended");
    e.drain();
    t.ok(e.native.awaitWritten(200), "every slot handed back was written");
    const after = e.counters();
    t.equal(after.read, before.read, "nothing was read after the pause");
    t.equal(after.written, after.read, "everything read was written");
    // Stop the thread (close() stops it again, a no-op); what it did not read is still in the
    // socket, for the next reader.
    e.native.stop();
    const rest = Buffer.alloc(sent.length);
    let restBytes = 0;
    for (;;) {
      try {
        const n = readSync(e.fd, rest, restBytes, rest.length - restBytes, null);
        if (n <= 0) break;
        restBytes += n;
      } catch {
        break; // EAGAIN: drained
      }
    }
    await e.waitBack(sent.length - restBytes, 5000);
    t.equal(e.gotBytes + restBytes, sent.length, `${e.gotBytes} back + ${restBytes} unread`);
    const back = Buffer.concat(e.got);
    t.ok(
      back.equals(sent.subarray(0, back.length)),
      "what came back is the start of what was sent",
    );
    t.ok(rest.subarray(0, restBytes).equals(sent.subarray(back.length)), "and the rest follows it");
  },
);
