/**
 * Where a start and a stop spend their time (docs/operations.md §Restart): named marks on
 * CLOCK_MONOTONIC, which every process of one boot reads alike, so the old daemon's "stopped
 * reading" and the new one's "reading" can be subtracted to give a restart's gap.
 */
import { performance } from "node:perf_hooks";

/** Milliseconds of CLOCK_MONOTONIC (libuv's hrtime), with microsecond resolution. */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint() / 1000n) / 1000;
}

/** When this process started (Node's time origin, taken first thing at exec), on that clock. */
export function processStartMs(): number {
  return monotonicMs() - performance.now();
}

export class Timeline {
  /** Mark name -> monotonic ms, in the order marked. */
  readonly marks: Record<string, number> = {};

  constructor(readonly zero: number = processStartMs()) {}

  mark(name: string, at: number = monotonicMs()): number {
    this.marks[name] = at;
    return at;
  }

  /** The marks as milliseconds since `zero` (0.1 ms), for a log line. */
  relative(zero: number = this.zero): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(this.marks)) out[k] = Math.round((v - zero) * 10) / 10;
    return out;
  }
}
