/**
 * Clocks for the daemon (the core only sees the Clock interface of src/base/clock.ts).
 * Monotonic on purpose: wall-clock steps (NTP, a VM resume) must not expire or revive flows.
 */
import { performance } from "node:perf_hooks";
import type { Clock } from "../base/clock.js";

/**
 * Where the daemon's monotonic time starts: 10^9 ms (about 11.6 days). A restored table holds
 * stamps from before this process began (a mapping made an hour ago, a port freed a minute ago);
 * starting high keeps them positive in the table's unsigned seconds.
 */
const MONOTONIC_BASE_MS = 1e9;

/** Milliseconds from performance.now() + MONOTONIC_BASE_MS: monotonic, sub-millisecond. */
class MonotonicClock implements Clock {
  now(): number {
    return performance.now() + MONOTONIC_BASE_MS;
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
