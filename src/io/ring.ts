/**
 * The JavaScript side of one packet ring shared with a native I/O thread (native/ring.h).
 *
 * The slots, their lengths and the control words live in SharedArrayBuffers allocated here once.
 * The native thread fills slots and publishes the `fill` cursor; this side takes the filled slots
 * in contiguous runs (a run never wraps, so a batch is always slots `start..start+count-1` of a
 * view that begins at `start`), rewrites them in place and publishes `done`, which hands the
 * slots back for writing and reuse. Cursors are free-running 32-bit counters compared by
 * difference. Atomics.load/store are sequentially consistent, which gives the acquire/release
 * order the native side relies on. Nothing here allocates after construction.
 */

/** Int32 indexes of the control words (native/ring.h). */
export const CTL_FILL = 0;
export const CTL_DONE = 16;
export const CTL_SLEEPING = 32;
export const CTL_EXIT = 48;
const CTL_LEN = 64;

export class SlotRing {
  readonly slots: number;
  readonly slotSize: number;
  readonly arena: Uint8Array;
  readonly lengths: Int32Array;
  readonly ctl: Int32Array;
  /** arenaFrom[i]: the arena from slot i to the end, so a run starting at i is slots 0.. of it. */
  readonly arenaFrom: Uint8Array[];
  readonly lengthsFrom: Int32Array[];
  /** Our copy of the done cursor (we are its only writer). */
  #done = 0;

  constructor(slots: number, slotSize: number) {
    if (!Number.isInteger(slots) || slots < 1 || slots > 1 << 20)
      throw new RangeError(`ring slots must be 1..${1 << 20}, got ${slots}`);
    this.slots = slots;
    this.slotSize = slotSize;
    this.arena = new Uint8Array(new SharedArrayBuffer(slots * slotSize));
    this.lengths = new Int32Array(new SharedArrayBuffer(slots * 4));
    this.ctl = new Int32Array(new SharedArrayBuffer(CTL_LEN * 4));
    this.arenaFrom = [];
    this.lengthsFrom = [];
    for (let i = 0; i < slots; i++) {
      this.arenaFrom.push(this.arena.subarray(i * slotSize));
      this.lengthsFrom.push(this.lengths.subarray(i));
    }
  }

  /** Filled slots not yet released. */
  available(): number {
    return (Atomics.load(this.ctl, CTL_FILL) - this.#done) | 0;
  }

  /** Slot index where the next run starts. */
  get start(): number {
    return (this.#done >>> 0) % this.slots;
  }

  /** Length of the next contiguous run of filled slots (0: none), at most up to the ring's end. */
  nextRun(): number {
    const n = this.available();
    if (n <= 0) return 0;
    const toEnd = this.slots - this.start;
    return Math.min(n, toEnd);
  }

  /**
   * Hand `count` slots from `start` back to the producer (their lengths say what to write: 0 =
   * drop). Returns true when the producer is asleep and must be woken.
   */
  release(count: number): boolean {
    this.#done = (this.#done + count) | 0;
    Atomics.store(this.ctl, CTL_DONE, this.#done);
    return Atomics.load(this.ctl, CTL_SLEEPING) !== 0;
  }

  /** The errno the producer ended with, 0 while it runs. */
  exitErrno(): number {
    return Atomics.load(this.ctl, CTL_EXIT);
  }
}
