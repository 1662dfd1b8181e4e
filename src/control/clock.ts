/**
 * Clocks for the daemon (the core only sees the Clock interface of src/base/clock.ts).
 * Monotonic on purpose: wall-clock steps (NTP, a VM resume) must not expire or revive flows.
 */
import { performance } from "node:perf_hooks";
import type { Clock } from "../base/clock.js";

/** Milliseconds from performance.now(): monotonic, sub-millisecond. */
class MonotonicClock implements Clock {
  now(): number {
    return performance.now();
  }
}

/**
 * A clock read once per batch: the loop calls `refresh()` before handling a batch, and every
 * packet of that batch sees the same time without a call into the runtime per packet.
 */
export class BatchClock implements Clock {
  private t: number;
  constructor(private readonly source: Clock = new MonotonicClock()) {
    this.t = source.now();
  }
  refresh(): number {
    this.t = this.source.now();
    return this.t;
  }
  now(): number {
    return this.t;
  }
}
