/**
 * Time enters the core only through a Clock (no Date.now() below control/; see
 * docs/architecture.md §Layers).
 * `now()` is monotonic milliseconds; the core converts to whole seconds where it stores stamps.
 */
export interface Clock {
  now(): number;
}

/** A clock that moves only when a test tells it to. */
export class ManualClock implements Clock {
  constructor(private t = 1_000_000) {}
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
  advanceSeconds(s: number): void {
    this.t += s * 1000;
  }
}
