/**
 * A multi-queue TUN (IFF_MULTI_QUEUE) whose queues are read and written by native I/O threads,
 * one per queue (native/mq.cc), feeding the one translator on this thread through shared rings
 * (ring.ts). Why this design and what it measured: native-notes/README.md "Multi-queue".
 *
 * It is a Device like the single-queue TunDevice, so the data loop and the translator are the
 * same: every batch is one contiguous run of one queue's ring, `buffer`/`lengths` view that run
 * while the batch handler runs, and `write(count)` hands the run back to the queue's thread,
 * which writes it on the queue it was read from (the kernel then steers the flow's answers to
 * that queue). When that thread sleeps and the run is a few small packets, the native side writes
 * them at once from this thread instead of waking it (native/mq.cc WriteInline), in ring order. Packets made outside a run (held fragments released after a batch, packets a
 * timer sends) go through the queue's own small arena with a synchronous write, as on one queue.
 * Because one translator sees every packet of every queue, mapping, filtering, port allocation,
 * hairpinning and ICMP errors behave exactly as with one queue whichever queue a packet uses.
 */
import { existsSync } from "node:fs";
import { ErrorCode, TunnatError } from "../base/errors.js";
import { CTL_EXIT, SlotRing } from "./ring.js";
import {
  loadAddon,
  type NativeIoQueues,
  openTun,
  SLOT_SIZE,
  type TunDevice,
  type TunIoError,
  type TunOffloads,
  type TunOptions,
} from "./tun.js";

/** Slots per queue ring: with 65,600-byte slots, 8.4 MB per queue. */
const DEFAULT_RING_SLOTS = 128;
/** Slots of each queue's arena for packets sent outside a run (fragments, timers). */
const EMIT_SLOTS = 16;

/** Per-queue counters (native/mq.cc Counter), in this order. */
export const QUEUE_COUNTERS = [
  "read",
  "written",
  "writeDropped",
  "writeRejected",
  "writeOversize",
  "ringFull",
  "wakeups",
  "spinHits",
  "writtenInline",
  "kicks",
  "notifies",
  "readInline",
] as const;
type QueueCounter = (typeof QUEUE_COUNTERS)[number];

export interface QueuedTunOptions extends TunOptions {
  /** Number of queues (I/O threads), 1..256. */
  queues: number;
  /** Microseconds an idle I/O thread (and the main thread after a batch) spins before sleeping. */
  pollUs: number;
  ringSlots?: number;
  /** Adopt these open queue fds (a handover restart), one per queue, instead of opening. */
  fds?: number[];
}

export function openQueuedTun(opts: QueuedTunOptions): QueuedTunDevice {
  // A multi-queue TUN that exists already takes more queues instead of failing with EBUSY as a
  // single-queue one does: opening it would attach to another daemon's device and take a share
  // of its packets. Refuse, as one queue would.
  const fds = opts.fds;
  if (fds !== undefined && fds.length !== opts.queues)
    throw new TunnatError(
      ErrorCode.Config,
      `cannot adopt TUN ${opts.name}: ${fds.length} queue fds for ${opts.queues} queues`,
    );
  if (fds === undefined && existsSync(`/sys/class/net/${opts.name}`)) {
    throw new TunnatError(
      ErrorCode.NoTun,
      `cannot open TUN ${opts.name}: an interface named ${opts.name} already exists (busy: another daemon's TUN?); pick another --tun name or remove it`,
    );
  }
  const queues: TunDevice[] = [];
  try {
    for (let i = 0; i < opts.queues; i++)
      queues.push(
        openTun({
          ...opts,
          multiQueue: true,
          slots: EMIT_SLOTS,
          ...(fds ? { fd: fds[i] } : {}),
        }),
      );
  } catch (e) {
    for (const q of queues) q.close();
    throw e;
  }
  return new QueuedTunDevice(queues, opts.pollUs, opts.ringSlots ?? DEFAULT_RING_SLOTS);
}

export class QueuedTunDevice {
  readonly name: string;
  readonly vnetHdr: boolean;
  readonly multiQueue = true;
  readonly slotSize = SLOT_SIZE;
  readonly offloads: TunOffloads;
  readonly headroom: number;
  /** The queues' own arenas' size: the most packets one write() outside a run may carry. */
  readonly slots = EMIT_SLOTS;
  readonly queues: readonly TunDevice[];
  readonly rings: readonly SlotRing[];
  readonly pollUs: number;
  /** Counters of every queue, QUEUE_COUNTERS.length per queue; refreshed by readCounters(). */
  readonly counters: Float64Array;

  #native: NativeIoQueues | undefined;
  #buffer: Uint8Array;
  #lengths: Int32Array;
  /** The ring whose run the handler is in, -1 outside a run. */
  #runQueue = -1;
  #runCount = 0;
  /** Queue whose arena the next write outside a run uses. */
  #emitQueue = 0;
  #closed = false;
  #onBatch: ((count: number) => void) | undefined;
  #onError: ((err: Error) => void) | undefined;
  #faultSignal: NodeJS.Signals | undefined;
  readonly #onFaultSignal = () => this.injectFault(this.queues.length - 1);

  /** @internal use openQueuedTun() */
  constructor(queues: TunDevice[], pollUs: number, ringSlots: number) {
    const q0 = queues[0]!;
    this.queues = queues;
    this.name = q0.name;
    this.vnetHdr = q0.vnetHdr;
    this.offloads = q0.offloads;
    this.headroom = q0.headroom;
    this.pollUs = pollUs;
    this.rings = queues.map(() => new SlotRing(ringSlots, SLOT_SIZE));
    this.counters = new Float64Array(queues.length * QUEUE_COUNTERS.length);
    this.#buffer = q0.buffer;
    this.#lengths = q0.lengths;
  }

  get buffer(): Uint8Array {
    return this.#buffer;
  }

  get lengths(): Int32Array {
    return this.#lengths;
  }

  get closed(): boolean {
    return this.#closed;
  }

  start(onBatch: (count: number) => void, onError?: (err: Error) => void): void {
    if (this.#native !== undefined) throw new Error(`TUN ${this.name}: start() called twice`);
    this.#onBatch = onBatch;
    this.#onError = onError;
    for (const q of this.queues) q.startWriteOnly((err) => this.#fail(err));
    const a = loadAddon();
    const rings = this.rings;
    this.#native = new a.IoQueues(
      this.queues.map((q) => q.fd),
      rings.map((r) => r.arena),
      rings.map((r) => r.lengths),
      rings.map((r) => r.ctl),
      rings[0]!.slots,
      SLOT_SIZE,
      this.pollUs,
      () => this.#drain(),
    );
    this.#native.start();
    // Test hook (test/netns/queues.test.ts): with TUNNAT_TEST_FAULT_SIGNAL=SIGUSR2 that signal ends
    // the last queue's I/O thread, to show what a dying thread does to the daemon.
    const sig = process.env.TUNNAT_TEST_FAULT_SIGNAL;
    if (sig === "SIGUSR1" || sig === "SIGUSR2") {
      this.#faultSignal = sig;
      process.on(sig, this.#onFaultSignal);
    }
  }

  /** Called by the native side (on this thread) when a ring has packets or a thread ended. */
  #drain(): void {
    const rings = this.rings;
    for (let q = 0; q < rings.length && !this.#closed; q++) {
      const r = rings[q]!;
      if (Atomics.load(r.ctl, CTL_EXIT) !== 0) {
        this.#threadEnded(q, r.exitErrno());
        return;
      }
      let run = r.nextRun();
      while (run > 0 && !this.#closed) {
        const start = r.start;
        this.#runQueue = q;
        this.#runCount = run;
        this.#emitQueue = q;
        this.#buffer = r.arenaFrom[start]!;
        this.#lengths = r.lengthsFrom[start]!;
        this.#onBatch!(run);
        // A handler that did not write the run drops it (its lengths still hold what was read).
        if (this.#runQueue >= 0) {
          this.#lengths.fill(0, 0, run);
          this.#release(q, run);
        }
        run = r.nextRun();
      }
    }
    this.#runQueue = -1;
    this.#buffer = this.queues[this.#emitQueue]!.buffer;
    this.#lengths = this.queues[this.#emitQueue]!.lengths;
  }

  #release(q: number, count: number): void {
    this.#runQueue = -1;
    if (this.rings[q]!.release(count)) this.#native?.kick(q);
    // Writes after the run (released fragments) use the queue's own arena.
    const dev = this.queues[q]!;
    this.#buffer = dev.buffer;
    this.#lengths = dev.lengths;
  }

  /**
   * Inside a run: hand its slots to the queue's thread, which writes those with a length > 0 (its
   * drops are in the queue counters); returns how many it was given. Outside a run: a
   * synchronous write of the queue arena's first `count` slots.
   */
  write(count: number): number {
    if (this.#closed) return 0;
    const q = this.#runQueue;
    if (q >= 0) {
      const lengths = this.#lengths;
      const run = this.#runCount;
      let wanted = 0;
      for (let i = 0; i < run; i++) if (lengths[i]! > 0) wanted++;
      // Slots of the run beyond `count` are not to be written.
      if (count < run) lengths.fill(0, count, run);
      this.#release(q, run);
      return wanted;
    }
    return this.queues[this.#emitQueue]!.write(count);
  }

  /** Copy every queue's counters into `counters` (at scrape time, not per packet). */
  readCounters(): Float64Array {
    this.#native?.counters(this.counters);
    return this.counters;
  }

  /**
   * Before a handover: the I/O threads stop reading; what they had read into the rings goes
   * through the batch handler now and its writes are finished, so the old process loses none of
   * it, and the rest waits in the kernel's queues for the successor. Then close().
   */
  quiesce(timeoutMs: number): boolean {
    const native = this.#native;
    if (native === undefined || this.#closed) return false;
    const paused = native.pauseReads(timeoutMs);
    this.#drain();
    return native.awaitWritten(timeoutMs) && paused && !this.#closed;
  }

  /** Test hook: the I/O thread of `queue` ends as if a syscall had failed (ECANCELED). */
  injectFault(queue: number): void {
    this.#native?.injectFault(queue);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#faultSignal) process.off(this.#faultSignal, this.#onFaultSignal);
    this.#native?.stop();
    for (const q of this.queues) q.close();
  }

  #threadEnded(queue: number, errno: number): void {
    const err = this.queues[queue]!.errorFor(errno, "read/write");
    err.message = `TUN ${this.name} queue ${queue}: I/O thread stopped: ${err.message}`;
    this.#fail(err);
  }

  #fail(err: TunIoError | Error): void {
    if (this.#closed) return;
    this.close();
    if (this.#onError === undefined) throw err;
    this.#onError(err);
  }
}

/** One queue's counters, as /metrics and `tunnat stats` show them. */
export type QueueStats = { queue: number } & Record<QueueCounter, number>;

/** Per-queue counters of a multi-queue device, or null for any other device. */
export function queueStats(dev: unknown): QueueStats[] | null {
  if (!(dev instanceof QueuedTunDevice)) return null;
  const c = dev.readCounters();
  const k = QUEUE_COUNTERS.length;
  const out: QueueStats[] = [];
  for (let q = 0; q < dev.queues.length; q++) {
    const row = { queue: q } as QueueStats;
    for (let i = 0; i < k; i++) row[QUEUE_COUNTERS[i]!] = c[q * k + i]!;
    out.push(row);
  }
  return out;
}
