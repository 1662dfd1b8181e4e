/**
 * src/datapath — the loop that joins a Device to the Translator.
 *
 * Contract: once per batch the device calls `onBatch(count)`; the loop refreshes the batch clock
 * (one clock read per batch, not per packet), runs every packet through the translator in place,
 * writes the survivors back in one device call, and keeps plain counters about batches. Fragments
 * the translator held for their first fragment (RFC 4787 REQ-14) and released during the batch
 * are then copied into the arena's slots, which the write has freed, and written the same way. A timer
 * sweeps a slice of the connection table per tick, so expiry costs no per-flow timers. Nothing
 * here allocates per packet or logs per packet.
 */
import type { Clock } from "../base/clock.js";
import type { Device } from "../io/device.js";
import type { Translator } from "../nat/translate.js";

/** A clock the loop may refresh once per batch (control/clock.ts BatchClock). */
export interface BatchedClock extends Clock {
  refresh?(): void;
}

/** Upper bounds (packets) of the batch-size histogram buckets; the last bucket is open. */
export const BATCH_SIZE_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

export class LoopStats {
  batches = 0;
  packets = 0;
  written = 0;
  /** Packets a write could not hand to the kernel (ENOBUFS/EAGAIN). */
  writeDrops = 0;
  /** Sum of seconds spent translating batches (for a time-per-batch metric). */
  batchSeconds = 0;
  /** Counts per batch-size bucket, one slot more than BATCH_SIZE_BUCKETS for the open bucket. */
  readonly batchSizeCounts = new Float64Array(BATCH_SIZE_BUCKETS.length + 1);
  sweeps = 0;
  /** Packets dropped unread because this gateway is the standby of an HA pair (src/ha). */
  standbyDrops = 0;
}

export interface LoopOptions {
  /** Milliseconds between sweep ticks. */
  tickMs?: number;
  /** Seconds in which the sweep should cover the whole table. */
  sweepPeriod?: number;
  /**
   * Monotonic high-resolution timer for batch durations (ms). Never the batch clock: that one
   * stands still for the whole batch, so every duration would read 0. Without a timer batch
   * durations are not measured (batchSeconds stays 0).
   */
  timer?: () => number;
}

export class DataLoop {
  readonly loopStats = new LoopStats();
  private tickHandle: ReturnType<typeof setInterval> | undefined;
  private running = false;
  private readonly sweepBudget: number;
  private readonly tickMs: number;
  private readonly timer: () => number;
  /**
   * false on the standby of an HA pair: every packet read is dropped untranslated, so the
   * standby's table changes only through the sync (src/ha) and never diverges from the active's.
   */
  forwarding = true;
  /** The timer's reading at the first batch (0 until one came): where a restart's gap ends. */
  firstBatchAt = 0;

  constructor(
    private readonly device: Device,
    private readonly translator: Translator,
    private readonly clock: BatchedClock,
    opts: LoopOptions = {},
  ) {
    this.tickMs = opts.tickMs ?? 100;
    const period = opts.sweepPeriod ?? 10;
    const ticks = Math.max(1, (period * 1000) / this.tickMs);
    this.sweepBudget = Math.max(64, Math.ceil(translator.table.capacity / ticks));
    this.timer = opts.timer ?? (() => 0);
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Start reading; `onError` hears of a device that failed or went away (then nothing is read). */
  start(onError?: (err: Error) => void): void {
    if (this.running) return;
    this.running = true;
    this.device.start((count) => this.onBatch(count), onError);
    this.tickHandle = setInterval(() => this.tick(), this.tickMs);
    // The sweep must not keep the process alive on its own.
    this.tickHandle.unref();
  }

  stop(): void {
    if (!this.running) return;
    this.running = false;
    if (this.tickHandle) clearInterval(this.tickHandle);
    this.tickHandle = undefined;
  }

  /** Translate and send one batch: slots 0..count-1 of the device arena. */
  onBatch(count: number): void {
    if (!this.forwarding) {
      this.loopStats.standbyDrops += count;
      return;
    }
    this.clock.refresh?.();
    const t0 = this.timer();
    if (this.firstBatchAt === 0) this.firstBatchAt = t0;
    const dev = this.device;
    this.translator.processBatch(dev.buffer, dev.slotSize, dev.lengths, count);
    let wanted = 0;
    for (let i = 0; i < count; i++) if (dev.lengths[i]! > 0) wanted++;
    let n = dev.write(count);
    const t = this.translator;
    while (t.pendingOutput() > 0) {
      const k = Math.min(t.pendingOutput(), dev.slots);
      for (let i = 0; i < k; i++) dev.lengths[i] = t.takeOutput(dev.buffer, i * dev.slotSize);
      wanted += k;
      n += dev.write(k);
    }
    const s = this.loopStats;
    s.writeDrops += wanted - n;
    s.batches++;
    s.packets += count;
    s.written += n;
    let b = 0;
    while (b < BATCH_SIZE_BUCKETS.length && count > BATCH_SIZE_BUCKETS[b]!) b++;
    s.batchSizeCounts[b]!++;
    s.batchSeconds += (this.timer() - t0) / 1000;
  }

  /** Periodic work: refresh the clock and expire a slice of the table. */
  tick(): void {
    this.clock.refresh?.();
    this.translator.sweep(this.sweepBudget);
    this.loopStats.sweeps++;
  }
}
